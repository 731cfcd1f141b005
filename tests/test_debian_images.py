"""The Debian test images (tests/debian_images.py): cache keys, skipping, and the real images
on the test registry, pulled back with pyops."""

from __future__ import annotations

import functools
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pyops import Store, pull
from pyops.oci.pull import PulledImage

from .debian_images import (
    IMAGES,
    DebianImage,
    ImageFile,
    build_debian_image,
    cache_dir,
    debian_rootfs,
    prepare_debian_images,
    rootfs_name,
)

# The program each image's packages install (path in the layer, without the leading /).
PROGRAMS = {
    "redis": "usr/bin/redis-check-rdb",  # usr/bin/redis-server is a link to it
    "nginx": "usr/sbin/nginx",
    "python": "usr/bin/python3.11",
    "node": "usr/bin/node",
}


def test_the_cache_key_follows_the_package_list() -> None:
    base = rootfs_name()
    redis = rootfs_name(["redis-server"])
    assert base != redis
    assert base.startswith("bookworm-minbase-base-") and base.endswith(".tar")
    assert "redis-server" in redis
    assert rootfs_name(["b", "a", "a"]) == rootfs_name(("a", "b"))
    assert rootfs_name(["a"]) != rootfs_name(["a", "b"])
    with pytest.raises(TypeError):
        rootfs_name("redis-server")


def test_the_image_key_follows_the_spec() -> None:
    spec = IMAGES["python"]
    same = DebianImage(**{**spec.__dict__})
    assert same.key() == spec.key()
    other_file = ImageFile("/app/hello.py", b"print('changed')\n")
    assert DebianImage(**{**spec.__dict__, "files": (other_file,)}).key() != spec.key()
    assert DebianImage(**{**spec.__dict__, "cmd": ("python3",)}).key() != spec.key()


def test_the_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PYOPS_TEST_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home/.cache/pyops-tests"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg/pyops-tests"
    monkeypatch.setenv("PYOPS_TEST_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_no_mmdebstrap_skips_but_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYOPS_TEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    for value in ("", "0", "false"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.skip.Exception, match="mmdebstrap is not installed"):
            debian_rootfs(["hello"])
    for value in ("true", "1"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match="mmdebstrap is not installed"):
            debian_rootfs(["hello"])
    assert not list((tmp_path / "cache").glob("*.tar"))


FAKE_MMDEBSTRAP = """#!/bin/sh
echo "$SOURCE_DATE_EPOCH $*" >> "$FAKE_LOG"
if [ -n "$FAKE_FAIL" ]; then
    echo "I: running apt-get update..." >&2
    echo "E: apt-get update failed: no mirror" >&2
    for last; do :; done
    echo half > "$last"
    exit 1
fi
for last; do :; done
echo tarball > "$last"
"""


def test_a_root_filesystem_is_made_once_and_renamed_into_place(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mmdebstrap").write_text(FAKE_MMDEBSTRAP)
    (bindir / "mmdebstrap").chmod(0o755)
    log = tmp_path / "log"
    cache = tmp_path / "cache"
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("PYOPS_TEST_CACHE", str(cache))
    monkeypatch.delenv("CI", raising=False)

    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(pytest.skip.Exception, match="E: apt-get update failed: no mirror"):
        debian_rootfs(["b", "a"])
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no mirror"):
        debian_rootfs(["b", "a"])
    monkeypatch.delenv("CI")

    monkeypatch.delenv("FAKE_FAIL")
    made = debian_rootfs(["b", "a"])
    assert made == cache / rootfs_name(["a", "b"]) and made.read_text() == "tarball\n"
    assert debian_rootfs(("a", "b")) == made  # from the cache: mmdebstrap not run again
    calls = log.read_text().splitlines()
    assert len(calls) == 3
    epoch, *argv = calls[-1].split(" ")
    assert epoch.isdigit()
    assert "--variant=minbase" in argv and "--include=a,b" in argv and "bookworm" in argv
    assert argv[-1].endswith(".partial")  # written under another name, then renamed
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [made.name]


# -- the real images ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pulled(
    debian_image: Callable[[str], str],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], PulledImage]:
    """Pushes an image of IMAGES and pulls it back with pyops, once per module."""
    prepare_debian_images(IMAGES)  # all four are used: build them side by side
    store = Store(tmp_path_factory.mktemp("debian-store"))
    done: dict[str, PulledImage] = {}

    def get(name: str) -> PulledImage:
        if name not in done:
            done[name] = pull(debian_image(name), store=store, use_docker_config=False)
        return done[name]

    return get


@functools.cache
def _members(layer: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(layer, "r:*") as tar:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}


def _read(layer: Path, name: str) -> bytes:
    with tarfile.open(layer, "r:*") as tar:
        handle = tar.extractfile(name)
        assert handle is not None, name
        return handle.read()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_an_image_is_a_base_layer_and_an_app_layer(
    name: str, pulled: Callable[[str], PulledImage]
) -> None:
    spec = IMAGES[name]
    image = pulled(name)
    assert str(image.ref).endswith(f"/{spec.name}:{spec.tag}")
    assert len(image.layers) == len(image.config.diff_ids) == 2
    config = image.config
    assert (config.architecture, config.os) == ("amd64", "linux")
    assert config.entrypoint == spec.entrypoint
    assert config.cmd == spec.cmd
    assert config.working_dir == spec.working_dir
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config.env
    assert set(config.exposed_ports) == {f"{port}/tcp" for port in spec.ports}

    base, app = (_members(layer) for layer in image.layers)
    program = PROGRAMS[name]
    assert program not in base
    assert app[program].isfile() and app[program].mode & stat.S_IXUSR
    # The app layer holds what the install changed, not the whole system again.
    assert "usr/bin/dpkg" in base and "usr/bin/dpkg" not in app
    assert "var/lib/dpkg/status" in app
    for extra in spec.files:
        member = app[extra.path.lstrip("/")]
        assert member.isfile() and member.mode == extra.mode and (member.uid, member.gid) == (0, 0)
        assert _read(image.layers[1], member.name) == extra.content
        assert extra.path.lstrip("/") not in base


@pytest.mark.slow
def test_the_images_share_one_base_layer(pulled: Callable[[str], PulledImage]) -> None:
    images = [pulled(name) for name in sorted(IMAGES)]
    assert len({image.config.diff_ids[0] for image in images}) == 1
    assert len({image.config.diff_ids[1] for image in images}) == len(images)
    base = _members(images[0].layers[0])
    # /dev is an empty folder, as on the registries' images: no device nodes, no /dev/fd.
    assert base["dev"].isdir()
    assert [n for n in base if n.startswith("dev/")] == []
    assert not [m for m in base.values() if m.ischr() or m.isblk() or m.isfifo()]
    assert base["etc/debian_version"].isfile()
    assert _read(images[0].layers[0], base["etc/debian_version"].name).startswith(b"12.")


@pytest.mark.slow
def test_redis_layer_details(pulled: Callable[[str], PulledImage]) -> None:
    image = pulled("redis")
    app = _members(image.layers[1])
    assert app["usr/bin/redis-server"].issym()
    assert app["usr/bin/redis-server"].linkname == "redis-check-rdb"
    # Made by the package's postinst (adduser), owned by the redis user it adds.
    assert app["var/lib/redis"].isdir() and app["var/lib/redis"].uid != 0
    assert b"redis:" in _read(image.layers[1], app["etc/passwd"].name)
    script = _read(image.layers[1], app["usr/local/bin/docker-entrypoint.sh"].name)
    assert script.startswith(b"#!/bin/sh\n") and b"--protected-mode no" in script


@pytest.mark.slow
def test_a_built_image_is_taken_from_the_cache() -> None:
    first = build_debian_image(IMAGES["nginx"])
    index = (first[0] / "index.json").read_bytes()
    assert build_debian_image(IMAGES["nginx"]) == first
    assert (first[0] / "index.json").read_bytes() == index

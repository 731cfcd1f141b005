"""Test support: OCI images made of Debian bookworm's own packages, pushed to the test registry.

Each image is two layers, as an image built by ``FROM debian`` and ``apt-get install`` is:

1. the base: a Debian bookworm ``minbase`` root filesystem made by ``mmdebstrap``, the same
   layer (same digest) in every image;
2. the app: what installing the app's packages added, changed or removed (umoci computes the
   difference, removals as whiteouts), plus the spec's extra files.

The config carries the spec's Entrypoint, Cmd, WorkingDir, Env and ExposedPorts.

Root filesystems are made with ``mmdebstrap --variant=minbase [--include=...] bookworm`` (about
a minute each) and the finished OCI layout is kept too, both in a cache folder shared between
runs (:func:`cache_dir`), so that a later run only pushes (seconds). Entries are written under
a temporary name and renamed (tarballs) or tagged (images) when complete, under a file lock,
so a killed run or two pytest processes never leave or see a half entry. With the same apt
mirror, a rebuild gives the same tarballs and the same image digests (SOURCE_DATE_EPOCH).

``/dev`` of the mmdebstrap tarball (device nodes, ``/dev/fd`` links) is left out of the
layers: images on registries have an empty ``/dev``, and the runtime provides it.

When mmdebstrap, umoci or skopeo is missing, the process is not root, or mmdebstrap fails
(no mirror), the test is skipped; with ``CI`` set (to anything but ``0``/``false``) it fails.

Use: ``from tests.debian_images import debian_image, registries  # noqa: F401`` in a test
module, then ``ref = debian_image("redis")`` in a test. A module that uses several images can
call :func:`prepare_debian_images` first, which makes their root filesystems two at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import pytest

from .registry_server import Registries, registries, run

__all__ = [
    "IMAGES",
    "DebianImage",
    "ImageFile",
    "build_debian_image",
    "cache_dir",
    "debian_image",
    "debian_rootfs",
    "prepare_debian_images",
    "push_debian_image",
    "registries",
    "rootfs_name",
]

SUITE = "bookworm"
VARIANT = "minbase"
FORMAT = 1
"""Part of every cache key: bump it when what is built changes, to rebuild everything."""
SOURCE_DATE_EPOCH = 1_700_000_000
"""Clamps the mtimes mmdebstrap writes, and dates the extra files and the image history."""
MMDEBSTRAP_OPTIONS = (
    '--aptopt=Acquire::Retries "3"',
    # As the official images install (apt-get install --no-install-recommends).
    '--aptopt=APT::Install-Recommends "false"',
)
DOCKER_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""Docker's default PATH, which the official images set."""
TAR_EXCLUDES = ("--exclude=./dev/*",)
MMDEBSTRAP_TIMEOUT = 1200


@dataclass(frozen=True)
class ImageFile:
    """An extra file of the app layer (owned by root, dated SOURCE_DATE_EPOCH)."""

    path: str
    """Absolute path in the image; missing parent folders are made (mode 0755)."""
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class DebianImage:
    """An image: a minbase base layer, and the layer installing ``packages`` adds."""

    name: str
    tag: str
    packages: tuple[str, ...]
    files: tuple[ImageFile, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    env: tuple[str, ...] = (DOCKER_PATH,)
    ports: tuple[int, ...] = ()
    """TCP ports, as ExposedPorts ``N/tcp``."""

    def key(self) -> str:
        """A hash of everything the image is built from, but the root filesystems."""
        doc = {
            "format": FORMAT,
            "name": self.name,
            "tag": self.tag,
            "packages": sorted(set(self.packages)),
            "files": [[f.path, hashlib.sha256(f.content).hexdigest(), f.mode] for f in self.files],
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
            "working_dir": self.working_dir,
            "env": self.env,
            "ports": self.ports,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# Modelled on the official redis image's docker-entrypoint.sh, without the switch to the redis
# user (gosu) and the chown of /data.
REDIS_ENTRYPOINT = b"""#!/bin/sh
set -e

# first arg is `-f` or `--some-option`, or first arg is `something.conf`
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

# running redis-server with no config file: add --protected-mode no, so that it answers
# clients from outside (the official image does the same)
if [ "$1" = 'redis-server' ]; then
	doProtectedMode=1
	configFile=
	if [ -f "$2" ]; then
		configFile="$2"
		if grep -q '^protected-mode' "$configFile"; then
			doProtectedMode=
		fi
	fi
	if [ "$doProtectedMode" = 1 ]; then
		shift # "redis-server"
		if [ "$configFile" ]; then
			shift
		fi
		set -- --protected-mode no "$@"
		if [ "$configFile" ]; then
			set -- "$configFile" "$@"
		fi
		set -- redis-server "$@"
	fi
fi

exec "$@"
"""

NGINX_MARKER = "<h1>pyops nginx test page</h1>"
PYTHON_MARKER = "hello from the image's /app (python)"
NODE_MARKER = "hello from the image's /app (node)"

IMAGES: dict[str, DebianImage] = {
    "redis": DebianImage(
        name="redis",
        tag="7.0",
        packages=("redis-server",),
        files=(ImageFile("/usr/local/bin/docker-entrypoint.sh", REDIS_ENTRYPOINT, 0o755),),
        entrypoint=("docker-entrypoint.sh",),
        cmd=("redis-server",),
        ports=(6379,),
    ),
    "nginx": DebianImage(
        name="nginx",
        tag="1.22",
        packages=("nginx",),
        files=(
            ImageFile(
                "/var/www/html/index.html",
                f"<!DOCTYPE html>\n<html>\n<body>\n{NGINX_MARKER}\n</body>\n</html>\n".encode(),
            ),
        ),
        cmd=("nginx", "-g", "daemon off;"),
        ports=(80,),
    ),
    "python": DebianImage(
        name="python",
        tag="3.11",
        packages=("python3",),
        files=(
            ImageFile(
                "/app/hello.py",
                f"import sys\n\nprint({PYTHON_MARKER!r})\nprint(sys.version_info[:2])\n".encode(),
            ),
        ),
        working_dir="/app",
        cmd=("python3", "hello.py"),
    ),
    "node": DebianImage(
        name="node",
        tag="18",
        packages=("nodejs",),
        files=(
            ImageFile(
                "/app/hello.js",
                f"console.log({json.dumps(NODE_MARKER)});\nconsole.log(process.version);\n".encode(),
            ),
        ),
        working_dir="/app",
        cmd=("node", "hello.js"),
    ),
}


# -- skipping, the cache folder, locks -----------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it in CI, where everything the tests need is installed."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: the Debian test images must be buildable)")
    pytest.skip(reason)


def cache_dir() -> Path:
    """``$PYOPS_TEST_CACHE``, else ``$XDG_CACHE_HOME/pyops-tests``, else
    ``~/.cache/pyops-tests``."""
    if os.environ.get("PYOPS_TEST_CACHE"):
        return Path(os.environ["PYOPS_TEST_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "pyops-tests"
    return Path.home() / ".cache" / "pyops-tests"


@contextmanager
def _locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# -- root filesystems --------------------------------------------------------------------------


def _packages(packages: Sequence[str]) -> list[str]:
    if isinstance(packages, str):
        raise TypeError("packages is a sequence of package names, not one string")
    return sorted(set(packages))


def rootfs_name(packages: Sequence[str] = ()) -> str:
    """The cache file name of the root filesystem with ``packages``: named after them, keyed
    on a hash of the suite, variant, sorted packages, mmdebstrap options and FORMAT."""
    names = _packages(packages)
    key = _digest(FORMAT, SUITE, VARIANT, names, MMDEBSTRAP_OPTIONS)
    label = "-".join(names)[:60] or "base"
    return f"{SUITE}-{VARIANT}-{label}-{key[:16]}.tar"


def debian_rootfs(packages: Sequence[str] = ()) -> Path:
    """The tarball of a bookworm minbase root filesystem with ``packages`` installed, from the
    cache (built with mmdebstrap when missing; skips, or fails in CI, when it cannot be)."""
    names = _packages(packages)
    folder = cache_dir()
    target = folder / rootfs_name(names)
    if target.is_file():
        return target
    if shutil.which("mmdebstrap") is None:
        unavailable("mmdebstrap is not installed (apt-get install mmdebstrap)")
    with _locked(folder / f"{target.name}.lock"):
        if target.is_file():  # another process built it while this one waited
            return target
        for stale in folder.glob(f".{target.name}.*.partial"):  # a killed run's
            stale.unlink()
        partial = folder / f".{target.name}.{os.getpid()}.partial"
        argv = [
            "mmdebstrap",
            f"--variant={VARIANT}",
            "--format=tar",
            *MMDEBSTRAP_OPTIONS,
            *([f"--include={','.join(names)}"] if names else []),
            SUITE,
            os.fspath(partial),
        ]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
        try:
            result = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=MMDEBSTRAP_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            partial.unlink(missing_ok=True)
            unavailable(f"mmdebstrap {SUITE} {names} took over {MMDEBSTRAP_TIMEOUT} s")
        if result.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            errors = [line for line in result.stderr.splitlines() if line.startswith("E:")]
            why = (errors[:1] or result.stderr.strip().splitlines()[-1:] or ["no output"])[0]
            unavailable(f"mmdebstrap {SUITE} {names} failed (exit {result.returncode}): {why}")
        partial.rename(target)
    return target


# -- OCI layout ----------------------------------------------------------------------------------


def _layout() -> Path:
    return cache_dir() / f"oci-{FORMAT}"


def _has_tag(layout: Path, tag: str) -> bool:
    index = layout / "index.json"
    if not index.is_file():
        return False
    manifests = json.loads(index.read_text()).get("manifests") or []
    names = {m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in manifests}
    return tag in names


def _extract(tarball: Path, root: Path) -> None:
    run("tar", "-x", "--numeric-owner", "-p", *TAR_EXCLUDES, "-f", tarball, "-C", root)


def _clear(root: Path) -> None:
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _add_files(root: Path, files: Sequence[ImageFile]) -> None:
    for extra in files:
        if not extra.path.startswith("/") or ".." in extra.path.split("/"):
            raise ValueError(f"{extra.path}: not an absolute path inside the image")
        path = root / extra.path.lstrip("/")
        made = []
        parent = path.parent
        while not parent.exists():
            made.append(parent)
            parent = parent.parent
        for folder in reversed(made):
            folder.mkdir(mode=0o755)
            folder.chmod(0o755)
        # Not through a link of the image (/var/lock -> /run/lock) to the host's files.
        if not path.parent.resolve().is_relative_to(root.resolve()):
            raise ValueError(f"{extra.path}: its folder is a link out of the image")
        if path.is_symlink():
            path.unlink()
        path.write_bytes(extra.content)
        os.chown(path, 0, 0)
        path.chmod(extra.mode)
        # The file, the folders made, and the folder that got a new entry: all dated alike.
        for stamped in (path, *made, parent):
            os.utime(stamped, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)


def _history(created_by: str) -> list[str]:
    created = datetime.fromtimestamp(SOURCE_DATE_EPOCH, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ["--history.created", created, "--history.created_by", created_by]


def _base_bundle(base_tag: str) -> Path:
    """The umoci bundle of the base image without its rootfs: what ``umoci repack`` compares a
    rootfs against (its mtree), kept so that an image build needs no ``umoci unpack``."""
    return cache_dir() / f"oci-{FORMAT}-{base_tag}.bundle"


def _build_base(layout: Path, tag: str, base: Path, work: Path) -> None:
    temporary = f"partial-{tag}"
    if _has_tag(layout, temporary):
        run("umoci", "rm", "--image", f"{layout}:{temporary}")
    run("umoci", "new", "--image", f"{layout}:{temporary}")
    bundle = work / "base-bundle"
    run("umoci", "unpack", "--image", f"{layout}:{temporary}", bundle)
    _extract(base, bundle / "rootfs")
    run(
        "umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{temporary}",
        *_history(f"mmdebstrap --variant={VARIANT} {SUITE}"), bundle,
    )  # fmt: skip
    run("umoci", "tag", "--image", f"{layout}:{temporary}", tag)  # complete: name it
    run("umoci", "rm", "--image", f"{layout}:{temporary}")
    _keep_bundle(bundle, tag)


def _keep_bundle(bundle: Path, base_tag: str) -> None:
    shutil.rmtree(bundle / "rootfs")
    (bundle / "rootfs").mkdir()
    shutil.move(bundle, _base_bundle(base_tag))


def _build_image(spec: DebianImage, layout: Path, base_tag: str, app: Path, work: Path) -> str:
    tag = f"{spec.name}-{_digest(spec.key(), base_tag, app.name)[:16]}"
    if _has_tag(layout, tag):
        return tag
    temporary = f"partial-{tag}"
    if not _base_bundle(base_tag).is_dir():  # a cache from a run killed before it was kept
        run("umoci", "unpack", "--image", f"{layout}:{base_tag}", work / "base-bundle")
        _keep_bundle(work / "base-bundle", base_tag)
    bundle = work / "bundle"
    shutil.copytree(_base_bundle(base_tag), bundle, symlinks=True)
    root = bundle / "rootfs"
    _extract(app, root)
    _add_files(root, spec.files)
    created_by = f"mmdebstrap --variant={VARIANT} --include={','.join(spec.packages)} {SUITE}"
    run("umoci", "repack", "--image", f"{layout}:{temporary}", *_history(created_by), bundle)
    shutil.rmtree(bundle)
    config: list[str] = ["--architecture", "amd64", "--os", "linux"]
    config += ["--created", _history("")[1], "--no-history"]
    for option, values in (
        ("--config.entrypoint", spec.entrypoint),
        ("--config.cmd", spec.cmd),
        ("--config.env", spec.env),
        ("--config.exposedports", tuple(f"{port}/tcp" for port in spec.ports)),
    ):
        for value in values:
            config += [option, value]
    if spec.working_dir:
        config += ["--config.workingdir", spec.working_dir]
    # --tag: the image gets its name only once complete (the commit point of the cache).
    run("umoci", "config", "--image", f"{layout}:{temporary}", "--tag", tag, *config)
    run("umoci", "rm", "--image", f"{layout}:{temporary}")
    return tag


def _memory_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _scratch(need: int) -> Path:
    """Where to unpack root filesystems: /dev/shm when it has room for ``need`` bytes and the
    memory to spare (tar writes its 9000 files there 10 times faster than to a disk), else
    the cache folder."""
    shm = Path("/dev/shm")
    try:
        free = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize
    except OSError:
        free = 0
    if free >= 2 * need and _memory_available() >= 3 * need:
        return shm
    return cache_dir()


WORK_PREFIX = "pyops-debian-images-work-"


def _require_tools() -> None:
    missing = [tool for tool in ("umoci", "skopeo", "tar") if shutil.which(tool) is None]
    if missing:
        unavailable(f"needs {', '.join(missing)} (apt-get install {' '.join(missing)})")
    if os.geteuid() != 0:
        unavailable("building the Debian test images needs root (file owners in the layers)")


def build_debian_image(spec: DebianImage) -> tuple[Path, str]:
    """The cached OCI layout holding ``spec``'s image, and the image's tag in it (built when
    missing: the base and app root filesystems are made side by side)."""
    _require_tools()
    with ThreadPoolExecutor(max_workers=2) as pool:
        base_job = pool.submit(debian_rootfs, ())
        app_job = pool.submit(debian_rootfs, spec.packages)
        base, app = base_job.result(), app_job.result()
    layout = _layout()
    base_tag = f"base-{_digest(FORMAT, base.name)[:16]}"
    with _locked(cache_dir() / "oci.lock"):
        if not (layout / "index.json").is_file():
            if layout.exists():  # a killed `umoci init`
                shutil.rmtree(layout)
            run("umoci", "init", "--layout", layout)
        # A killed run's work folders (the lock is held: no live run has one).
        killed = [*cache_dir().glob(f"{WORK_PREFIX}*"), *Path("/dev/shm").glob(f"{WORK_PREFIX}*")]
        for stale in killed:
            shutil.rmtree(stale)
        if killed:  # and its blobs, which nothing names
            run("umoci", "gc", "--layout", layout)
        need = base.stat().st_size + app.stat().st_size
        work = _scratch(need) / f"{WORK_PREFIX}{os.getpid()}"
        work.mkdir()
        try:
            if not _has_tag(layout, base_tag):
                _build_base(layout, base_tag, base, work)
            tag = _build_image(spec, layout, base_tag, app, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return layout, tag


def prepare_debian_images(names: Iterable[str]) -> None:
    """Build (or find in the cache) the images of IMAGES named, making their root filesystems
    two at a time: cuts a first run for a module that uses several of them."""
    _require_tools()
    specs = [IMAGES[name] for name in names]
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(debian_rootfs, p) for p in ((), *(s.packages for s in specs))]
        for job in jobs:
            job.result()
    for spec in specs:
        build_debian_image(spec)


def push_debian_image(spec: DebianImage, host: str) -> str:
    """Build ``spec`` (cached) and push it to the registry at ``host`` (plain HTTP, no auth);
    return its reference ``HOST/NAME:TAG``."""
    layout, tag = build_debian_image(spec)
    ref = f"{host}/{spec.name}:{spec.tag}"
    with _locked(cache_dir() / "oci.lock", shared=True):
        run(
            "skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
            f"oci:{layout}:{tag}", f"docker://{ref}",
        )  # fmt: skip
    return ref


@pytest.fixture(scope="session")
def debian_image(registries: Registries) -> Callable[[str], str]:  # noqa: F811
    """``debian_image(name)`` pushes ``IMAGES[name]`` to the plain registry of ``registries``
    (once for each instance of that fixture: pytest makes one per module that imports it) and
    returns its reference."""
    pushed: dict[str, str] = {}

    def push(name: str) -> str:
        if name not in pushed:
            pushed[name] = push_debian_image(IMAGES[name], registries.plain.host)
        return pushed[name]

    return push

"""Local packages from images: pyops.ops.package and ``pyops pkg``, against a real registry.

The image is a merged-/usr Debian-style root made from this machine's own files, over several
layers (per-file whiteouts, hard links, an opaque directory), pushed with umoci and skopeo to
the session's docker-registry (tests/registry_server.py). The packaged closure is compared
with what the host's ``ldd`` says about the same programs, mapped into the image root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pyops import atomic
from pyops.arch import Arch
from pyops.cli import cli
from pyops.errors import (
    CaseCollision,
    DigestMismatch,
    LayerError,
    LibraryNotFound,
    ManifestNotFound,
    PackageError,
    PlatformNotFound,
)
from pyops.oci.net import HttpClient, HttpResponse
from pyops.oci.pull import PulledImage, pull
from pyops.oci.reference import ImageRef
from pyops.oci.schema import (
    LAYER_GZIP,
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    ImageManifest,
    Platform,
)
from pyops.oci.store import Store
from pyops.ops.contents import CONTENTS_FILE
from pyops.ops.package import (
    MANIFEST_FILE,
    Package,
    check_package_name,
    default_package_name,
    from_docker,
    list_packages,
    load_package,
    packages_dir,
    prune,
    remove_package,
)

from ..elf.test_hostile_elf import make_elf
from ..layer_fixtures import Entry, F, write_layer
from ..registry_server import PASSWORD, USER, Registries, _umoci_rootless, run

TRIPLET_DIR = "usr/lib/x86_64-linux-gnu"
LOADER = "/lib64/ld-linux-x86-64.so.2"
NSSWITCH = "passwd: files compat\ngroup: files\nhosts: files dns\n"
FAKE_CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
# Packaged whatever the program: lookup files of the image (not resolv.conf) and its CA bundle.
DATA_FILES = {
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/ssl/certs/ca-certificates.crt",
}


class CountingHttp(HttpClient):
    """An HttpClient that records the URLs it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def request(self, method: str, url: str, **kwargs: object) -> HttpResponse:
        self.urls.append(url)
        return super().request(method, url, **kwargs)  # type: ignore[arg-type]


@dataclass
class PkgImage:
    """The image pushed for these tests and what its packages must hold."""

    ref: str
    """Entrypoint /usr/bin/greet, LD_LIBRARY_PATH=/opt/lib:/opt/lib2."""
    no_libpath_ref: str
    """The same layers without LD_LIBRARY_PATH: libgreet.so cannot be found."""
    host: str
    greet_files: set[str] = field(default_factory=set)
    """Regular files of greet's package, from the host's ldd mapped into the root."""
    greet_links: dict[str, str] = field(default_factory=dict)
    """Symlinks of greet's package and their targets."""
    ls_files: set[str] = field(default_factory=set)
    ls_links: dict[str, str] = field(default_factory=dict)
    new_greet: bytes = b""


def _host_ldd(program: Path, env: dict[str, str] | None = None) -> list[str]:
    """The absolute paths ``ldd`` lists for ``program`` on the host (the loader last)."""
    out = subprocess.run(
        ["ldd", os.fspath(program)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    ).stdout
    paths = []
    for line in out.splitlines():
        match = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+) \(", line)
        if match:
            paths.append(match.group(1))
    return paths


def _add_lib(root: Path, host_path: str, files: set[str], links: dict[str, str]) -> None:
    """Put a host library into the image's multiarch directory, keeping a same-dir symlink."""
    real = Path(host_path).resolve()
    listed = Path(host_path).name
    if host_path == LOADER:
        listed = real.name  # reached through /lib64 -> usr/lib64 -> absolute link
    dest = root / TRIPLET_DIR / real.name
    if not dest.exists():
        shutil.copy2(real, dest)
    files.add(f"/{TRIPLET_DIR}/{real.name}")
    if listed != real.name:
        if not (root / TRIPLET_DIR / listed).is_symlink():
            os.symlink(real.name, root / TRIPLET_DIR / listed)
        links[f"/{TRIPLET_DIR}/{listed}"] = real.name


def _compile(cc: str, work: Path, word: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "libgreet.c"
    src.write_text(f'const char *greet(void) {{ return "{word}"; }}\n')
    lib = out_dir / "libgreet.so"
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libgreet.so", "-o", lib, src], check=True)
    return lib


@pytest.fixture(scope="module")
def pkg_image(
    registries: Registries,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> PkgImage:
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("gcc is not installed")
    ls = Path(shutil.which("ls") or "/usr/bin/ls").resolve()
    ls_libs = _host_ldd(ls)
    if LOADER not in ls_libs or not all(p == LOADER or "/x86_64-linux-gnu/" in p for p in ls_libs):
        pytest.skip(f"needs an x86-64 Debian-style host (ldd {ls}: {ls_libs})")
    work = tmp_path_factory.mktemp("pkgimage")
    # greet needs libgreet.so, found only through the image's LD_LIBRARY_PATH.
    old_lib = _compile(cc, work, "old", work / "old")
    new_lib = _compile(cc, work, "new", work / "new")
    greet_src = work / "greet.c"
    greet_src.write_text(
        "#include <stdio.h>\nconst char *greet(void);\n"
        "int main(void) { puts(greet()); return 0; }\n"
    )
    greet = work / "greet"
    subprocess.run([cc, "-o", greet, greet_src, f"-L{work / 'new'}", "-lgreet"], check=True)
    greet_libs = _host_ldd(greet, {"LD_LIBRARY_PATH": os.fspath(work / "new")})

    layout, bundle = work / "oci", work / "bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:pkg")

    def unpack() -> Path:
        if bundle.exists():
            shutil.rmtree(bundle)
        run("umoci", "unpack", *_umoci_rootless(), "--image", f"{layout}:pkg", bundle)
        return bundle / "rootfs"

    def repack() -> None:
        run("umoci", "repack", "--image", f"{layout}:pkg", bundle)

    image = PkgImage("", "", registries.plain.host, new_greet=new_lib.read_bytes())
    # The merged-/usr skeleton: every package goes through these links.
    skeleton = {"/lib": "usr/lib", "/lib64": "usr/lib64", "/bin": "usr/bin", "/sbin": "usr/sbin"}
    loader_link = {"/usr/lib64/ld-linux-x86-64.so.2": f"/{TRIPLET_DIR}/ld-linux-x86-64.so.2"}

    # Layer 1: the base.
    root = unpack()
    for sub in ("usr/bin", "usr/sbin", "usr/lib64", TRIPLET_DIR, "usr/local/bin", "etc/ssl/certs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for link, target in {**skeleton, **loader_link}.items():
        os.symlink(target, root / link.lstrip("/"))
    common_files: set[str] = set()
    common_links: dict[str, str] = {}
    for path in sorted(set(ls_libs) | set(greet_libs)):
        if "libgreet" in path:
            continue
        files = image.ls_files if path in ls_libs else image.greet_files
        links = image.ls_links if path in ls_libs else image.greet_links
        if path in ls_libs and path in greet_libs:
            files, links = common_files, common_links
        _add_lib(root, path, files, links)
    # Run-time extras: libgcc_s (glibc dlopens it) and the NSS module nsswitch.conf names.
    for extra in ("libgcc_s.so.1", "libnss_compat.so.2"):
        host_lib = Path("/", TRIPLET_DIR, extra)
        if not host_lib.exists():
            pytest.skip(f"the host has no {host_lib}")
        _add_lib(root, os.fspath(host_lib), common_files, common_links)
    for decoy in ("libz.so.1", "libm.so.6"):  # in the image, needed by neither program
        if Path("/", TRIPLET_DIR, decoy).exists():
            shutil.copy2(Path("/", TRIPLET_DIR, decoy), root / TRIPLET_DIR / decoy)
    shutil.copy2(ls, root / "usr/bin/ls")
    shutil.copy2(greet, root / "usr/bin/greet")
    # A decoy ls earlier on PATH, deleted by the next layer.
    (root / "usr/local/bin/ls").write_text("#!/bin/sh\necho decoy\n")
    (root / "usr/local/bin/ls").chmod(0o755)
    (root / "usr/bin/wrapper.sh").write_text("#!/bin/sh\nexec greet\n")
    (root / "usr/bin/wrapper.sh").chmod(0o755)
    (root / "opt/lib").mkdir(parents=True)
    shutil.copy2(old_lib, root / "opt/lib/libgreet.so")
    (root / "opt/lib2").mkdir(parents=True)
    shutil.copy2(new_lib, root / "opt/lib2/libgreet.so")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/srv:/\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/nsswitch.conf").write_text(NSSWITCH)
    (root / "etc/resolv.conf").write_text("nameserver 10.9.8.7\n")
    (root / "etc/os-release").write_text("ID=pyops-test\n")
    (root / "etc/ssl/certs/ca-certificates.crt").write_text(FAKE_CA)
    (root / "srv").mkdir()
    repack()
    # Layer 2: a whiteout (the decoy ls) and a hard link (dir is ls).
    root = unpack()
    (root / "usr/local/bin/ls").unlink()
    os.link(root / "usr/bin/ls", root / "usr/bin/dir")
    repack()
    # Layer 3: /opt/lib made opaque: its old libgreet.so is gone, /opt/lib2 has the new one.
    readme = work / "opt-lib"
    readme.mkdir()
    (readme / "README").write_text("nothing here\n")
    run("umoci", "insert", "--image", f"{layout}:pkg", "--opaque", readme, "/opt/lib")

    path_env = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    run(
        "umoci", "config", "--image", f"{layout}:pkg",
        "--config.entrypoint", "/usr/bin/greet", "--config.cmd", "--loud",
        "--config.env", path_env, "--config.env", "LD_LIBRARY_PATH=/opt/lib:/opt/lib2",
        "--config.env", "GREETING=hello", "--config.workingdir", "/srv",
        "--config.user", "1000:1000", "--architecture", "amd64", "--os", "linux",
    )  # fmt: skip
    run("umoci", "tag", "--image", f"{layout}:pkg", "nolibpath")
    run(
        "umoci", "config", "--image", f"{layout}:nolibpath",
        "--clear=config.env", "--config.env", path_env,
    )  # fmt: skip
    for tag in ("pkg", "nolibpath"):
        run(
            "skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
            f"oci:{layout}:{tag}", f"docker://{registries.plain.host}/test/pkgroot:{tag}",
        )  # fmt: skip
    image.ref = f"{registries.plain.host}/test/pkgroot:pkg"
    image.no_libpath_ref = f"{registries.plain.host}/test/pkgroot:nolibpath"

    # What each package must hold: the host's ldd view mapped into the root, plus the extras.
    everything_files = common_files | DATA_FILES
    everything_links = {**common_links, **skeleton, **loader_link}
    del everything_links["/bin"], everything_links["/sbin"]  # only when a path goes through them
    image.greet_files |= everything_files | {"/usr/bin/greet", "/opt/lib2/libgreet.so"}
    image.greet_links.update(everything_links)
    image.ls_files |= everything_files
    image.ls_links.update(everything_links)
    return image


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    # The host's loader settings must not matter: the image's own are used.
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/lib")
    return Store.default()


def _tree(sysroot: Path) -> tuple[set[str], dict[str, str], set[str]]:
    """(regular files, symlinks -> targets, directories) under ``sysroot``, as image paths."""
    files: set[str] = set()
    links: dict[str, str] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(sysroot):
        for name in dirnames + filenames:
            host = os.path.join(dirpath, name)
            path = "/" + os.path.relpath(host, sysroot)
            if os.path.islink(host):
                links[path] = os.readlink(host)
            elif os.path.isdir(host):
                dirs.add(path)
            else:
                files.add(path)
    return files, links, dirs


def _store_entries(store: Store) -> list[str]:
    """The packages (and anything else) in the store's amd64 folder; nothing else may be
    left beside the architecture folders."""
    base = packages_dir(store.root)
    if not base.exists():
        return []
    assert set(os.listdir(base)) <= {"amd64"}
    folder = packages_dir(store.root, Arch.AMD64)
    return sorted(os.listdir(folder)) if folder.exists() else []


# -- from_docker ------------------------------------------------------------------------------


def test_from_docker_packages_exactly_the_closure(
    pkg_image: PkgImage, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyops.ops.package

    unpacked_into: list[Path | None] = []
    real_unpacker = pyops.ops.package.Unpacker

    def recording_unpacker(dest: Path | None, count: int, **kw: object) -> object:
        unpacked_into.append(dest)
        return real_unpacker(dest, count, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pyops.ops.package, "Unpacker", recording_unpacker)
    package = from_docker(pkg_image.ref, "greet", store=store)

    assert package.name == "pkgroot_pkg"
    assert package.path == packages_dir(store.root, Arch.AMD64) / "pkgroot_pkg"
    assert package.arch == Arch.AMD64 and package.platform == "linux/amd64"
    # The root was made in memory: no folder was unpacked in, only what is kept written.
    assert unpacked_into == [None]
    assert _store_entries(store) == ["pkgroot_pkg"]
    assert sorted(os.listdir(package.path)) == [CONTENTS_FILE, MANIFEST_FILE, "sysroot"]

    files, links, _ = _tree(package.sysroot)
    assert files == pkg_image.greet_files
    assert links == pkg_image.greet_links
    # The opaque /opt/lib hid the old library; LD_LIBRARY_PATH came from the image.
    assert (package.sysroot / "opt/lib2/libgreet.so").read_bytes() == pkg_image.new_greet
    assert not (package.sysroot / "etc/resolv.conf").exists()
    assert (package.sysroot / "etc/nsswitch.conf").read_text() == NSSWITCH

    manifest = json.loads((package.path / MANIFEST_FILE).read_text())
    assert manifest["Program"] == "/usr/bin/greet"
    assert manifest["Args"] == ["/usr/bin/greet", "--loud"]
    assert manifest["Version"] == "pkg"
    assert manifest["Env"]["LD_LIBRARY_PATH"] == "/opt/lib:/opt/lib2"
    assert manifest["Env"]["GREETING"] == "hello"
    # Only keys Ops's strict decoder knows at the top level (ops-reference.md section 2.1).
    assert set(manifest) <= {"Program", "Args", "Version", "Env", "Description",
                             "ManifestPassthrough"}  # fmt: skip
    extra = manifest["ManifestPassthrough"]["pyops_image"]
    assert extra["WorkingDir"] == "/srv"
    assert extra["Entrypoint"] == ["/usr/bin/greet"] and extra["Cmd"] == ["--loud"]
    assert extra["User"] == "1000:1000"
    assert "GREETING=hello" in extra["Env"]
    assert extra["Digest"].startswith("sha256:")

    assert package.program == "/usr/bin/greet"
    assert package.args == ("/usr/bin/greet", "--loud")
    assert package.working_dir == "/srv"
    assert package.entrypoint == ("/usr/bin/greet",) and package.cmd == ("--loud",)
    assert load_package("pkgroot_pkg") == package

    # Again: every blob is cached, so only the manifest is asked for; the package is replaced.
    http = CountingHttp()
    again = from_docker(pkg_image.ref, "greet", store=store, http=http)
    assert [u for u in http.urls if "/blobs/" in u] == []
    assert again == package
    assert _store_entries(store) == ["pkgroot_pkg"]


def test_program_through_links_whiteout_and_hard_link(pkg_image: PkgImage, store: Store) -> None:
    # ls: /usr/local/bin/ls (earlier on PATH) was deleted by a whiteout.
    package = from_docker(pkg_image.ref, "ls", name="ls", store=store)
    assert package.program == "/usr/bin/ls"
    assert package.args == ("/usr/bin/ls",)  # the image's command runs another program
    files, links, _ = _tree(package.sysroot)
    assert files == pkg_image.ls_files | {"/usr/bin/ls"}
    assert links == pkg_image.ls_links

    # dir is a hard link to ls, asked for through the /bin -> usr/bin link.
    package = from_docker(pkg_image.ref, "/bin/dir", name="dir", store=store)
    assert package.program == "/usr/bin/dir"
    assert package.args == ("/bin/dir",)
    files, links, _ = _tree(package.sysroot)
    assert files == pkg_image.ls_files | {"/usr/bin/dir"}
    assert links == {**pkg_image.ls_links, "/bin": "usr/bin"}
    assert [p.name for p in list_packages()] == ["dir", "ls"]


def test_copy_keeps_the_whole_root(pkg_image: PkgImage, store: Store) -> None:
    package = from_docker(pkg_image.ref, "greet", name="whole", copy=True, store=store)
    sysroot = package.sysroot
    assert package.program == "/usr/bin/greet"
    files, links, _ = _tree(sysroot)
    assert pkg_image.greet_files <= files
    assert {"/etc/os-release", "/etc/resolv.conf", "/opt/lib/README", "/usr/bin/ls"} <= files
    assert not (sysroot / "usr/local/bin/ls").exists()  # the whiteout
    assert not (sysroot / "opt/lib/libgreet.so").exists()  # the opaque directory
    assert (sysroot / "usr/bin/dir").stat().st_ino == (sysroot / "usr/bin/ls").stat().st_ino
    assert links["/lib64"] == "usr/lib64"
    assert _store_entries(store) == ["whole"]


def _state(sysroot: Path) -> dict[str, tuple[object, ...]]:
    """Every entry of a sysroot: type, mode, time, bytes or target, and which are one inode."""
    seen: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(sysroot):
        for name in dirnames + filenames:
            host = os.path.join(dirpath, name)
            st = os.lstat(host)
            path = "/" + os.path.relpath(host, sysroot)
            if stat.S_ISLNK(st.st_mode):
                seen[path] = ("link", os.readlink(host), st.st_mtime_ns)
                continue
            data = b""
            if stat.S_ISREG(st.st_mode):
                data = Path(host).read_bytes()
                inodes.setdefault(st.st_ino, []).append(path)
            seen[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                          hashlib.sha256(data).hexdigest())  # fmt: skip
    seen["linked"] = tuple(sorted(tuple(sorted(g)) for g in inodes.values() if len(g) > 1))
    return seen


@pytest.mark.parametrize("copy", [False, True], ids=["closure", "copy"])
def test_a_second_package_of_the_same_layers_reads_their_index(
    pkg_image: PkgImage, store: Store, monkeypatch: pytest.MonkeyPatch, copy: bool
) -> None:
    import pyops.ops.package

    # The first unpacked in a folder, then indexed; the third made in memory (below).
    with monkeypatch.context() as patch:
        patch.setattr(pyops.ops.package, "_root_in_memory", lambda folder: False)
        first = from_docker(pkg_image.ref, "ls", name="first", copy=copy, store=store)
    indexes = list((store.root / "roots").iterdir())
    assert len(indexes) == 1
    assert len(list((store.root / "layers/sha256").iterdir())) == 3  # one tar per layer

    def no_unpacking(*args: object, **kw: object) -> None:
        raise AssertionError("unpacked although the root is indexed")

    monkeypatch.setattr(pyops.ops.package, "Unpacker", no_unpacking)
    second = from_docker(pkg_image.ref, "ls", name="second", copy=copy, store=store)
    assert _state(second.sysroot) == _state(first.sysroot)
    assert (second.program, second.args) == (first.program, first.args)
    assert (second.path / CONTENTS_FILE).read_text() == (first.path / CONTENTS_FILE).read_text()
    if copy:  # the whiteout and the opaque folder hold in the index too
        assert not (second.sysroot / "usr/local/bin/ls").exists()
        assert not (second.sysroot / "opt/lib/libgreet.so").exists()
        assert ("/usr/bin/dir", "/usr/bin/ls") in _state(second.sysroot)["linked"]

    # A damaged index is not used: the layers are applied again, and indexed anew.
    monkeypatch.undo()
    indexes[0].write_text('{"format": 1, "layers": [], "entries": []}')
    third = from_docker(pkg_image.ref, "ls", name="third", copy=copy, store=store)
    assert _state(third.sysroot) == _state(first.sysroot)
    assert json.loads(indexes[0].read_text())["entries"]


def test_a_pulled_image_is_a_source(pkg_image: PkgImage, store: Store) -> None:
    """Pull once, package twice: from_docker takes what pull returned, as is."""
    pulled = pull(pkg_image.ref, store=store)
    requests = len(list((store.root / "blobs").rglob("*")))
    one = from_docker(pulled, "greet", name="one", store=store)
    two = from_docker(pulled, "ls", name="two", store=store)
    assert (one.program, two.program) == ("/usr/bin/greet", "/usr/bin/ls")
    assert one.image == two.image == str(pulled.ref)
    assert len(list((store.root / "blobs").rglob("*"))) == requests  # nothing fetched again


def test_bad_input_leaves_nothing(pkg_image: PkgImage, store: Store) -> None:
    with pytest.raises(PackageError, match="no program 'nosuch' on the image's PATH") as info:
        from_docker(pkg_image.ref, "nosuch", store=store)
    message = str(info.value)
    assert "test/pkgroot:pkg" in message
    assert "searched: /usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin, /sbin, /bin" in message

    with pytest.raises(PackageError, match="/opt/nosuch is not an executable file"):
        from_docker(pkg_image.ref, "/opt/nosuch", store=store)
    with pytest.raises(PackageError, match=r"wrapper.sh is a script \(#!/bin/sh\)") as info:
        from_docker(pkg_image.ref, "wrapper.sh", store=store)
    assert info.value.hint is not None and "-f /bin/sh" in info.value.hint

    with pytest.raises(LibraryNotFound, match="libgreet.so needed by /usr/bin/greet") as lib:
        from_docker(pkg_image.no_libpath_ref, "greet", store=store)
    assert str(lib.value).startswith(f"{pkg_image.host}/test/pkgroot:nolibpath: ")
    assert lib.value.library == "libgreet.so"

    with pytest.raises(ManifestNotFound, match="test/pkgroot:no-such-tag"):
        from_docker(f"{pkg_image.host}/test/pkgroot:no-such-tag", "greet", store=store)
    with pytest.raises(PlatformNotFound, match="linux/arm64"):
        from_docker(pkg_image.ref, "greet", store=store, platform="linux/arm64")
    with pytest.raises(PackageError, match="not a valid package name"):
        from_docker(pkg_image.ref, "greet", name="../escape", store=store)
    assert _store_entries(store) == []


# -- names, the store, Ops packages -----------------------------------------------------------


def test_default_names() -> None:
    digest = "sha256:" + "ab" * 32
    assert default_package_name("node:20") == "node_20"
    assert default_package_name("ubuntu") == "ubuntu_latest"
    assert default_package_name("gcr.io/distroless/python3-debian12:debug") == (
        "python3-debian12_debug"
    )
    assert default_package_name(f"127.0.0.1:5000/a/b@{digest}") == "b_" + "ab" * 6
    assert default_package_name(f"node:20@{digest}") == "node_" + "ab" * 6
    for bad in ("", ".", "..", "a/b", "-x", "x" * 300):
        with pytest.raises(PackageError):
            check_package_name(bad)


def test_ops_packages_and_stale_folders(tmp_path: Path) -> None:
    base = packages_dir(tmp_path)
    ops_pkg = base / "lua_5.2.4"
    (ops_pkg / "sysroot").mkdir(parents=True)
    # Go decodes JSON keys case-insensitively; Ops packages have a top-level executable.
    (ops_pkg / MANIFEST_FILE).write_text(
        '{"program": "lua_5.2.4/lua", "Args": ["lua"], "Version": "5.2.4"}'
    )
    (base / "broken").mkdir()
    (base / "broken" / MANIFEST_FILE).write_text("{not json")
    dead = base / ".package.pyops-999999999-deadbeef.tmp"  # no such process
    (dead / "rootfs").mkdir(parents=True)
    (dead / "rootfs" / "ro").mkdir(mode=0o555)
    mine = atomic.temp_path(base / "package")
    mine.mkdir()

    assert [p.name for p in list_packages(tmp_path)] == ["lua_5.2.4"]
    lua = load_package("lua_5.2.4", tmp_path)
    assert (lua.program, lua.args, lua.version, lua.image) == (
        "lua_5.2.4/lua",
        ("lua",),
        "5.2.4",
        "",
    )
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package("broken", tmp_path)
    with pytest.raises(PackageError, match="no local package 'gone'"):
        remove_package("gone", tmp_path)

    assert remove_package("broken", tmp_path) == base / "broken"
    # The dead process's folder went with it; a live process's folder stays.
    assert sorted(os.listdir(base)) == [mine.name, "lua_5.2.4"]


def _package_at(folder: Path, program: str) -> None:
    (folder / "sysroot").mkdir(parents=True)
    (folder / MANIFEST_FILE).write_text(json.dumps({"Program": program, "Args": [program]}))


def test_packages_per_architecture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ops's layout: local_packages/<arch>/<name>; a name means the host's architecture
    first, else the only one the package is made for; --arch picks one."""
    import pyops.arch

    _package_at(packages_dir(tmp_path, Arch.AMD64) / "both", "/x86")
    _package_at(packages_dir(tmp_path, Arch.ARM64) / "both", "/arm")
    _package_at(packages_dir(tmp_path, Arch.ARM64) / "armonly", "/arm")
    _package_at(packages_dir(tmp_path) / "legacy", "/old")  # as an older pyops left it
    listed = [(p.name, p.arch) for p in list_packages(tmp_path)]
    assert listed == [
        ("armonly", Arch.ARM64),
        ("both", Arch.AMD64),
        ("both", Arch.ARM64),
        ("legacy", Arch.AMD64),
    ]
    monkeypatch.setattr(pyops.arch, "host", lambda: Arch.AMD64)
    assert load_package("both", tmp_path).program == "/x86"
    assert load_package("armonly", tmp_path).arch == Arch.ARM64
    assert load_package("legacy", tmp_path).arch == Arch.AMD64
    monkeypatch.setattr(pyops.arch, "host", lambda: Arch.ARM64)  # an Apple Silicon Mac
    assert load_package("both", tmp_path).program == "/arm"
    assert load_package("both", tmp_path, Arch.AMD64).program == "/x86"
    with pytest.raises(PackageError, match="no local package 'armonly' for amd64"):
        load_package("armonly", tmp_path, Arch.AMD64)
    assert (
        remove_package("both", tmp_path, Arch.ARM64) == packages_dir(tmp_path, Arch.ARM64) / "both"
    )
    assert load_package("both", tmp_path).program == "/x86"


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture()
def runner() -> Iterator[CliRunner]:
    yield CliRunner()


def test_cli_pkg_commands(
    pkg_image: PkgImage,
    store: Store,
    runner: CliRunner,
    registries: Registries,  # noqa: F811
) -> None:
    # Through the htpasswd registry, with the password on stdin.
    ref = f"{registries.basic.host}/test/pkgroot:pkg"
    result = runner.invoke(
        cli,
        ["pkg", "from-docker", ref, "-f", "greet", "--username", USER, "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "pkgroot_pkg"

    result = runner.invoke(cli, ["pkg", "from-docker", pkg_image.ref, "-f", "ls", "--name", "myls"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "myls"

    result = runner.invoke(cli, ["pkg", "list", "--local"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ARCH", "VERSION", "PROGRAM", "IMAGE"]
    assert lines[1].split()[:4] == ["myls", "amd64", "pkg", "/usr/bin/ls"]
    assert lines[2].split()[:4] == ["pkgroot_pkg", "amd64", "pkg", "/usr/bin/greet"]

    result = runner.invoke(cli, ["pkg", "list", "-l", "--json"])
    listed = json.loads(result.stdout)
    assert [p["name"] for p in listed] == ["myls", "pkgroot_pkg"]
    assert listed[1]["args"] == ["/usr/bin/greet", "--loud"]
    assert listed[1]["working_dir"] == "/srv"

    result = runner.invoke(cli, ["pkg", "contents", "pkgroot_pkg"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"the program and its libraries: 4 files, \d+\.\d MiB", lines[0])
    assert lines[1].startswith("loaded or read by the C library at run time: ")
    assert lines[2] == "CA certificates and the loader cache: 1 file, 63 bytes"
    result = runner.invoke(cli, ["pkg", "contents", "pkgroot_pkg", "--files"])
    assert "    /usr/bin/greet" in result.stdout.splitlines()

    result = runner.invoke(cli, ["pkg", "contents", "pkgroot_pkg", "--tree"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("/\n")
    assert "lib -> usr/lib" in out and "lib64 -> usr/lib64" in out
    assert "ld-linux-x86-64.so.2 -> /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" in out
    assert re.search(r"libgreet\.so \(\d+ bytes\)", out)
    assert "resolv.conf" not in out

    result = runner.invoke(cli, ["pkg", "rm", "myls"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in list_packages()] == ["pkgroot_pkg"]

    result = runner.invoke(cli, ["pkg", "rm", "myls"])
    assert result.exit_code == 1
    assert "error: there is no local package 'myls'" in result.stderr

    result = runner.invoke(cli, ["pkg", "from-docker", pkg_image.ref, "-f", "nosuch"])
    assert result.exit_code == 1
    assert "searched: /usr/local/sbin" in result.stderr and "hint:" in result.stderr

    # Without -f: the image's Entrypoint, as Docker runs it; -q prints the name only.
    result = runner.invoke(cli, ["pkg", "from-docker", pkg_image.ref, "--name", "ep", "-q"])
    assert result.exit_code == 0, result.output
    assert (result.stdout, result.stderr) == ("ep\n", "")
    assert load_package("ep").args == ("/usr/bin/greet", "--loud")


def test_package_is_a_value() -> None:
    package = Package("n", Path("/p"), "/bin/x", ("x",), {"A": "1"})
    assert package.sysroot == Path("/p/sysroot")
    assert package.to_dict()["env"] == {"A": "1"}


# -- prune: the unpacked root becomes the sysroot ------------------------------------------


def test_prune_keeps_exactly_the_kept_paths_with_their_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/python/site").mkdir(parents=True)
    (root / "usr/share/doc/big").mkdir(parents=True)
    (root / "usr/lib/python/os.py").write_text("os")
    (root / "usr/lib/python/site/extra.py").write_text("extra")
    (root / "usr/lib/libc.so.6").write_bytes(b"libc")
    os.link(root / "usr/lib/libc.so.6", root / "usr/lib/libc-hardlink.so")
    (root / "usr/share/doc/big/README").write_text("doc")
    (root / "lib").symlink_to("usr/lib")
    (root / "etc").mkdir()
    (root / "etc/hosts").write_text("hosts")
    os.chmod(root / "usr/lib/python", 0o555)  # a read-only folder of the image
    os.utime(root / "usr/lib", (1_000_000, 1_000_000))
    kept = ["/lib", "/usr/lib/libc.so.6", "/usr/lib/libc-hardlink.so", "/usr/lib/python",
            "/usr/lib/python/os.py"]  # fmt: skip
    prune(root, kept)
    left = sorted("/" + str(p.relative_to(root)) for p in root.rglob("*"))
    assert left == sorted(
        [
            "/lib",
            "/usr",
            "/usr/lib",
            "/usr/lib/libc.so.6",
            "/usr/lib/libc-hardlink.so",
            "/usr/lib/python",
            "/usr/lib/python/os.py",
        ]  # fmt: skip
    )
    # Nothing was rewritten: hard links stay links, the image's folder modes and times stay.
    assert (root / "usr/lib/libc.so.6").stat().st_nlink == 2
    assert os.readlink(root / "lib") == "usr/lib"
    assert stat.S_IMODE((root / "usr/lib/python").stat().st_mode) == 0o555
    assert (root / "usr/lib").stat().st_mtime == 1_000_000  # nothing removed in it


def _snapshot(sysroot: Path) -> dict[str, tuple[int, int, bytes | str | None]]:
    """Every entry's mode, mtime and content (a symlink's target), hard links by group."""
    seen: dict[tuple[int, int], str] = {}
    out: dict[str, tuple[int, int, bytes | str | None]] = {}
    for path in sorted(sysroot.rglob("*")):
        st = path.lstat()
        name = "/" + str(path.relative_to(sysroot))
        if stat.S_ISLNK(st.st_mode):
            out[name] = (st.st_mode, st.st_mtime_ns, os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            first = seen.setdefault((st.st_dev, st.st_ino), name)
            out[name] = (st.st_mode, st.st_mtime_ns, path.read_bytes() + first.encode())
        else:
            out[name] = (st.st_mode, st.st_mtime_ns, None)
    return out


def test_unpacking_in_memory_or_on_disk_makes_the_same_package(
    pkg_image: PkgImage, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root made in memory (the index), unpacked in a scratch folder in memory, or
    unpacked on disk: the same package, entry for entry."""
    import pyops.ops.package

    index = from_docker(pkg_image.ref, "greet", store=store, name="index")
    atomic.remove(store.root / "roots")
    monkeypatch.setattr(pyops.ops.package, "_root_in_memory", lambda folder: False)
    scratch = from_docker(pkg_image.ref, "greet", store=store, name="scratch")
    atomic.remove(store.root / "roots")
    monkeypatch.setattr(pyops.ops.package, "SCRATCH_FOLDERS", ())
    on_disk = from_docker(pkg_image.ref, "greet", store=store, name="disk")
    assert _snapshot(index.sysroot) == _snapshot(scratch.sysroot) == _snapshot(on_disk.sysroot)
    assert _snapshot(index.sysroot)  # not empty


def test_layers_whose_tars_cannot_be_kept_are_unpacked_in_a_folder(
    pkg_image: PkgImage, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index needs every layer's tar: when one cannot be kept (a full disk), the
    layers are unpacked in a folder instead, and the package is the same."""
    import pyops.ops.package
    from pyops.oci import layers

    expected = from_docker(pkg_image.ref, "greet", store=store, name="expected")
    for name in ("roots", "layers"):
        atomic.remove(store.root / name)
    unpacked_into: list[Path | None] = []
    real_unpacker = pyops.ops.package.Unpacker

    def recording_unpacker(dest: Path | None, count: int, **kw: object) -> object:
        unpacked_into.append(dest)
        return real_unpacker(dest, count, **kw)  # type: ignore[arg-type]

    def full(self: layers._Tee, data: bytes) -> None:
        self.drop()  # what a failed write does

    monkeypatch.setattr(pyops.ops.package, "Unpacker", recording_unpacker)
    monkeypatch.setattr(layers._Tee, "write", full)
    package = from_docker(pkg_image.ref, "greet", store=store, name="package")
    assert _snapshot(package.sysroot) == _snapshot(expected.sysroot)
    assert unpacked_into[0] is None and len(unpacked_into) == 2
    assert unpacked_into[1] is not None and not unpacked_into[1].exists()  # removed after
    assert not (store.root / "roots").exists() or not list((store.root / "roots").iterdir())


def test_a_full_scratch_folder_falls_back_to_the_disk(
    pkg_image: PkgImage, store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pyops.ops.package
    from pyops.errors import DiskFull

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(pyops.ops.package, "_root_in_memory", lambda folder: False)
    monkeypatch.setattr(pyops.ops.package, "SCRATCH_FOLDERS", (str(scratch),))
    real_apply = pyops.ops.package.Unpacker.apply
    roots: list[Path] = []

    def apply(self: object, number: int, path: Path, arriving: object = None) -> None:
        root: Path = self.dest_root  # type: ignore[attr-defined]
        roots.append(root)
        if root.is_relative_to(scratch) and number == 2:
            raise DiskFull(f"disk full at {root}")
        real_apply(self, number, path, arriving)  # type: ignore[arg-type]

    monkeypatch.setattr(pyops.ops.package.Unpacker, "apply", apply)
    package = from_docker(pkg_image.ref, "greet", store=store)
    files, links, _ = _tree(package.sysroot)
    assert files == pkg_image.greet_files and links == pkg_image.greet_links
    # Layers 1 and 2 in the scratch folder, then all of them again on disk.
    assert [r.is_relative_to(scratch) for r in roots][:2] == [True, True]
    assert not any(r.is_relative_to(scratch) for r in roots[2:]) and len(roots) >= 3
    assert os.listdir(scratch) == []


def test_a_scratch_folder_only_with_room_for_twice_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyops.ops.package as package

    monkeypatch.setattr(package, "SCRATCH_FOLDERS", (str(tmp_path / "missing"), str(tmp_path)))
    monkeypatch.setattr(package, "_memory_available", lambda: 10 * 2**30)
    made = package.scratch_folder(2**20)
    assert made is not None and made.parent == tmp_path and made.is_dir()
    assert atomic.is_temp(made.name)  # swept by the next run if this process dies
    room = os.statvfs(tmp_path)
    free = room.f_bavail * room.f_frsize
    assert package.scratch_folder(free // 2 + 2**20) is None  # the folder is too small
    monkeypatch.setattr(package, "_memory_available", lambda: 2**21)
    assert package.scratch_folder(2**20 + 1) is None  # not enough memory
    monkeypatch.setattr(package, "_memory_available", lambda: None)
    assert package.scratch_folder(1) is None  # no /proc/meminfo: not Linux


def test_what_a_killed_run_left_in_the_scratch_folder_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyops.ops.package as package

    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that is gone
    left = tmp_path / f".pyops-unpack.pyops-{gone.pid}-0123abcd.tmp"
    (left / "rootfs/usr").mkdir(parents=True)
    mine = atomic.temp_path(tmp_path / "pyops-unpack")  # this process's: kept
    mine.mkdir()
    monkeypatch.setattr(package, "SCRATCH_FOLDERS", (str(tmp_path),))
    monkeypatch.setattr(package, "_memory_available", lambda: 0)  # and no room now
    assert package.scratch_folder(2**20) is None
    assert sorted(os.listdir(tmp_path)) == [mine.name]


# -- a host folder that folds names (macOS) ---------------------------------------------------


def _local_image(tmp_path: Path, *layers: list[Entry]) -> PulledImage:
    """An image whose layers are files written here (no registry): /app/tool, a static
    program, over ``layers``."""
    tool = make_elf()  # no interpreter, no libraries
    paths, diff_ids, descriptors = [], [], []
    for i, entries in enumerate([[F("app/tool", tool, mode=0o755)], *layers]):
        path, diff_id = write_layer(tmp_path / f"layer{i}.tar.gz", entries)
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        paths.append(path)
        diff_ids.append(diff_id)
        descriptors.append(Descriptor(LAYER_GZIP, digest, path.stat().st_size))
    config = ImageConfig("amd64", "linux", entrypoint=("/app/tool",), diff_ids=tuple(diff_ids))
    config_blob = Descriptor(OCI_CONFIG, "sha256:" + "c" * 64, 2)
    manifest = ImageManifest(OCI_MANIFEST, config_blob, tuple(descriptors))
    return PulledImage(
        ImageRef.parse("local.test/folding:1"),
        "sha256:" + "d" * 64,
        manifest,
        config,
        Platform("linux", "amd64"),
        tmp_path / "config.json",
        tuple(paths),
    )


HEADERS = "usr/include/linux/netfilter"
COLLIDING = [F(f"{HEADERS}/xt_CONNMARK.h", b"upper"), F(f"{HEADERS}/xt_connmark.h", b"lower")]


@pytest.fixture()
def folding_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every folder the layers are unpacked in folds names, as on macOS's APFS: the probe
    says so, and the unpacker then keeps the books that find the collisions. No /dev/shm
    either: the root is unpacked in the package store."""
    import pyops.oci.folding
    import pyops.ops.package

    monkeypatch.setattr(pyops.oci.folding, "folds", lambda folder: True)
    monkeypatch.setattr(pyops.ops.package, "SCRATCH_FOLDERS", ())


@pytest.mark.usefixtures("folding_host")
def test_a_collision_the_package_does_not_keep_does_not_matter(
    tmp_path: Path, store: Store
) -> None:
    image = _local_image(tmp_path, COLLIDING)
    package = from_docker(image, "/app/tool", name="tool", store=store)
    files, _, _ = _tree(package.sysroot)
    assert files == {"/app/tool"}
    assert _store_entries(store) == ["tool"]


@pytest.mark.usefixtures("folding_host")
@pytest.mark.parametrize(
    "names",
    [("xt_CONNMARK.h", "xt_connmark.h"), ("caf\u00e9.h", "cafe\u0301.h")],
    ids=["case", "normalisation"],
)
def test_a_kept_collision_is_refused_naming_both_paths(
    tmp_path: Path, store: Store, names: tuple[str, str]
) -> None:
    # Both files are in the working directory, which the package keeps.
    first, second = names
    image = _local_image(tmp_path, [F(f"{HEADERS}/{first}", b"1"), F(f"{HEADERS}/{second}", b"2")])
    image = dataclasses.replace(
        image, config=dataclasses.replace(image.config, working_dir=f"/{HEADERS}")
    )
    with pytest.raises(CaseCollision) as info:
        from_docker(image, "/app/tool", name="tool", store=store)
    message = str(info.value)
    assert message.startswith("local.test/folding:1: the image has both ")
    assert f"/{HEADERS}/{first} and /{HEADERS}/{second}, whose names differ only" in message
    assert str(packages_dir(store.root)) in message
    assert info.value.hint is not None and "Case-sensitive APFS" in info.value.hint
    assert "PYOPS_HOME" in info.value.hint
    assert _store_entries(store) == []  # nothing half-written, no staging folder left
    assert os.listdir(packages_dir(store.root)) == []

    with pytest.raises(CaseCollision, match=r"the package keeps the whole root filesystem"):
        from_docker(image, "/app/tool", name="tool", copy=True, store=store)
    assert os.listdir(packages_dir(store.root)) == []


@pytest.mark.usefixtures("folding_host")
def test_a_whiteout_of_the_name_left_out_keeps_the_other(tmp_path: Path, store: Store) -> None:
    image = _local_image(
        tmp_path,
        [F("etc/App.conf", b"kept"), F("etc/app.conf", b"left out")],
        [F("etc/.wh.app.conf")],
    )
    package = from_docker(image, "/app/tool", name="tool", copy=True, store=store)
    assert (package.sysroot / "etc/App.conf").read_bytes() == b"kept"  # not whited out
    assert os.listdir(package.sysroot / "etc") == ["App.conf"]


def test_without_folding_both_names_are_packaged(tmp_path: Path, store: Store) -> None:
    image = _local_image(tmp_path, COLLIDING)
    package = from_docker(image, "/app/tool", name="tool", copy=True, store=store)
    headers = package.sysroot / HEADERS
    assert sorted(os.listdir(headers)) == ["xt_CONNMARK.h", "xt_connmark.h"]
    assert (headers / "xt_connmark.h").read_bytes() == b"lower"


def test_no_scratch_folder_without_proc_meminfo_nor_dev_shm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS: no /proc/meminfo, no /dev/shm; the root is unpacked on disk, no error."""
    import builtins

    import pyops.ops.package as package

    real_open = builtins.open

    def no_proc(file: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(file).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert package._memory_available() is None
    monkeypatch.setattr(package, "SCRATCH_FOLDERS", (str(tmp_path / "no-dev-shm"),))
    assert package.scratch_folder(2**20) is None
    assert package.scratch_folder(0) is None
    monkeypatch.setattr(package, "SCRATCH_FOLDERS", (str(tmp_path),))
    assert package.scratch_folder(0) is None  # a folder, but the memory free is unknown
    assert os.listdir(tmp_path) == []


# -- Ops's from-docker forms ------------------------------------------------------------------


def test_without_a_program_the_images_command_is_packaged(tmp_path: Path, store: Store) -> None:
    """Docker's rule: the first word of Entrypoint, else of Cmd; -a replaces the arguments."""
    import dataclasses

    pulled = _local_image(tmp_path)
    config = dataclasses.replace(pulled.config, entrypoint=(), cmd=("/app/tool", "--x"))
    from_cmd = dataclasses.replace(pulled, config=config)
    made = from_docker(from_cmd, None, name="by-cmd", store=store)
    assert (made.program, made.args) == ("/app/tool", ("/app/tool", "--x"))
    made = from_docker(pulled, name="by-entrypoint", store=store, args=("a", "b"))
    assert (made.program, made.args) == ("/app/tool", ("/app/tool", "a", "b"))

    bare = dataclasses.replace(pulled, config=dataclasses.replace(config, cmd=()))
    with pytest.raises(PackageError, match="has no Entrypoint or Cmd") as info:
        from_docker(bare, name="none", store=store)
    assert info.value.hint and "-f" in info.value.hint
    missing = dataclasses.replace(pulled, config=dataclasses.replace(config, cmd=("nope",)))
    with pytest.raises(PackageError, match=r"It is the image's Cmd") as info:
        from_docker(missing, name="none", store=store)
    assert info.value.hint and info.value.hint.endswith("Or give the program with -f.")
    assert _store_entries(store) == ["by-cmd", "by-entrypoint"]


def test_nodiscover_goes_with_copy(tmp_path: Path, store: Store) -> None:
    pulled = _local_image(tmp_path)
    with pytest.raises(PackageError, match="--nodiscover goes with --copy"):
        from_docker(pulled, name="x", store=store, nodiscover=True)
    made = from_docker(pulled, name="whole", store=store, copy=True, nodiscover=True)
    assert (made.sysroot / "app/tool").is_file()
    result = CliRunner().invoke(cli, ["pkg", "from-docker", "img", "--nodiscover"])
    assert result.exit_code == 2 and "--nodiscover goes with --copy" in result.output


def test_a_layer_corrupt_in_transit_leaves_nothing(store: Store) -> None:
    """A layer is applied while it downloads; when its digest turns out wrong at the end,
    from-docker fails and keeps nothing of it: no package, no layer tar, no index."""
    import gzip

    from ..fake_registry import serve, sha256
    from ..layer_fixtures import tar_bytes

    base = gzip.compress(tar_bytes([F("bin/app", b"app")]), mtime=0)
    big = gzip.compress(tar_bytes([F("data/big", os.urandom(80_000))]), mtime=0)
    diff_ids = [sha256(gzip.decompress(layer)) for layer in (base, big)]
    config = {"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/app"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}  # fmt: skip
    with serve() as fake:
        fake.add_image("test/corrupt", "1", [base, big], config)
        fake.slow[sha256(big)] = 0.002
        fake.corrupt_blobs[sha256(big)] = big[:-1] + bytes([big[-1] ^ 1])
        # The gzip check or the blob's digest, whichever sees it first.
        with pytest.raises((DigestMismatch, LayerError)):
            from_docker(f"127.0.0.1:{fake.port}/test/corrupt:1", "/bin/app", store=store)
    assert _store_entries(store) == []
    assert not store.has_blob(sha256(big))
    # The first layer was whole and checked: its tar is kept for the next try.
    tars = store.root / "layers/sha256"
    assert sorted(p.name for p in tars.iterdir()) == [diff_ids[0][len("sha256:") :]]
    assert not (store.root / "roots").exists() or not list((store.root / "roots").iterdir())

"""Nanos releases: installing from tarballs and folders, downloading, and the offline cache.

Every release here is made by the test from small fixtures (a boot.img built byte by byte, a
copy of an x86-64 program standing in for the kernel and a klib); downloads go to a small HTTP
server on 127.0.0.1. Nothing here touches the network or the user's cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops.arch import Arch
from pyops.cli import cli
from pyops.errors import InvalidInput, ReleaseError
from pyops.nanos.release import (
    NanosRelease,
    download_release,
    find_installed,
    get_release,
    install_release_from,
    installed_releases,
    latest_version,
    version_key,
)
from pyops.oci.net import HttpClient

from ..conftest import tiny_elf

# --- fixtures --------------------------------------------------------------------------------


def make_boot_img(stage2: bytes = b"\xeb\xfe" * 700) -> bytes:
    """A boot.img as Nanos builds it: a boot sector describing the stage2 that follows it."""
    sector = bytearray(512)
    struct.pack_into("<Q", sector, 0x1B2, len(stage2))
    struct.pack_into("<I", sector, 0x1BA, 12)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector) + stage2


@pytest.fixture(scope="session")
def elf_bytes() -> bytes:
    """An x86-64 ELF program, standing in for the kernel and the klibs."""
    data = Path("/bin/true").read_bytes()
    if data[:4] != b"\x7fELF" or struct.unpack_from("<H", data, 18)[0] != 62:
        pytest.skip("/bin/true is not an x86-64 ELF program on this host")
    return data


def release_files(elf: bytes) -> dict[str, bytes]:
    """The files of a small but valid release, by path inside the tarball."""
    return {
        "kernel.img": elf,
        "boot.img": make_boot_img(),
        "bootx64.efi": b"MZ not really a PE file",
        "klibs/strace": elf,
        "klibs/tls": elf,
    }


def make_tarball(
    path: Path, files: dict[str, bytes], extra: Sequence[tarfile.TarInfo] = ()
) -> Path:
    """Write ``files`` (and raw ``extra`` members) into a gzip tarball at ``path``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


def make_folder(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh PYOPS_HOME, so no test sees the user's cache."""
    folder = tmp_path / "pyops-home"
    monkeypatch.setenv("PYOPS_HOME", str(folder))
    monkeypatch.delenv("PYOPS_RELEASE_URL", raising=False)
    return folder


def leftovers(home: Path) -> list[str]:
    """Everything in the releases folder (a failed install must leave nothing)."""
    root = home / "releases"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


# --- installing from a tarball or folder -----------------------------------------------------


def test_install_tarball_then_list(tmp_path: Path, home: Path, elf_bytes: bytes) -> None:
    tarball = make_tarball(tmp_path / "nanos-release-linux-0.1.7.tar.gz", release_files(elf_bytes))
    code, out, err = run("kernel", "install", "--from", str(tarball))
    assert code == 0, err
    assert out.startswith("0.1.7\t")

    code, out, _ = run("kernel", "list")
    assert code == 0
    assert out.split("\t")[0] == "0.1.7"
    code, out, _ = run("kernel", "list", "--json")
    (info,) = json.loads(out)
    assert info["version"] == "0.1.7"
    assert info["klibs"] == ["strace", "tls"]
    assert info["efi"].endswith("bootx64.efi")

    (release,) = installed_releases(home)
    assert release.kernel.read_bytes() == elf_bytes
    assert release.boot_img.read_bytes() == make_boot_img()
    assert release.klib("tls") == release.path / "klibs" / "tls"
    assert leftovers(home) == ["0.1.7"]


def test_install_folder(tmp_path: Path, home: Path, elf_bytes: bytes) -> None:
    folder = make_folder(tmp_path / "unpacked", release_files(elf_bytes))
    code, _, err = run("kernel", "install", "--from", str(folder))
    assert code == 1
    assert "--version" in err  # the name "unpacked" says nothing

    code, out, err = run("kernel", "install", "--from", str(folder), "--version", "0.1.8")
    assert code == 0, err
    code, out, _ = run("kernel", "list")
    assert out.startswith("0.1.8\t")
    assert (folder / "kernel.img").exists()  # the source is copied, not moved


def test_folder_named_after_version(tmp_path: Path, home: Path, elf_bytes: bytes) -> None:
    folder = make_folder(tmp_path / "nanos-release-linux-0.1.9", release_files(elf_bytes))
    assert install_release_from(folder).version == "0.1.9"


def test_version_option_must_agree_with_name(tmp_path: Path, home: Path, elf_bytes: bytes) -> None:
    tarball = make_tarball(tmp_path / "nanos-release-linux-0.1.7.tar.gz", release_files(elf_bytes))
    with pytest.raises(InvalidInput, match="0.1.7"):
        install_release_from(tarball, version="0.2.0")
    plain = make_tarball(tmp_path / "release.tar.gz", release_files(elf_bytes))
    assert install_release_from(plain, version="0.2.0").version == "0.2.0"


def test_old_release_stage3_is_renamed(tmp_path: Path, home: Path, elf_bytes: bytes) -> None:
    files = release_files(elf_bytes)
    files["stage3.img"] = files.pop("kernel.img")
    tarball = make_tarball(tmp_path / "nanos-release-linux-0.1.20.tar.gz", files)
    release = install_release_from(tarball)
    assert release.kernel.name == "kernel.img"
    assert release.kernel.read_bytes() == elf_bytes
    assert not (release.path / "stage3.img").exists()


def test_device_nodes_ignored_and_inner_links_kept(
    tmp_path: Path, home: Path, elf_bytes: bytes
) -> None:
    device = tarfile.TarInfo("klibs/null")
    device.type = tarfile.CHRTYPE
    link = tarfile.TarInfo("klibs/strace-link")
    link.type = tarfile.SYMTYPE
    link.linkname = "strace"
    tarball = make_tarball(
        tmp_path / "nanos-release-linux-0.1.7.tar.gz", release_files(elf_bytes), [device, link]
    )
    release = install_release_from(tarball)
    assert not (release.path / "klibs/null").exists()
    assert (release.path / "klibs/strace-link").is_symlink()


def test_reinstall_replaces(tmp_path: Path, home: Path, elf_bytes: bytes) -> None:
    tarball = make_tarball(tmp_path / "nanos-release-linux-0.1.7.tar.gz", release_files(elf_bytes))
    install_release_from(tarball)
    install_release_from(tarball)
    assert leftovers(home) == ["0.1.7"]


def _bad_tarballs(tmp: Path, elf: bytes) -> dict[str, tuple[Path, str]]:
    name = "nanos-release-linux-0.1.7.tar.gz"
    good = release_files(elf)
    cases: dict[str, tuple[Path, str]] = {}

    def case(key: str, match: str) -> Path:
        folder = tmp / key
        folder.mkdir()
        cases[key] = (folder / name, match)
        return folder / name

    case("not-a-tarball", "not a release tarball").write_bytes(b"hello, this is not a tarball")
    make_tarball(case("missing-kernel", "no kernel.img"), {"boot.img": make_boot_img()})
    make_tarball(case("escaping-member", "outside"), {**good, "../evil": b"x"})
    make_tarball(case("absolute-member", "absolute"), {**good, "/tmp/evil": b"x"})
    link = tarfile.TarInfo("klibs/passwd")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../../etc/passwd"
    make_tarball(case("link-out", "outside"), good, [link])
    make_tarball(case("bad-boot-img", "boot.img"), {**good, "boot.img": b"\0" * 1024})
    make_tarball(
        case("kernel-not-elf", "kernel.img is not a Nanos kernel"),
        {**good, "kernel.img": b"MZ" * 20},
    )
    make_tarball(case("klib-not-elf", "strace"), {**good, "klibs/strace": b"#!/bin/sh\n" * 4})
    whole = make_tarball(tmp / "whole.tar.gz", good).read_bytes()
    case("truncated", "corrupt").write_bytes(whole[: len(whole) // 2])
    return cases


BAD = [
    "not-a-tarball",
    "missing-kernel",
    "escaping-member",
    "absolute-member",
    "link-out",
    "bad-boot-img",
    "kernel-not-elf",
    "klib-not-elf",
    "truncated",
]


@pytest.mark.parametrize("key", BAD)
def test_bad_tarball_leaves_nothing(tmp_path: Path, home: Path, elf_bytes: bytes, key: str) -> None:
    tarball, match = _bad_tarballs(tmp_path, elf_bytes)[key]
    code, out, err = run("kernel", "install", "--from", str(tarball))
    assert code == 1
    assert err.startswith("error: "), err
    assert match in err
    assert "Traceback" not in err
    assert leftovers(home) == []
    assert not (tmp_path / "evil").exists()
    assert installed_releases(home) == []


def test_klib_error_lists_available(tmp_path: Path, home: Path, elf_bytes: bytes) -> None:
    release = install_release_from(
        make_tarball(tmp_path / "nanos-release-linux-0.1.7.tar.gz", release_files(elf_bytes))
    )
    with pytest.raises(ReleaseError, match=r"no klib 'ntp' \(available: strace, tls\)"):
        release.klib("ntp")


def test_list_is_in_version_order_and_rm(tmp_path: Path, home: Path, elf_bytes: bytes) -> None:
    folder = make_folder(tmp_path / "r", release_files(elf_bytes))
    for version in ("0.1.10", "0.1.9", "0.2.0"):
        install_release_from(folder, version=version)
    assert [r.version for r in installed_releases(home)] == ["0.1.9", "0.1.10", "0.2.0"]
    assert sorted(["0.1.10", "abc1234", "0.1.9"], key=version_key) == ["abc1234", "0.1.9", "0.1.10"]
    code, out, _ = run("kernel", "rm", "0.1.10")
    assert code == 0
    assert [r.version for r in installed_releases(home)] == ["0.1.9", "0.2.0"]
    code, _, err = run("kernel", "rm", "0.1.10")
    assert code == 1
    assert "installed: 0.1.9, 0.2.0" in err


# --- arm64 releases --------------------------------------------------------------------------

ARM_KERNEL = tiny_elf(183, b"arm64 kernel")


def arm_release_files(klib: bytes = tiny_elf(183, b"klib")) -> dict[str, bytes]:
    """An arm64 (virt) release as Nanos lays it out: no boot.img, a UEFI loader for arm64."""
    return {
        "kernel.img": ARM_KERNEL,
        "bootaa64.efi": b"MZ not really a PE file",
        "klibs/strace": klib,
    }


def test_arm64_release_is_installed_beside_the_x86_one(
    tmp_path: Path, home: Path, elf_bytes: bytes
) -> None:
    x86 = make_tarball(tmp_path / "nanos-release-linux-0.1.7.tar.gz", release_files(elf_bytes))
    arm = make_tarball(tmp_path / "nanos-release-linux-0.1.7-virt.tar.gz", arm_release_files())
    assert run("kernel", "install", "--from", str(x86))[0] == 0
    code, out, err = run("kernel", "install", "--from", str(arm))
    assert code == 0, err
    assert out.split("\t")[:2] == ["0.1.7", "arm64"]
    assert leftovers(home) == ["0.1.7", "0.1.7-arm"]  # Ops's folder name for it

    releases = installed_releases(home)
    assert [(r.version, r.arch) for r in releases] == [("0.1.7", Arch.AMD64), ("0.1.7", Arch.ARM64)]
    (arm_release,) = installed_releases(home, Arch.ARM64)
    assert arm_release.boot_img is None
    assert arm_release.kernel.read_bytes() == ARM_KERNEL
    assert arm_release.efi is not None and arm_release.efi.name == "bootaa64.efi"
    assert arm_release.label == "0.1.7 (arm64)"
    assert get_release(home=home, download=False, arch=Arch.ARM64) == arm_release
    assert find_installed("0.1.7", home, Arch.ARM64) == arm_release
    assert get_release(home=home, download=False).arch == Arch.AMD64

    code, out, _ = run("kernel", "list")
    assert [line.split("\t")[:2] for line in out.splitlines()] == [
        ["0.1.7", "amd64"],
        ["0.1.7", "arm64"],
    ]
    code, out, _ = run("kernel", "list", "--json")
    assert [(i["arch"], i["boot_img"] is None) for i in json.loads(out)] == [
        ("amd64", False),
        ("arm64", True),
    ]
    code, out, _ = run("kernel", "rm", "--arch", "aarch64", "0.1.7")
    assert code == 0
    assert leftovers(home) == ["0.1.7"]


def test_arm64_release_from_a_folder_is_known_by_its_kernel(tmp_path: Path, home: Path) -> None:
    folder = make_folder(tmp_path / "unpacked", arm_release_files())
    release = install_release_from(folder, version="0.2.0")
    assert (release.arch, release.path.name) == (Arch.ARM64, "0.2.0-arm")


def test_no_arm64_release_says_how_to_get_one(home: Path, tmp_path: Path, elf_bytes: bytes) -> None:
    install_release_from(make_folder(tmp_path / "r", release_files(elf_bytes)), version="0.1.7")
    with pytest.raises(ReleaseError, match="no Nanos release for arm64") as info:
        get_release(home=home, download=False, arch=Arch.ARM64)
    assert info.value.hint and "--arch arm64" in info.value.hint
    assert "nanos-release-linux-VERSION-virt.tar.gz" in info.value.hint
    with pytest.raises(ReleaseError, match="0.1.7 for arm64 is not installed"):
        get_release("0.1.7", home=home, download=False, arch=Arch.ARM64)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ("x86 kernel", "its name says arm64, but kernel.img is an x86_64 kernel"),
        ("x86 klib", "is an x86_64 Nanos klib, not an aarch64 one"),
        ("riscv kernel", "Nanos runs on x86-64 and arm64 only"),
    ],
)
def test_mismatched_arm64_release_is_refused(
    tmp_path: Path, home: Path, elf_bytes: bytes, files: str, message: str
) -> None:
    content = arm_release_files()
    if files == "x86 kernel":
        content["kernel.img"] = elf_bytes
    elif files == "x86 klib":
        content = arm_release_files(klib=elf_bytes)
    else:
        content["kernel.img"] = tiny_elf(243)
    tarball = make_tarball(tmp_path / "nanos-release-linux-0.1.7-virt.tar.gz", content)
    code, _, err = run("kernel", "install", "--from", str(tarball))
    assert code == 1
    assert message in err
    assert "Traceback" not in err
    assert leftovers(home) == []


def test_x86_release_without_boot_img_is_refused(
    tmp_path: Path, home: Path, elf_bytes: bytes
) -> None:
    content = release_files(elf_bytes)
    del content["boot.img"]
    tarball = make_tarball(tmp_path / "nanos-release-linux-0.1.7.tar.gz", content)
    with pytest.raises(ReleaseError, match="boot.img is missing"):
        install_release_from(tarball)
    assert leftovers(home) == []


# --- downloading -----------------------------------------------------------------------------


class ReleaseServer:
    """An HTTP server on 127.0.0.1 serving fixed files and recording every path asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.ranges: list[str | None] = []
        self.cut_once: set[str] = set()
        """Paths whose next download stops half-way (the connection is closed)."""
        self.corrupt_after_cut: dict[str, bytes] = {}
        """Path -> content served on the requests that follow a cut (a changed file)."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.requests.append(self.path)
                server.ranges.append(self.headers.get("Range"))
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                header = self.headers.get("Range")
                if header:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in server.cut_once:
                    server.cut_once.discard(self.path)
                    self.wfile.write(body[start : len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    if self.path in server.corrupt_after_cut:
                        server.files[self.path] = server.corrupt_after_cut[self.path]
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/nanos/release"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, version: str, tarball: bytes, *, md5: str | None = "auto") -> None:
        base = f"/nanos/release/{version}/nanos-release-linux-{version}"
        self.files[f"{base}.tar.gz"] = tarball
        if md5 == "auto":
            md5 = hashlib.md5(tarball).hexdigest()
        if md5 is not None:
            self.files[f"{base}.md5"] = f"{md5}  nanos-release-linux-{version}.tar.gz\n".encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ReleaseServer]:
    s = ReleaseServer()
    yield s
    s.close()


@pytest.fixture
def tarball_bytes(tmp_path: Path, elf_bytes: bytes) -> bytes:
    return make_tarball(tmp_path / "t.tar.gz", release_files(elf_bytes)).read_bytes()


def test_download_latest_then_cached(
    server: ReleaseServer, home: Path, tarball_bytes: bytes
) -> None:
    server.files["/nanos/release/latest.txt"] = b"0.1.30\n"
    server.publish("0.1.30", tarball_bytes)
    release = get_release(home=home, base_url=server.url)
    assert release.version == "0.1.30"
    assert release.path == home / "releases" / "0.1.30"
    assert server.requests == [
        "/nanos/release/latest.txt",
        "/nanos/release/0.1.30/nanos-release-linux-0.1.30.md5",
        "/nanos/release/0.1.30/nanos-release-linux-0.1.30.tar.gz",
    ]
    server.requests.clear()
    # latest.txt is cached for its time to live, and the release is installed: no request.
    assert get_release(home=home, base_url=server.url).version == "0.1.30"
    assert get_release("0.1.30", home=home, base_url=server.url).version == "0.1.30"
    assert server.requests == []
    assert leftovers(home) == ["0.1.30", "latest.json"]


def test_latest_ttl_expiry_and_stale_fallback(server: ReleaseServer, home: Path) -> None:
    server.files["/nanos/release/latest.txt"] = b"0.1.30\n"
    assert latest_version(home=home, base_url=server.url) == "0.1.30"
    server.files["/nanos/release/latest.txt"] = b"0.1.31\n"
    assert latest_version(home=home, base_url=server.url) == "0.1.30"
    assert latest_version(home=home, base_url=server.url, ttl=0) == "0.1.31"
    assert len(server.requests) == 2
    # When the server is gone, an expired answer is better than none.
    url = server.url
    server.close()
    assert latest_version(home=home, base_url=url, ttl=0) == "0.1.31"


def test_download_arm64_release(server: ReleaseServer, home: Path) -> None:
    tarball = make_tarball(home.parent / "t.tar.gz", arm_release_files()).read_bytes()
    server.files["/nanos/release/0.1.30/nanos-release-linux-0.1.30-virt.tar.gz"] = tarball
    release = get_release("0.1.30", home=home, base_url=server.url, arch=Arch.ARM64)
    assert (release.arch, release.path) == (Arch.ARM64, home / "releases" / "0.1.30-arm")
    assert server.requests[-1] == "/nanos/release/0.1.30/nanos-release-linux-0.1.30-virt.tar.gz"
    assert leftovers(home) == ["0.1.30-arm"]


def test_md5_mismatch_refused(server: ReleaseServer, home: Path, tarball_bytes: bytes) -> None:
    server.publish("0.1.30", tarball_bytes, md5="0" * 32)
    with pytest.raises(ReleaseError, match="MD5"):
        download_release("0.1.30", home=home, base_url=server.url)
    assert leftovers(home) == []


def test_missing_md5_is_accepted(server: ReleaseServer, home: Path, tarball_bytes: bytes) -> None:
    server.publish("0.1.30", tarball_bytes, md5=None)
    assert download_release("0.1.30", home=home, base_url=server.url).version == "0.1.30"


def test_unknown_version(server: ReleaseServer, home: Path) -> None:
    with pytest.raises(ReleaseError, match="no Nanos release 9.9.9"):
        get_release("9.9.9", home=home, base_url=server.url)
    assert leftovers(home) == []


def test_offline_uses_cache_without_network(
    server: ReleaseServer, home: Path, tmp_path: Path, elf_bytes: bytes
) -> None:
    install_release_from(
        make_tarball(tmp_path / "nanos-release-linux-0.1.7.tar.gz", release_files(elf_bytes)),
        home=home,
    )
    # The asked-for version is installed: not even latest.txt is fetched.
    assert get_release("0.1.7", home=home, base_url=server.url).version == "0.1.7"
    assert get_release(home=home, download=False).version == "0.1.7"
    assert server.requests == []
    url = server.url
    server.close()  # from now on every request fails
    # No version asked for and latest.txt unreachable: the newest installed release is used.
    assert get_release(home=home, base_url=url).version == "0.1.7"
    waits: list[float] = []
    with pytest.raises(ReleaseError) as caught:
        get_release("0.1.8", home=home, base_url=url, client=HttpClient(sleep=waits.append))
    assert len(waits) == 5  # a connection failure is retried
    assert "cannot be downloaded" in str(caught.value)
    assert caught.value.hint is not None and "pyops kernel install --from" in caught.value.hint


def test_nothing_installed_offline(home: Path) -> None:
    with pytest.raises(ReleaseError) as caught:
        get_release(home=home, download=False)
    assert caught.value.hint is not None and "--from TARBALL" in caught.value.hint


def test_cli_install_downloads(
    server: ReleaseServer, home: Path, tarball_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_RELEASE_URL", server.url)
    server.files["/nanos/release/latest.txt"] = b"0.1.30\n"
    server.publish("0.1.30", tarball_bytes)
    code, out, err = run("kernel", "install")
    assert code == 0, err
    assert out.startswith("0.1.30\t")
    server.requests.clear()
    code, _, err = run("kernel", "install", "0.1.30")
    assert code == 0
    assert "already installed" in err
    assert server.requests == []


def test_release_is_frozen(tmp_path: Path, home: Path, elf_bytes: bytes) -> None:
    folder = make_folder(tmp_path / "nanos-release-linux-0.1.7", release_files(elf_bytes))
    release = install_release_from(folder)
    assert isinstance(release, NanosRelease)
    with pytest.raises(AttributeError):
        release.version = "1.0"  # type: ignore[misc]


def test_release_download_is_verified_and_resumable(
    server: ReleaseServer, home: Path, tarball_bytes: bytes
) -> None:
    server.publish("0.1.30", tarball_bytes)
    path = "/nanos/release/0.1.30/nanos-release-linux-0.1.30.tar.gz"
    server.cut_once.add(path)
    release = download_release("0.1.30", home=home, base_url=server.url)
    assert release.version == "0.1.30"
    # The cut download went on from where it stopped, in the same call.
    tarball_ranges = [r for p, r in zip(server.requests, server.ranges, strict=True) if p == path]
    assert tarball_ranges == [None, f"bytes={len(tarball_bytes) // 2}-"]
    assert leftovers(home) == ["0.1.30"]


def test_release_resume_point_survives_and_a_changed_file_is_refused(
    server: ReleaseServer, home: Path, tarball_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyops.oci.store

    real = pyops.oci.store.resume_download

    def one_try(*args: object, **kwargs: object) -> str:
        kwargs["attempts"] = 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pyops.oci.store, "resume_download", one_try)
    server.publish("0.1.30", tarball_bytes)
    path = "/nanos/release/0.1.30/nanos-release-linux-0.1.30.tar.gz"
    server.cut_once.add(path)
    changed = bytes(reversed(tarball_bytes))
    server.corrupt_after_cut[path] = changed
    with pytest.raises(ReleaseError, match="cannot be downloaded"):
        get_release("0.1.30", home=home, base_url=server.url)
    # The half that arrived is kept as the next try's resume point...
    assert leftovers(home) == [".download-0.1.30.partial"]
    # ... and the next try resumes it, but the file changed meanwhile: the MD5 catches the
    # spliced result, and nothing is left behind.
    with pytest.raises(ReleaseError, match="MD5"):
        download_release("0.1.30", home=home, base_url=server.url)
    assert server.ranges[-1] == f"bytes={len(tarball_bytes) // 2}-"
    assert leftovers(home) == []
    server.publish("0.1.30", changed)  # now published with its MD5: a bad tarball
    with pytest.raises(ReleaseError):
        download_release("0.1.30", home=home, base_url=server.url)
    assert leftovers(home) == []

"""Ops's package repository: an index and packages on a mirror, served here by a real HTTP
server on loopback (and as a ``file://`` folder), fetched, checked and booted."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops.arch import Arch
from pyops.cli import cli
from pyops.errors import PackageError
from pyops.ops.repository import find, get_package, load_index, parse_index, search

from ..conftest import FakeQemu, compile_c, fixture_source, install_test_release
from .test_ops_home import ops_package

HELLO = fixture_source("hello.c")


class Mirror:
    """A folder laid out as Ops's repository, and an HTTP server serving it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[dict[str, str]] = []
        handler = functools.partial(_Quiet, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, package: Path, ns: str, name: str, version: str, arch: str) -> Path:
        """Ops's network layout: <base>/<ns>/<name>/<version>.tar.gz (/arm64.tar.gz)."""
        tail = f"{version}.tar.gz" if arch == "amd64" else f"{version}/arm64.tar.gz"
        tarball = self.root / "packages" / ns / name / tail
        tarball.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball, "w:gz") as tar:
            tar.add(package, arcname=f"{name}_{version}")
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        self.entries.append(
            {"name": name, "namespace": ns, "version": version, "language": "C",
             "description": f"{name} for tests", "sha256": digest, "arch": arch}
        )  # fmt: skip
        (self.root / "manifest.json").write_text(
            json.dumps({"Version": 2, "Packages": self.entries})
        )
        return tarball

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cc: str, aarch64_cc: str
) -> Iterator[Mirror]:
    served = Mirror(tmp_path / "mirror")
    (tmp_path / "x86").mkdir()
    (tmp_path / "arm").mkdir()
    hello = compile_c(cc, HELLO, tmp_path / "x86" / "hello")
    hello_arm = compile_c(aarch64_cc, HELLO, tmp_path / "arm" / "hello", "-static")
    served.publish(
        ops_package(tmp_path / "p1", hello, "hello_1.0"), "test", "hello", "1.0", "amd64"
    )
    served.publish(
        ops_package(tmp_path / "p2", hello_arm, "hello_1.0"), "test", "hello", "1.0", "arm64"
    )
    monkeypatch.setenv("OPS_PACKAGE_MANIFEST_URL", f"{served.url}/manifest.json")
    monkeypatch.setenv("OPS_PACKAGE_BASE_URL", f"{served.url}/packages")
    yield served
    served.stop()


def test_list_search_get_and_load_from_a_mirror(
    home: Path, mirror: Mirror, synthetic_release: Path, fake_qemu: FakeQemu
) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["pkg", "list"])
    assert result.exit_code == 0, result.output
    rows = [line.split()[:3] for line in result.stdout.splitlines()]
    assert rows == [
        ["PACKAGE", "VERSION", "ARCH"],
        ["test/hello", "1.0", "amd64"],
        ["test/hello", "1.0", "arm64"],
    ]
    assert (home / "packages" / "manifest.json").is_file()  # kept where Ops keeps it
    result = runner.invoke(cli, ["pkg", "list", "-s", "^test/h", "--arch", "arm64"])
    assert [line.split()[:3] for line in result.stdout.splitlines()][1:] == [
        ["test/hello", "1.0", "arm64"]
    ]
    result = runner.invoke(cli, ["pkg", "search", "hel+o"])
    assert result.exit_code == 0 and "test/hello" in result.stdout
    result = runner.invoke(cli, ["pkg", "describe", "test/hello:1.0", "--arch", "arm64"])
    assert "url: " + f"{mirror.url}/packages/test/hello/1.0/arm64.tar.gz" in result.stdout

    for arch in ("amd64", "arm64"):
        result = runner.invoke(cli, ["pkg", "get", "test/hello:1.0", "--arch", arch])
        assert result.exit_code == 0, result.output
        folder = home / "packages" / arch / "test" / "hello_1.0"
        assert result.stdout.strip() == str(folder)
        assert (folder / "package.manifest").is_file() and (folder / "hello").is_file()
    assert not list((home / "packages").glob(".download-*"))

    install_test_release(synthetic_release, home)
    fake_qemu.answer(status=7)
    result = runner.invoke(cli, ["pkg", "load", "test/hello:1.0", "--arch", "amd64"])
    assert result.exit_code == 3, result.output

    # With the mirror gone: the kept index and the fetched packages still serve.
    mirror.stop()
    result = runner.invoke(cli, ["pkg", "list"])
    assert result.exit_code == 0 and "test/hello" in result.stdout
    result = runner.invoke(cli, ["pkg", "load", "test/hello:1.0", "--arch", "amd64"])
    assert result.exit_code == 3, result.output


def test_a_tampered_tarball_is_refused_and_nothing_is_installed(
    home: Path, mirror: Mirror, tmp_path: Path
) -> None:
    tarball = mirror.root / "packages" / "test" / "hello" / "1.0.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    with pytest.raises(PackageError, match="SHA-256 is not the index's"):
        get_package("test/hello:1.0", arch=Arch.AMD64)
    assert not (home / "packages" / "amd64").exists()
    assert not list((home / "packages").glob(".download-*"))
    result = CliRunner().invoke(cli, ["pkg", "get", "test/hello:1.0", "--arch", "amd64"])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_a_file_mirror(
    home: Path, tmp_path: Path, cc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ops's file:// layout: <base>/<ns>/<name>_<version>.tar.gz."""
    hello = compile_c(cc, HELLO, tmp_path / "hello")
    package = ops_package(tmp_path / "p", hello, "hello_2.0")
    base = tmp_path / "files"
    (base / "test").mkdir(parents=True)
    tarball = base / "test" / "hello_2.0.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(package, arcname="hello_2.0")
    index = tmp_path / "index.json"
    entry = {"name": "hello", "namespace": "test", "version": "2.0", "arch": "amd64",
             "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest()}  # fmt: skip
    index.write_text(json.dumps({"Version": 2, "Packages": [entry]}))
    monkeypatch.setenv("OPS_PACKAGE_MANIFEST_URL", f"file://{index}")
    monkeypatch.setenv("OPS_PACKAGE_BASE_URL", f"file://{base}")
    got = get_package("test/hello", arch=Arch.AMD64)  # no version: the newest
    assert got.path == home / "packages" / "amd64" / "test" / "hello_2.0"
    shutil.rmtree(base)
    assert get_package("test/hello:2.0", arch=Arch.AMD64).path == got.path  # here already


def test_hostile_indexes_are_refused() -> None:
    for data, message in (
        (b"[]", "no Packages list"),
        (b"{not json", "not JSON"),
        (b'{"Version": 3, "Packages": []}', "version 3"),
        (b'{"Packages": [{"name": "../x", "namespace": "a", "version": "1", "sha256": "'
         + b"0" * 64 + b'"}]}', "invalid name"),
        (b'{"Packages": [{"name": "x", "namespace": "a", "version": "1"}]}', "sha256"),
    ):  # fmt: skip
        with pytest.raises(PackageError, match=message):
            parse_index(data, "the index")
    entries = parse_index(
        b'{"Version": 2, "Packages": [{"name": "x", "namespace": "a", "version": "1", '
        b'"sha256": "' + b"a" * 64 + b'", "arch": "riscv64"}]}',
        "the index",
    )
    assert entries == []  # no Nanos for it: left out
    with pytest.raises(PackageError, match="no a/x:1 for amd64"):
        find(entries, "a/x:1", Arch.AMD64)
    assert search(entries, "(") == []  # not a regular expression: plain text


def test_no_index_and_no_copy_is_a_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_PACKAGE_MANIFEST_URL", "http://127.0.0.1:9/manifest.json")
    with pytest.raises(PackageError, match="cannot be reached") as info:
        load_index()
    assert info.value.hint and "OPS_PACKAGE_MANIFEST_URL" in info.value.hint

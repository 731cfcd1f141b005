"""Images built from host programs, and booting them (boot tests skip without a release)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops.build import BuildConfig, build_image, check_image_name, image_name, parse_env
from pyops.cli import cli
from pyops.disk import open_image
from pyops.errors import InvalidInput
from pyops.ldd import resolve
from pyops.release import NanosRelease
from pyops.tfs import read_file_bytes
from pyops.tree import File, ImageData, Symlink

from .conftest import compile_c, fixture_source, install_test_release

HELLO = fixture_source("hello.c")

SERVER = fixture_source("server.c")


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory, cc: str) -> Path:
    return compile_c(cc, HELLO, tmp_path_factory.mktemp("hello") / "hello")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty pyops home for this test, with the installed release linked in if any."""
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def release(home: Path, nanos_release: Path) -> NanosRelease:
    return install_test_release(nanos_release, home)


def test_image_names() -> None:
    assert image_name("./main") == "main"
    assert image_name("/usr/bin/node.exe") == "node"
    assert check_image_name("web_1.2") == "web_1.2"
    with pytest.raises(InvalidInput):
        check_image_name("../evil")


def test_env_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HOST", "yes")
    assert parse_env(["A=1", "B=x=y", "FROM_HOST", "E="]) == {
        "A": "1",
        "B": "x=y",
        "FROM_HOST": "yes",
        "E": "",
    }
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(InvalidInput, match="not set"):
        parse_env(["NOT_SET_ANYWHERE"])


def test_image_holds_the_closure_and_standard_files(
    tmp_path: Path, hello: Path, release: NanosRelease
) -> None:
    config = BuildConfig(program=str(hello), args=("a",), env={"FOO": "bar"})
    built = build_image(config, release, tmp_path / "hello.img")
    assert built.written
    disk = open_image(built.path)
    tree = disk.tree()
    resolution = resolve(hello)
    for path in resolution.paths():
        assert tree.exists(path), path
        node = tree.get(path)
        if os.path.islink(path):
            assert isinstance(node, Symlink) and node.target == os.readlink(path)
        else:
            assert isinstance(node, File) and isinstance(node.source, ImageData)
            assert read_file_bytes(node.source) == Path(path).read_bytes()
    for path in ("/etc/resolv.conf", "/etc/passwd", "/proc/sys/kernel/hostname"):
        assert tree.exists(path)
    manifest = disk.manifest
    assert manifest.program == str(hello)
    assert manifest.arguments == (str(hello), "a")
    assert manifest.environment["FOO"] == "bar"
    assert manifest.environment["NANOS_VERSION"] == release.version
    assert manifest.extra["debug_exit"] == "t"


def test_unchanged_build_is_reused_and_a_change_rebuilds(
    tmp_path: Path, hello: Path, release: NanosRelease
) -> None:
    out = tmp_path / "hello.img"
    assert build_image(BuildConfig(program=str(hello)), release, out).written
    mtime = out.stat().st_mtime_ns
    assert not build_image(BuildConfig(program=str(hello)), release, out).written
    assert out.stat().st_mtime_ns == mtime
    assert build_image(BuildConfig(program=str(hello), args=("x",)), release, out).written


# --- booting ---------------------------------------------------------------------------------


def pyops(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyops", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


@pytest.mark.boot
def test_run_passes_arguments_environment_and_exit_code(
    home: Path, release: NanosRelease, hello: Path
) -> None:
    result = pyops("run", str(hello), "-a", "3", "-a", "two words", "-e", "FOO=from flag")
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("arg", "env"))]
    assert lines == [
        f"arg 0: {hello}",
        "arg 1: 3",
        "arg 2: two words",
        "env FOO=from flag",
    ]


@pytest.mark.boot
def test_second_run_of_an_unchanged_program_reuses_the_image(
    home: Path, release: NanosRelease, hello: Path
) -> None:
    assert pyops("run", str(hello)).returncode == 0
    image = home / "images" / "hello.img"
    key = image.with_name("hello.img.key").read_text()
    stamp = image.with_name("hello.img.key").stat().st_mtime_ns
    result = pyops("run", str(hello), "-v")
    assert result.returncode == 0
    assert image.with_name("hello.img.key").stat().st_mtime_ns == stamp
    assert image.with_name("hello.img.key").read_text() == key
    assert f"file={image}" in result.stderr  # -v prints the qemu command line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.boot
def test_tcp_server_in_the_guest_answers_through_a_forwarded_port(
    tmp_path: Path, home: Path, release: NanosRelease, cc: str
) -> None:
    server = compile_c(cc, SERVER, tmp_path / "server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyops", "run", str(server), "-p", f"{port}:8080"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        answer = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not answer:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"ping")
                    s.settimeout(10)
                    answer = s.recv(100)
            except OSError:
                time.sleep(0.5)
        assert answer == b"nanos got: ping"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_cli_build_prints_the_image_path(home: Path, release: NanosRelease, hello: Path) -> None:
    result = CliRunner().invoke(cli, ["build", str(hello), "-i", "mine"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(home / "images" / "mine.img")
    assert (home / "images" / "mine.img").is_file()


def test_cli_errors_are_one_line(home: Path, release: NanosRelease, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["build", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["run", "/bin/true", "-p", "nonsense"])
    assert result.exit_code == 1 and "invalid port" in result.output


@pytest.mark.boot
def test_run_takes_arguments_environment_and_files_from_config_json(
    tmp_path: Path, home: Path, release: NanosRelease, hello: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "Program": str(hello),
                "Args": ["5", "from config"],
                "Env": {"FOO": "from config.json"},
                "RunConfig": {"Memory": "512M"},
            }
        )
    )
    result = pyops("run", "-c", str(config))
    assert result.returncode == 5, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("arg", "env"))]
    assert lines == [
        f"arg 0: {hello}",
        "arg 1: 5",
        "arg 2: from config",
        "env FOO=from config.json",
    ]
    # a flag given on the command line wins over the file
    result = pyops("run", "-c", str(config), "-e", "FOO=flag")
    assert "env FOO=flag" in result.stdout

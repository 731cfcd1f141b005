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

from pyops.cli import cli
from pyops.elf.ldd import resolve
from pyops.errors import InvalidInput
from pyops.nanos.disk import open_image
from pyops.nanos.release import NanosRelease
from pyops.nanos.tfs import read_file_bytes
from pyops.nanos.tree import File, ImageData, Symlink
from pyops.ops.build import (
    HOSTS,
    PASSWD,
    RESOLV_CONF,
    BuildConfig,
    build_image,
    check_image_name,
    image_name,
    parse_env,
)

from ..conftest import (
    SYNTHETIC_KLIBS,
    FakeQemu,
    compile_c,
    fixture_source,
    install_test_release,
    make_release_folder,
)

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
    """A real Nanos release: for the tests that boot."""
    return install_test_release(nanos_release, home)


@pytest.fixture
def fake_release(home: Path, synthetic_release: Path) -> NanosRelease:
    """A synthetic release: real images that boot nothing, for the tests that do not boot."""
    return install_test_release(synthetic_release, home)


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
    tmp_path: Path, hello: Path, fake_release: NanosRelease
) -> None:
    config = BuildConfig(program=str(hello), args=("a",), env={"FOO": "bar"})
    built = build_image(config, fake_release, tmp_path / "hello.img")
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
    assert manifest.environment["NANOS_VERSION"] == fake_release.version
    assert manifest.extra["debug_exit"] == "t"


def test_unchanged_build_is_reused_and_a_change_rebuilds(
    tmp_path: Path, hello: Path, fake_release: NanosRelease
) -> None:
    out = tmp_path / "hello.img"
    assert build_image(BuildConfig(program=str(hello)), fake_release, out).written
    mtime = out.stat().st_mtime_ns
    assert not build_image(BuildConfig(program=str(hello)), fake_release, out).written
    assert out.stat().st_mtime_ns == mtime
    assert build_image(BuildConfig(program=str(hello), args=("x",)), fake_release, out).written


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
    # -v prints the qemu command line: it boots a fresh copy, not the built image
    assert f"file={home / 'runs' / 'hello.img'}" in result.stderr


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


def test_cli_build_prints_the_image_path(
    home: Path, fake_release: NanosRelease, hello: Path
) -> None:
    result = CliRunner().invoke(cli, ["build", str(hello), "-i", "mine"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(home / "images" / "mine.img")
    assert (home / "images" / "mine.img").is_file()


def test_cli_errors_are_one_line(home: Path, fake_release: NanosRelease, tmp_path: Path) -> None:
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


# --- without a real release: the synthetic one, and a stand-in qemu -------------------------


def image_file(disk_path: Path, path: str) -> bytes:
    node = open_image(disk_path).tree().get(path)
    assert isinstance(node, File) and isinstance(node.source, ImageData), path
    return read_file_bytes(node.source)


def test_host_lookup_files_never_reach_a_host_programs_image(
    tmp_path: Path, hello: Path, fake_release: NanosRelease
) -> None:
    built = build_image(BuildConfig(program=str(hello)), fake_release, tmp_path / "h.img")
    tree = open_image(built.path).tree()
    assert image_file(built.path, "/etc/resolv.conf") == RESOLV_CONF
    assert image_file(built.path, "/etc/hosts") == HOSTS
    assert b"127.0.0.1\tlocalhost" in HOSTS and b"::1\tlocalhost" in HOSTS
    assert image_file(built.path, "/etc/passwd") == PASSWD
    assert image_file(built.path, "/proc/sys/kernel/hostname") == b"uniboot\n"
    for host_only in (
        "/etc/nsswitch.conf",
        "/etc/group",
        "/etc/services",
        "/etc/protocols",
        "/etc/host.conf",
        "/etc/gai.conf",
    ):
        assert not tree.exists(host_only), host_only


def test_name_servers_from_config_json_make_resolv_conf(
    tmp_path: Path,
    home: Path,
    fake_release: NanosRelease,
    hello: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # Ops reads Files from the working directory
    config = tmp_path / "config.json"
    extra = tmp_path / "motd"
    extra.write_text("from Files\n")
    config.write_text(json.dumps({"NameServers": ["1.1.1.1", "9.9.9.9"], "Files": ["motd"]}))
    result = CliRunner().invoke(
        cli, ["build", str(hello), "-c", str(config)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    disk = Path(result.output.strip())
    assert image_file(disk, "/etc/resolv.conf") == b"nameserver 1.1.1.1\nnameserver 9.9.9.9\n"
    assert image_file(disk, "/motd") == b"from Files\n"
    config.write_text(json.dumps({"NameServers": ["1.1.1.1\nsearch evil"]}))
    result = CliRunner().invoke(cli, ["build", str(hello), "-c", str(config)])
    assert result.exit_code == 1 and "invalid name server" in result.output


def test_klibs_go_to_the_boot_filesystem(
    tmp_path: Path, home: Path, fake_release: NanosRelease, hello: Path
) -> None:
    result = CliRunner().invoke(cli, ["build", str(hello), "--klib", "strace"])
    assert result.exit_code == 0, result.output
    disk = open_image(Path(result.output.strip()))
    boot = disk.boot_tree()
    assert boot is not None and boot.exists("/klib/strace") and not boot.exists("/klib/tls")
    assert disk.manifest.klibs == "bootfs"
    result = CliRunner().invoke(cli, ["build", str(hello), "--klib", "nosuch"])
    assert result.exit_code == 1
    assert all(name in result.output for name in SYNTHETIC_KLIBS)


def test_run_builds_then_hands_qemu_a_fresh_copy(
    home: Path, fake_release: NanosRelease, hello: Path, fake_qemu: FakeQemu
) -> None:
    fake_qemu.answer(status=7, write="written by the first run")  # the guest exits 3
    result = CliRunner().invoke(cli, ["run", str(hello), "-m", "512M", "-p", "8080:80"])
    assert result.exit_code == 3, result.output
    (argv,) = fake_qemu.runs()
    copy = home / "runs" / "hello.img"
    assert f"file={copy},format=raw,if=none,id=hd0" in argv
    assert argv[argv.index("-m") + 1] == "512M"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert any("hostfwd=tcp::8080-:80" in a for a in argv)
    pristine = home / "images" / "hello.img"
    assert b"written by the first run" not in pristine.read_bytes()
    assert b"written by the first run" in copy.read_bytes()

    # The second run reuses the built image and starts from it, not from the first run's
    # writes, which stay in the copy until then. (The same -p: the ports forwarded are in
    # the image, as the guest's OPS_PORT.)
    fake_qemu.answer(status=1)
    stamp = pristine.stat().st_mtime_ns
    result = CliRunner().invoke(cli, ["run", str(hello), "-p", "8080:80"])
    assert result.exit_code == 0, result.output
    assert pristine.stat().st_mtime_ns == stamp
    import hashlib

    first, second = fake_qemu.drives()
    assert second == (str(copy), hashlib.sha256(pristine.read_bytes()).hexdigest())
    assert first[1] == second[1]


@pytest.fixture(scope="module")
def hello_arm64(tmp_path_factory: pytest.TempPathFactory, aarch64_cc: str) -> Path:
    return compile_c(aarch64_cc, HELLO, tmp_path_factory.mktemp("arm") / "hello-arm", "-static")


def test_an_arm64_program_boots_an_arm64_guest(
    home: Path,
    fake_release: NanosRelease,
    tmp_path: Path,
    hello_arm64: Path,
    fake_qemu: FakeQemu,
) -> None:
    """The program's ELF machine picks the release, the disk and the qemu line."""
    arm = install_test_release(make_release_folder(tmp_path / "0.1.99-virt", 183), home)
    assert (arm.version, arm.arch) == ("0.1.99", "arm64")
    fake_qemu.answer(status=3)  # semihosting: qemu's status is the program's code itself
    result = CliRunner().invoke(cli, ["run", str(hello_arm64), "-v"])
    assert result.exit_code == 3, result.output
    (argv,) = fake_qemu.runs()
    assert os.path.basename(argv[0]) == "qemu-system-aarch64"
    kernel = Path(argv[argv.index("-kernel") + 1])
    assert kernel == home / "runs" / "hello-arm.img.kernel"
    assert kernel.read_bytes() == arm.kernel.read_bytes()  # copied out of the disk
    assert "-semihosting" in argv and "isa-debug-exit" not in argv
    assert "qemu-system-aarch64" in result.stderr  # -v shows the command line
    image = open_image(home / "images" / "hello-arm.img")
    assert image.manifest.environment["NANOS_ARCH"] == "arm64"
    assert image.manifest.environment["NANOS_VERSION"] == "0.1.99"
    listed = CliRunner().invoke(cli, ["image", "list"])
    assert listed.stdout.split()[:2] == ["hello-arm", "arm64"]
    result = CliRunner().invoke(cli, ["image", "rm", "hello-arm"])
    assert result.exit_code == 0 and not kernel.exists()


def test_an_arm64_program_needs_an_arm64_release(
    home: Path, fake_release: NanosRelease, tmp_path: Path, hello_arm64: Path
) -> None:
    result = CliRunner().invoke(cli, ["build", str(hello_arm64)])
    assert result.exit_code == 1
    assert "no Nanos release for arm64 is installed" in result.stderr
    assert "pyops kernel install --arch arm64" in result.stderr
    assert "Traceback" not in result.output
    assert not list(home.glob("images/*"))
    # A config.json kernel of the other architecture is refused before anything is written.
    install_test_release(make_release_folder(tmp_path / "0.1.99-virt", 183), home)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"Kernel": str(fake_release.kernel)}))
    result = CliRunner().invoke(cli, ["build", str(hello_arm64), "-c", str(config)])
    assert result.exit_code == 1
    assert "is for arm64 (aarch64), but the Nanos kernel" in result.stderr
    assert not list(home.glob("images/*.img"))


def test_a_kernel_changed_in_place_rebuilds(
    tmp_path: Path, hello: Path, fake_release: NanosRelease
) -> None:
    out = tmp_path / "hello.img"
    assert build_image(BuildConfig(program=str(hello)), fake_release, out).written
    data = bytearray(fake_release.kernel.read_bytes())
    data[-1] ^= 0xFF  # same size, same path, same version: another kernel
    fake_release.kernel.write_bytes(bytes(data))
    assert build_image(BuildConfig(program=str(hello)), fake_release, out).written


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-m", "0"], "invalid memory size"),
        (["-m", "1G,maxmem=2G"], "invalid memory size"),
        (["--smp", "0"], "invalid number of CPUs"),
        (["--size", "9" * 40], "invalid --size"),
        (["--size", "99999999999999999999"], "too large"),
    ],
)
def test_bad_vm_settings_are_refused_before_qemu(
    home: Path,
    fake_release: NanosRelease,
    hello: Path,
    fake_qemu: FakeQemu,
    argv: list[str],
    message: str,
) -> None:
    result = CliRunner().invoke(cli, ["run", str(hello), *argv])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert fake_qemu.runs() == []


@pytest.mark.parametrize("value", ["a\0b", "bad \udcff byte"])
def test_environment_values_nanos_cannot_take_are_refused(
    tmp_path: Path, hello: Path, fake_release: NanosRelease, value: str
) -> None:
    with pytest.raises(InvalidInput, match="environment variable FOO"):
        build_image(
            BuildConfig(program=str(hello), env={"FOO": value}), fake_release, tmp_path / "x.img"
        )
    assert list(tmp_path.glob("*.img")) == []


def test_deeply_nested_config_json_is_an_error(
    tmp_path: Path, home: Path, fake_release: NanosRelease, hello: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"ManifestPassthrough": {"x": ' + "[" * 50_000 + "]" * 50_000 + "}}")
    result = CliRunner().invoke(cli, ["build", str(hello), "-c", str(config)])
    assert result.exit_code == 1 and "PYOPS_LIMIT_JSON_DEPTH" in result.output


def test_a_killed_builds_temporary_is_swept_by_the_next(
    home: Path, fake_release: NanosRelease, hello: Path
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    images = home / "images"
    images.mkdir(parents=True)
    orphan = images / f".hello.img.pyops-{int(gone.stdout)}-0123abcd.tmp"
    orphan.write_bytes(b"\0" * 4096)
    result = CliRunner().invoke(cli, ["build", str(hello)])
    assert result.exit_code == 0, result.output
    assert not orphan.exists()
    assert sorted(p.name for p in images.iterdir()) == ["hello.img", "hello.img.key"]


def test_image_commands_take_a_name_and_the_last_run(
    home: Path, fake_release: NanosRelease, hello: Path, fake_qemu: FakeQemu
) -> None:
    assert CliRunner().invoke(cli, ["build", str(hello)]).exit_code == 0
    result = CliRunner().invoke(cli, ["image", "cat", "hello", "/etc/hosts"])
    assert result.exit_code == 0 and result.output.encode() == HOSTS
    result = CliRunner().invoke(cli, ["image", "ls", "--last-run", "hello"])
    assert result.exit_code == 1 and "has no last run" in result.output
    fake_qemu.answer(status=1)
    assert CliRunner().invoke(cli, ["run", str(hello)]).exit_code == 0
    result = CliRunner().invoke(cli, ["image", "ls", "--last-run", "hello", "/etc"])
    assert result.exit_code == 0 and "hosts" in result.output
    result = CliRunner().invoke(cli, ["image", "ls", "nosuchimage"])
    assert result.exit_code == 1 and "image list" in result.output
    assert CliRunner().invoke(cli, ["image", "rm", "hello"]).exit_code == 0
    assert not (home / "runs" / "hello.img").exists()


@pytest.mark.boot
def test_each_run_starts_from_the_built_image_and_the_last_runs_writes_stay_readable(
    tmp_path: Path, home: Path, release: NanosRelease, cc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = compile_c(cc, fixture_source("probe.c"), tmp_path / "probe", "-static")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "keep").write_text("")
    (tmp_path / "config.json").write_text(json.dumps({"Dirs": ["tmp"]}))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = pyops("run", str(probe), "-c", "config.json", "-a", "x", "-a", "0")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "probe readback: written in the guest" in result.stdout
        # The built image never holds what a guest wrote; the last run's copy does.
        listing = pyops("image", "ls", "probe", "/tmp")
        assert listing.returncode == 0 and "new.txt" not in listing.stdout
        written = pyops("image", "cat", "--last-run", "probe", "/tmp/new.txt")
        assert written.stdout == "written in the guest\n", written.stderr


@pytest.mark.parametrize("signum", [15, 1])  # SIGTERM, SIGHUP
def test_sigterm_or_sighup_of_pyops_stops_qemu_too(
    home: Path, fake_release: NanosRelease, hello: Path, fake_qemu: FakeQemu, signum: int
) -> None:
    import signal

    fake_qemu.hang()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyops", "run", str(hello)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 60
        while not fake_qemu.pids() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        (qemu_pid,) = fake_qemu.pids()
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == -signum
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # reaped by now, or very soon: pyops waited for it
            os.kill(qemu_pid, 0)
            time.sleep(0.05)
    assert signal.Signals(signum).name in ("SIGTERM", "SIGHUP")


def test_verbose_build_prints_each_step_with_its_time(
    home: Path, fake_release: NanosRelease, hello: Path
) -> None:
    result = CliRunner().invoke(cli, ["build", str(hello), "-v"])
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if line.startswith("pyops: ")]
    assert [line.split(":")[1].strip() for line in steps] == [
        "resolve the program's libraries",
        "write the image",
    ]
    assert all(line.endswith(" s") for line in steps)


def test_ops_debugging_flags_of_run(
    home: Path, fake_release: NanosRelease, hello: Path, fake_qemu: FakeQemu, tmp_path: Path
) -> None:
    """Ops's run flags (cmd/flags_run_local_instance.go, MergeToConfig) with Ops's meaning."""
    runner = CliRunner()
    result = runner.invoke(cli, ["run", str(hello), "--trace", "--syscall-summary", "-d"])
    assert result.exit_code == 0, result.output
    (argv,) = fake_qemu.runs()
    assert argv[argv.index("-gdb") + 1] == "tcp::1234" and "-S" in argv
    image = open_image(home / "images" / "hello.img")
    extra = image.manifest.extra
    for key in ("trace", "debugsyscalls", "fault", "futex_trace", "syscall_summary", "noaslr"):
        assert extra[key] == "t", key
    boot = image.boot_tree()
    assert boot is not None and boot.exists("/klib/strace")  # the kernel's tracer

    result = runner.invoke(cli, ["run", str(hello), "-g", "5555", "--accel=false", "-f"])
    assert result.exit_code == 0, result.output
    argv = fake_qemu.runs()[-1]
    assert argv[argv.index("-gdb") + 1] == "tcp::5555" and "-S" not in argv
    assert argv[argv.index("-accel") + 1] == "tcg"
    result = runner.invoke(cli, ["run", str(hello), "-g", "8080", "-p", "8080"])
    assert result.exit_code == 1
    assert "Port 8080 is forwarded and cannot be used as gdb port" in result.stderr


def test_nightly_release_with_ops_short_flag(
    home: Path, synthetic_release: Path, hello: Path, fake_qemu: FakeQemu, tmp_path: Path
) -> None:
    nightly = tmp_path / "nanos-nightly-linux.tar.gz"
    import tarfile

    with tarfile.open(nightly, "w:gz") as tar:
        tar.add(synthetic_release, arcname=".")
    result = CliRunner().invoke(cli, ["kernel", "install", "--from", str(nightly)])
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[:2] == ["nightly", "amd64"]
    assert (home / "releases" / "nightly" / "kernel.img").is_file()
    result = CliRunner().invoke(cli, ["run", str(hello), "-n"])
    assert result.exit_code == 0, result.output
    image = open_image(home / "images" / "hello.img")
    assert image.manifest.environment["NANOS_VERSION"] == "nightly"
    result = CliRunner().invoke(cli, ["run", str(hello), "-n", "--nanos-version", "0.1.5"])
    assert result.exit_code == 2 and "do not go together" in result.output


def test_what_nanos_manifests_need_has_flags(
    home: Path, fake_release: NanosRelease, hello: Path, tmp_path: Path
) -> None:
    """cwd, an exact environment and klibs outside the release (in a boot-FS subfolder, as
    Nanos's in-kernel tests have them) have flags, and a config.json form."""
    from ..conftest import tiny_elf

    klibs = tmp_path / "klibs"
    (klibs / "test").mkdir(parents=True)
    (klibs / "test" / "lock").write_bytes(tiny_elf(body=b"a test klib"))
    argv = ["build", str(hello), "--cwd", "/srv", "--exact-env", "-e", "A=1"]
    argv += ["--klib-dir", str(klibs), "--klib", "test/lock", "--klib", "ntp"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    image = open_image(result.stdout.strip())
    assert image.manifest.cwd == "/srv" and image.tree().exists("/srv")
    assert image.manifest.environment == {"A": "1"}
    boot = image.boot_tree()
    assert boot is not None and boot.exists("/klib/test/lock") and boot.exists("/klib/ntp")

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"ManifestPassthrough": {"cwd": "/opt", "environment": {"ONLY": "this"}}})
    )
    result = CliRunner().invoke(cli, ["build", str(hello), "-c", str(config), "-i", "p"])
    assert result.exit_code == 0, result.output
    manifest = open_image(result.stdout.strip()).manifest
    assert manifest.cwd == "/opt" and manifest.environment == {"ONLY": "this"}  # as Ops sets it
    for bad, message in ((["--cwd", "srv"], "not an absolute path"), (["--klib", "../x"], "klib")):
        result = CliRunner().invoke(cli, ["build", str(hello), *bad])
        assert result.exit_code == 1 and message in result.stderr, result.output

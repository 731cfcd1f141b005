"""Instances: images running in the background, found again by any later pyops process.

The boot test runs a real Nanos kernel (it skips without one, see conftest.py). The others
check the state each instance's files and qemu's QMP socket give, with a small QMP server
in this process standing in for qemu: a socket that answers, one that is gone, a process
that is gone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.errors import InvalidInput
from pyops.ops.instances import (
    InstanceError,
    create_instance,
    get_instance,
    list_instances,
    stop_instance,
)
from pyops.ops.instances import _socket_path as socket_path
from pyops.vm.qemu import PortForward, VmConfig
from pyops.vm.supervise import write_json

from ..conftest import FakeQemu, compile_c, fixture_source, install_test_release

SERVER = fixture_source("forever_server.c")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def pyops(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A pyops command in a process of its own, as a user types it."""
    env = {**os.environ, "PYOPS_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "pyops", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(port: int, text: bytes, timeout: float = 120) -> bytes:
    """Send ``text`` to the guest's server, trying until it listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(text)
                reply = conn.recv(200)
                if reply:
                    return reply
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answers on port {port}")
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.boot
def test_a_server_instance_outlives_its_command(
    home: Path, nanos_release: Path, tmp_path: Path, cc: str
) -> None:
    install_test_release(nanos_release, home)
    server = compile_c(cc, SERVER, tmp_path / "fserver")
    built = pyops(home, "build", str(server))
    assert built.returncode == 0, built.stderr
    port = free_port()
    made = pyops(
        home, "instance", "create", "fserver", "-i", "web", "-p", f"{port}:8080", "-m", "512M"
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "web"
    # The creating command has exited; the guest answers on its forwarded port.
    assert ask(port, b"ping") == b"nanos got: ping"

    listed = pyops(home, "instance", "list", "--json")
    (entry,) = json.loads(listed.stdout)
    assert (entry["name"], entry["state"], entry["memory"]) == ("web", "running", "512M")
    assert entry["ports"] == [f"{port}:8080/tcp"]
    pid = entry["pid"]
    assert isinstance(pid, int) and _alive(pid)
    assert "qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    table = pyops(home, "instance", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "STATE", "PID"]
    assert table[1].split()[:3] == ["web", "running", str(pid)]

    logs = pyops(home, "instance", "logs", "web")
    assert "listening" in logs.stdout

    # A second instance may not take the same host port: refused before qemu starts.
    clash = pyops(home, "instance", "create", "fserver", "-i", "web2", "-p", f"{port}:8080")
    assert clash.returncode == 1
    assert f"host port {port} is forwarded to instance web already" in clash.stderr
    assert "Traceback" not in clash.stderr
    assert sorted(p.name for p in (home / "instances").iterdir()) == ["web"]

    stopped = pyops(home, "instance", "stop", "web")
    assert stopped.returncode == 0, stopped.stderr
    assert "web stopped (exit code 0)" in stopped.stdout  # the program's SIGTERM handler
    assert not _alive(pid)
    assert "stopping on SIGTERM" in pyops(home, "instance", "logs", "web").stdout
    (entry,) = json.loads(pyops(home, "instance", "list", "--json").stdout)
    assert (entry["state"], entry["exit_code"], entry["pid"]) == ("stopped", 0, None)

    # Started again from its own disk, then deleted while it runs: nothing is left.
    started = pyops(home, "instance", "start", "web")
    assert started.returncode == 0, started.stderr
    assert ask(port, b"again") == b"nanos got: again"
    (entry,) = json.loads(pyops(home, "instance", "list", "--json").stdout)
    second_pid = entry["pid"]
    deleted = pyops(home, "instance", "delete", "web")
    assert deleted.returncode == 0, deleted.stderr
    assert not _alive(second_pid)
    assert list((home / "instances").iterdir()) == []
    assert not os.path.lexists(socket_path(home / "instances" / "web"))


# --- the state, from the files and the QMP socket --------------------------------------------


class FakeQmp:
    """A QMP server on a Unix socket, answering as qemu does (greeting, capabilities,
    query-status, system_powerdown)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.commands: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
                f.flush()
                for line in f:
                    command = json.loads(line)["execute"]
                    self.commands.append(command)
                    answer = (
                        {"status": "running", "running": True} if command == "query-status" else {}
                    )
                    f.write(json.dumps({"return": answer}).encode() + b"\n")
                    f.flush()

    def close(self) -> None:
        # shutdown wakes the accept() in progress, which close alone would not
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def fake_instance(home: Path, name: str, pid: int, *, port: int | None = None) -> Path:
    folder = home / "instances" / name
    folder.mkdir(parents=True)
    ports = [{"host": port, "guest": 80, "protocol": "tcp"}] if port else []
    write_json(folder / "instance.json", {"image": "/x/web.img", "ports": ports, "memory": "1G"})
    write_json(folder / "launch.json", {"run": 1, "argv": ["qemu"], "arch": "amd64"})
    write_json(folder / "qemu.pid", {"run": 1, "pid": pid, "started": time.time() - 5})
    return folder


@pytest.fixture
def running(home: Path) -> Iterator[tuple[Path, FakeQmp]]:
    """An instance whose qemu is this process, answering on its QMP socket."""
    folder = fake_instance(home, "web", os.getpid(), port=free_port())
    qmp = FakeQmp(socket_path(folder))
    yield folder, qmp
    qmp.close()


def test_an_answering_socket_of_a_live_process_is_running(running: tuple[Path, FakeQmp]) -> None:
    folder, qmp = running
    (found,) = list_instances()
    assert (found.name, found.state, found.pid) == ("web", "running", os.getpid())
    assert found.uptime is not None and 4 < found.uptime < 60
    assert "query-status" in qmp.commands


def test_a_socket_that_does_not_answer_is_reported_as_such(
    running: tuple[Path, FakeQmp],
) -> None:
    folder, qmp = running
    qmp.close()  # the socket file stays, nothing listens: a stale socket
    found = get_instance("web")
    assert found.state == "unreachable"
    assert "does not answer" in found.error


def test_a_dead_qemu_is_not_running(home: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fake_instance(home, "gone", dead.pid)
    found = get_instance("gone")
    assert found.state == "crashed"
    assert f"pid {dead.pid}" in found.error
    # stop has nothing to stop
    assert stop_instance("gone").state == "crashed"


def test_the_exit_code_of_this_run_and_not_of_an_earlier_one(home: Path) -> None:
    folder = fake_instance(home, "done", os.getpid())
    write_json(folder / "exit.json", {"run": 0, "exit_code": 9})  # an earlier run's
    assert get_instance("done").state == "unreachable"  # no socket, and the pid is alive
    write_json(folder / "exit.json", {"run": 1, "exit_code": 3, "status": 7})
    found = get_instance("done")
    assert (found.state, found.exit_code) == ("stopped", 3)
    result = CliRunner().invoke(cli, ["instance", "list"])
    assert result.stdout.splitlines()[1].split()[-1] == "3"


def test_a_port_forwarded_to_a_running_instance_is_refused_before_qemu(
    running: tuple[Path, FakeQmp], fake_qemu: FakeQemu, tmp_path: Path
) -> None:
    folder, _ = running
    port = get_instance("web").ports[0].host
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    with pytest.raises(InstanceError, match=f"host port {port} is forwarded to instance web"):
        create_instance(disk, VmConfig(ports=(PortForward(port, 80),)), name="other")
    assert fake_qemu.runs() == []
    assert sorted(p.name for p in folder.parent.iterdir()) == ["web"]


def test_an_instance_that_cannot_start_leaves_nothing(
    home: Path, synthetic_release: Path, fake_qemu: FakeQemu, tmp_path: Path, cc: str
) -> None:
    install_test_release(synthetic_release, home)
    hello = compile_c(cc, fixture_source("hello.c"), tmp_path / "hello")
    assert CliRunner().invoke(cli, ["build", str(hello)]).exit_code == 0
    fake_qemu.answer(status=1, stderr="qemu-system-x86_64: cannot set up guest memory 'pc.ram'\n")
    result = CliRunner().invoke(cli, ["instance", "create", "hello", "-i", "h1"])
    assert result.exit_code == 1
    assert "instance h1 did not start: qemu-system-x86_64: cannot set up guest memory" in (
        result.stderr
    )
    assert list((home / "instances").iterdir()) == []


def test_unknown_names_and_bad_input(home: Path, running: tuple[Path, FakeQmp]) -> None:
    runner = CliRunner()
    for command in (["stop", "nope"], ["logs", "nope"], ["start", "nope"], ["delete", "nope"]):
        result = runner.invoke(cli, ["instance", *command])
        assert result.exit_code == 1, command
        assert "there is no instance named 'nope' (instances: web)" in result.stderr
        assert "Traceback" not in result.output
    result = runner.invoke(cli, ["instance", "create", "no-such-image"])
    assert result.exit_code == 1 and "there is no image 'no-such-image'" in result.stderr
    result = runner.invoke(cli, ["instance", "start", "web"])
    assert result.exit_code == 1 and "instance web is running" in result.stderr
    result = runner.invoke(cli, ["instance", "create"])
    assert result.exit_code == 2 and "IMAGE or --package" in result.stderr
    with pytest.raises(InvalidInput, match="invalid instance name"):
        get_instance("../web")


def test_a_long_home_gets_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120) / "instances" / "web"
    path = socket_path(deep)
    assert len(os.fsencode(path)) <= 100
    assert path == socket_path(deep)  # the same every time
    assert socket_path(tmp_path / "i" / "web") == os.fspath(tmp_path / "i" / "web" / "qmp.sock")


# --- volumes ---------------------------------------------------------------------------------

VOLUME_RW = fixture_source("volume_rw.c")


def wait_stopped(home: Path, name: str, timeout: float = 240) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        listed = json.loads(pyops(home, "instance", "list", "--json").stdout)
        (entry,) = [e for e in listed if e["name"] == name]
        if entry["state"] == "stopped" or time.monotonic() > deadline:
            return dict(entry)
        time.sleep(0.5)


@pytest.mark.boot
def test_a_volume_keeps_what_a_guest_wrote_for_the_next(
    home: Path, nanos_release: Path, tmp_path: Path, cc: str
) -> None:
    install_test_release(nanos_release, home)
    program = compile_c(cc, VOLUME_RW, tmp_path / "volume_rw")
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host")
    made = pyops(home, "volume", "create", "shared", "-d", str(data), "-s", "8M")
    assert made.returncode == 0, made.stderr
    # The image names the volume (by UUID) at /data; creating the instance attaches it.
    built = pyops(home, "build", str(program), "-a", "first", "--mounts", "shared:/data")
    assert built.returncode == 0, built.stderr
    assert pyops(home, "instance", "create", "volume_rw", "-i", "one").returncode == 0
    first = wait_stopped(home, "one")
    assert first["exit_code"] == 0, pyops(home, "instance", "logs", "one").stdout
    logs = pyops(home, "instance", "logs", "one").stdout
    assert "/data/in.txt: from the host" in logs
    assert "/data/out.txt: missing" in logs
    cat = pyops(home, "volume", "cat", "shared", "/out.txt")
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == "written by first"

    # A second instance of an image that names no volume, given it with --mounts: the
    # instance's disk mounts it, the image stays as built.
    assert pyops(home, "build", str(program), "-a", "second", "-i", "plain").returncode == 0
    second = pyops(home, "instance", "create", "plain", "-i", "two", "--mounts", "shared:/data")
    assert second.returncode == 0, second.stderr
    assert wait_stopped(home, "two")["exit_code"] == 0
    assert "/data/out.txt: written by first" in pyops(home, "instance", "logs", "two").stdout
    assert pyops(home, "volume", "cat", "shared", "/out.txt").stdout == "written by second"
    manifest = pyops(home, "image", "manifest", "plain", "--json")
    assert "mounts" not in json.loads(manifest.stdout)["manifest"]


@pytest.mark.boot
def test_a_volume_in_use_is_refused_and_can_be_hot_plugged(
    home: Path, nanos_release: Path, tmp_path: Path, cc: str
) -> None:
    install_test_release(nanos_release, home)
    server = compile_c(cc, SERVER, tmp_path / "fserver")
    assert pyops(home, "volume", "create", "vol", "-s", "4M").returncode == 0
    assert pyops(home, "build", str(server), "--mounts", "vol:/data").returncode == 0
    port = free_port()
    made = pyops(home, "instance", "create", "fserver", "-i", "web", "-p", f"{port}:8080")
    assert made.returncode == 0, made.stderr
    assert ask(port, b"up") == b"nanos got: up"  # booted

    # One machine at a time: another instance, a foreground run, a deletion are refused.
    again = pyops(home, "instance", "create", "fserver", "-i", "web2", "-p", f"{free_port()}:8080")
    assert again.returncode == 1
    assert "volume vol is attached to instance web, which runs" in again.stderr
    run = pyops(home, "run", str(server), "--mounts", "vol:/data")
    assert run.returncode == 1 and "attached to instance web" in run.stderr
    gone = pyops(home, "volume", "delete", "vol")
    assert gone.returncode == 1 and "attached to instance web" in gone.stderr
    assert sorted(p.name for p in (home / "instances").iterdir()) == ["web"]

    # Hot-unplug and plug again while it runs; the guest keeps answering.
    detached = pyops(home, "instance", "detach", "web", "vol")
    assert detached.returncode == 0, detached.stderr
    assert json.loads(pyops(home, "instance", "list", "--json").stdout)[0]["volumes"] == []
    attached = pyops(home, "instance", "attach", "web", "vol")
    assert attached.returncode == 0, attached.stderr
    (entry,) = json.loads(pyops(home, "instance", "list", "--json").stdout)
    assert [Path(v).name.split(":")[0] for v in entry["volumes"]] == ["vol"]
    assert ask(port, b"still") == b"nanos got: still"
    twice = pyops(home, "instance", "attach", "web", "vol")
    assert twice.returncode == 1 and "attached to instance web already" in twice.stderr
    assert pyops(home, "instance", "delete", "web").returncode == 0
    assert pyops(home, "volume", "delete", "vol").returncode == 0


def test_logs_follow_until_the_instance_stops(running: tuple[Path, FakeQmp]) -> None:
    from pyops.ops.instances import follow_console

    folder, _ = running
    (folder / "console.log").write_bytes(b"first line\n")

    def later() -> None:
        time.sleep(0.5)
        with open(folder / "console.log", "ab") as log:
            log.write(b"last line\n")
        write_json(folder / "exit.json", {"run": 1, "exit_code": 0})

    writer = threading.Thread(target=later)
    writer.start()
    seen = b"".join(follow_console("web", follow=True))
    writer.join()
    assert seen == b"first line\nlast line\n"
    assert b"".join(follow_console("web")) == seen  # without -f: what is there

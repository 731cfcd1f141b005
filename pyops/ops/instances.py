"""Instances: virtual machines left running in the background, as Ops's local instances.

Each instance has a folder ``PYOPS_HOME/instances/NAME/``::

    instance.json   what it was made from and how it runs (image, ports, memory...)
    disk.img        its own copy of the image: the built image stays as built
    launch.json     the qemu command line of its current run, with the run's number
    qemu.pid        qemu's process id for that run     } written by its supervisor,
    exit.json       how that run ended (the exit code) } pyops.vm.supervise
    console.log     the guest's console, every run appended
    qemu.err        qemu's own messages of the last run

qemu runs under a small supervisor process in a session of its own, so it outlives the
command that started it and the terminal. Any later pyops process finds the instance again
from these files. Its state is never taken on trust: it runs only if qemu's QMP socket
answers, and from the process recorded (where the system tells a socket's peer); otherwise
it is ``stopped`` (with its exit code), or ``crashed`` (qemu is gone without a word), or
``unreachable`` (the process is there but its socket does not answer).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyops import atomic
from pyops import home as _home
from pyops.arch import Arch
from pyops.errors import InvalidInput, PyopsError, QemuError
from pyops.nanos.manifest import Manifest
from pyops.vm.qemu import Accel, Host, PortForward, VmConfig
from pyops.vm.supervise import CONSOLE, EXIT, LAUNCH, QEMU_ERR, QEMU_PID, write_json

log = logging.getLogger(__name__)

STATE = "instance.json"
DISK = "disk.img"
START_TIMEOUT = 30.0
"""Seconds ``create``/``start`` wait for qemu's QMP socket before giving up."""
STOP_TIMEOUT = 30.0
"""Seconds ``stop`` waits after the power button before it kills qemu."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_SOCKET_PATH_MAX = 100  # sockaddr_un holds 104 (macOS) to 108 (Linux) bytes


class InstanceError(PyopsError):
    """An instance that does not exist, or cannot do what was asked."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance as its files describe it, with its state checked just now."""

    name: str
    path: Path
    image: str
    arch: Arch
    ports: tuple[PortForward, ...]
    memory: str
    cpus: int | None
    volumes: tuple[str, ...] = ()
    state: str = "stopped"
    """``running``, ``starting``, ``stopped``, ``crashed`` or ``unreachable``."""
    pid: int | None = None
    started: float | None = None
    exit_code: int | None = None
    error: str = ""
    """Why a stopped instance has no exit code (qemu failed, it was killed...)."""
    created: float = 0.0
    run: int = 0
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def uptime(self) -> float | None:
        """Seconds since qemu started, while it runs."""
        return time.time() - self.started if self.running and self.started else None

    @property
    def console(self) -> Path:
        return self.path / CONSOLE

    @property
    def qmp_socket(self) -> str:
        return _socket_path(self.path)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (``pyops instance list --json``)."""
        return {
            "name": self.name,
            "image": self.image,
            "arch": str(self.arch),
            "state": self.state,
            "pid": self.pid,
            "ports": [f"{p.host}:{p.guest}/{p.protocol}" for p in self.ports],
            "memory": self.memory,
            "cpus": self.cpus,
            "volumes": list(self.volumes),
            "uptime": self.uptime,
            "exit_code": self.exit_code,
            "error": self.error or None,
            "path": os.fspath(self.path),
        }


def instances_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Where instances live: ``PYOPS_HOME/instances``."""
    return _home.instances_dir(home)


def check_instance_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid instance name {name!r}",
            hint="use letters, digits, '.', '_', '+' and '-', starting with a letter or digit",
        )
    return name


# --- reading -------------------------------------------------------------------------------


def list_instances(home: str | os.PathLike[str] | None = None) -> list[Instance]:
    """Every instance, by name, each with its state checked now."""
    folder = instances_dir(home)
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not (entry / STATE).is_file():
            continue
        try:
            found.append(_load(entry))
        except PyopsError as exc:
            log.warning("skipping %s: %s", entry, exc)
    return found


def get_instance(name: str, home: str | os.PathLike[str] | None = None) -> Instance:
    """The instance ``name``; :class:`InstanceError` (naming those there are) if none."""
    folder = instances_dir(home) / check_instance_name(name)
    if not (folder / STATE).is_file():
        known = ", ".join(i.name for i in list_instances(home)) or "none"
        raise InstanceError(
            f"there is no instance named {name!r} (instances: {known})",
            hint="pyops instance list shows them; pyops instance create IMAGE makes one",
        )
    return _load(folder)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InstanceError(f"{path} is unreadable ({exc})") from None
    if not isinstance(value, dict):
        raise InstanceError(f"{path} is not a JSON object")
    return value


def _load(folder: Path) -> Instance:
    state = _read_json(folder / STATE)
    if state is None:
        raise InstanceError(f"{folder} has no {STATE}")
    try:
        ports = tuple(
            PortForward(int(p["host"]), int(p["guest"]), str(p["protocol"]))
            for p in state.get("ports", [])
        )
        base = Instance(
            name=folder.name,
            path=folder,
            image=str(state["image"]),
            arch=Arch(state.get("arch", "amd64")),
            ports=ports,
            memory=str(state.get("memory", "2G")),
            cpus=int(state["cpus"]) if state.get("cpus") else None,
            volumes=tuple(str(v) for v in state.get("volumes", [])),
            created=float(state.get("created", 0.0)),
            details=state,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InstanceError(f"{folder / STATE} is not an instance's state ({exc})") from None
    return _with_state(base)


def _with_state(base: Instance) -> Instance:
    """``base`` with what its run files and qemu say now."""
    from dataclasses import replace

    folder = base.path
    launch = _read_json(folder / LAUNCH)
    if launch is None:
        return replace(base, state="stopped")
    run = int(launch.get("run", 0))
    ended = _read_json(folder / EXIT)
    if ended is not None and ended.get("run") == run:
        code = ended.get("exit_code")
        return replace(
            base,
            state="stopped",
            run=run,
            exit_code=int(code) if isinstance(code, int) else None,
            error=str(ended.get("error", "")),
        )
    started = _read_json(folder / QEMU_PID)
    if started is None or started.get("run") != run:
        supervisor = launch.get("supervisor")
        if isinstance(supervisor, int) and _alive(supervisor):
            return replace(base, state="starting", run=run)
        return replace(base, state="crashed", run=run, error="qemu never started")
    pid = int(started["pid"])
    when = float(started.get("started", 0.0))
    if not _alive(pid):
        return replace(
            base, state="crashed", run=run, error=f"qemu (pid {pid}) is gone without an exit"
        )
    from pyops.vm.qmp import Qmp

    try:
        with Qmp(_socket_path(folder), timeout=2.0) as qmp:
            peer = qmp.peer_pid()
            status = qmp.execute("query-status")
    except (OSError, PyopsError) as exc:
        return replace(
            base,
            state="unreachable",
            run=run,
            pid=pid,
            error=f"pid {pid} is alive but its QMP socket does not answer ({exc})",
        )
    if peer is not None and peer != pid:
        return replace(
            base,
            state="unreachable",
            run=run,
            error=f"the QMP socket belongs to pid {peer}, not to this instance's qemu ({pid})",
        )
    details = {**base.details, "status": status}
    return replace(base, state="running", run=run, pid=pid, started=when, details=details)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (an exited child not yet reaped by its parent) is not running.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _socket_path(folder: Path) -> str:
    """The QMP socket of the instance in ``folder``: inside it when the path fits in a
    socket address, else in a short per-user folder of the temporary directory."""
    path = os.fspath(folder / "qmp.sock")
    if len(os.fsencode(path)) <= _SOCKET_PATH_MAX:
        return path
    import hashlib
    import tempfile

    digest = hashlib.sha256(os.fsencode(folder.absolute())).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"pyops-{os.getuid()}"
    short.mkdir(mode=0o700, exist_ok=True)
    return os.fspath(short / f"{digest}.qmp")


# --- making and running ----------------------------------------------------------------------


def default_instance_name(image: str) -> str:
    """Ops's default: the image name and the time (``myimage-1733110000``)."""
    base = re.sub(r"[^A-Za-z0-9._+-]", "-", Path(image).name.removesuffix(".img")) or "instance"
    return check_instance_name(f"{base[:80]}-{int(time.time())}")


def create_instance(
    image: str | os.PathLike[str],
    config: VmConfig,
    *,
    name: str | None = None,
    home: str | os.PathLike[str] | None = None,
    host: Host | None = None,
    timeout: float = START_TIMEOUT,
    manifest: Manifest | None = None,
    directories: Sequence[str] = (),
) -> Instance:
    """Start the disk ``image`` in the background as instance ``name`` and return it once
    qemu answers. The instance boots its own copy of the image (with ``manifest`` as its
    root configuration and ``directories`` added, when given). Nothing is left behind if it
    cannot start (a port or a volume taken, qemu missing, qemu failing)."""
    from pyops.nanos.disk import boot_kernel

    source = Path(image)
    if not source.is_file():
        raise InstanceError(f"{source}: no such disk image", hint="pyops image list shows them")
    name = check_instance_name(name) if name else default_instance_name(source.name)
    root = instances_dir(home)
    folder = root / name
    if os.path.lexists(folder):
        raise InstanceError(
            f"instance {name} exists already",
            hint=f"pick another name with -i, or pyops instance delete {name}",
        )
    _check_ports(config.ports, home, name)
    _check_volumes(config.volumes, home, name)
    arch, _ = boot_kernel(source)
    root.mkdir(parents=True, exist_ok=True)
    atomic.sweep(root)
    tmp = atomic.temp_path(folder)
    tmp.mkdir()
    try:
        if manifest is not None:
            from pyops.nanos.disk import rewrite_disk

            rewrite_disk(source, tmp / DISK, manifest, directories=directories)
        else:
            from pyops.ops.images import copy_sparse

            size = source.stat().st_size
            with open(source, "rb") as src, open(tmp / DISK, "xb") as out:
                copy_sparse(src.fileno(), out.fileno(), size)
        write_json(
            tmp / STATE,
            {
                "image": os.fspath(source.absolute()),
                "arch": str(arch),
                "ports": [
                    {"host": p.host, "guest": p.guest, "protocol": p.protocol} for p in config.ports
                ],
                "memory": config.memory,
                "cpus": config.cpus,
                "accel": str(config.accel),
                "volumes": list(config.volumes),
                "created": time.time(),
            },
        )
        os.rename(tmp, folder)
    except BaseException:
        atomic.remove(tmp)
        raise
    try:
        return _launch(_load(folder), config, host, timeout)
    except BaseException:
        _discard(folder)
        raise


def start_instance(
    name: str,
    *,
    home: str | os.PathLike[str] | None = None,
    host: Host | None = None,
    timeout: float = START_TIMEOUT,
) -> Instance:
    """Start the stopped instance ``name`` again, from its own disk as it was left."""
    instance = get_instance(name, home)
    if instance.state in ("running", "starting", "unreachable"):
        raise InstanceError(
            f"instance {name} is {instance.state}"
            + (f" (pid {instance.pid})" if instance.pid else ""),
            hint=f"pyops instance stop {name} first",
        )
    _check_ports(instance.ports, home, name)
    _check_volumes(instance.volumes, home, name)
    config = VmConfig(
        memory=instance.memory,
        cpus=instance.cpus,
        accel=Accel(instance.details.get("accel", "auto")),
        ports=instance.ports,
        volumes=instance.volumes,
    )
    return _launch(instance, config, host, timeout)


def _launch(instance: Instance, config: VmConfig, host: Host | None, timeout: float) -> Instance:
    from pyops.vm.qemu import check_ports_free, find_qemu, guest_of, qemu_command

    folder = instance.path
    disk = folder / DISK
    guest = guest_of(disk, folder)
    sock = _socket_path(folder)
    if os.path.lexists(sock):
        os.unlink(sock)  # a socket left by a run that is over
    argv = qemu_command(disk, config, host or Host.detect(), guest=guest, qmp=sock)
    argv[0] = find_qemu(argv[0])
    check_ports_free(config.ports)
    run = instance.run + 1
    for stale in (QEMU_PID, EXIT, QEMU_ERR):
        (folder / stale).unlink(missing_ok=True)
    launch: dict[str, Any] = {"run": run, "argv": argv, "arch": str(guest.arch)}
    write_json(folder / LAUNCH, launch)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "pyops.vm.supervise", os.fspath(folder)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives this command, its terminal and Ctrl-C there
        close_fds=True,
    )
    write_json(folder / LAUNCH, {**launch, "supervisor": supervisor.pid})
    deadline = time.monotonic() + timeout
    while True:
        current = _load(folder)
        if current.state == "running":
            return current
        if current.state in ("stopped", "crashed"):
            err = (
                (folder / QEMU_ERR).read_text(errors="replace").strip()
                if (folder / QEMU_ERR).exists()
                else ""
            )
            supervisor.wait()
            raise QemuError(
                f"instance {instance.name} did not start: "
                + (err.splitlines()[-1] if err else current.error or "qemu stopped at once"),
                hint=f"the command was: {' '.join(argv)}",
            )
        if time.monotonic() > deadline:
            _kill(current)
            raise QemuError(f"instance {instance.name} did not answer within {timeout:g} s")
        time.sleep(0.05)


def stop_instance(
    name: str, *, home: str | os.PathLike[str] | None = None, timeout: float = STOP_TIMEOUT
) -> Instance:
    """Press the instance's power button (ACPI, through QMP: the program gets SIGTERM and
    the kernel shuts down); kill qemu if it has not stopped after ``timeout`` seconds."""
    from pyops.vm.qmp import Qmp

    instance = get_instance(name, home)
    if instance.state in ("stopped", "crashed"):
        return instance
    if instance.state == "running":
        try:
            with Qmp(instance.qmp_socket) as qmp:
                qmp.execute("system_powerdown")
        except (OSError, PyopsError) as exc:
            log.info("%s: the power button could not be pressed (%s)", name, exc)
        if _wait_stopped(instance.path, timeout):
            return _load(instance.path)
    _kill(_load(instance.path))
    _wait_stopped(instance.path, 10.0)
    return _load(instance.path)


def _wait_stopped(folder: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _load(folder).state in ("stopped", "crashed"):
            return True
        time.sleep(0.1)
    return False


def _kill(instance: Instance) -> None:
    """End qemu by signal (the supervisor records it), if it is this instance's."""
    started = _read_json(instance.path / QEMU_PID)
    if started is None or started.get("run") != instance.run:
        return
    pid = int(started["pid"])
    for signum, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _alive(pid):
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def attach_volume(
    name: str, volume: str, *, home: str | os.PathLike[str] | None = None
) -> Instance:
    """Hot-plug ``volume`` (a name or UUID) into the running instance ``name``, as Ops does
    (QMP ``blockdev-add`` and ``device_add`` of a SCSI disk). Nanos mounts a volume it is
    given where its root configuration's ``mounts`` says (by UUID), also after boot; one
    it does not name is attached but not mounted, which the returned instance's
    ``details["unmounted"]`` says."""
    from pyops.ops.volumes import find_volume
    from pyops.vm.qemu import volume_blockdev_args, volume_node
    from pyops.vm.qmp import Qmp

    instance = _running(name, home, "attach a volume to")
    found = find_volume(volume, home)
    path = os.fspath(found.path)
    if any(os.path.realpath(v) == os.path.realpath(path) for v in instance.volumes):
        raise InstanceError(f"volume {found.name} is attached to instance {name} already")
    _check_volumes([path], home, name)
    node = volume_node(path)
    with Qmp(instance.qmp_socket) as qmp:
        qmp.execute("blockdev-add", volume_blockdev_args(path))
        try:
            qmp.execute(
                "device_add",
                {"driver": "scsi-hd", "bus": "scsi0.0", "drive": node, "id": f"dev-{node}"},
            )
        except PyopsError:
            qmp.execute("blockdev-del", {"node-name": node})
            raise
    _update_state(instance, volumes=[*instance.volumes, path])
    return _load(instance.path)


def detach_volume(
    name: str, volume: str, *, home: str | os.PathLike[str] | None = None
) -> Instance:
    """Hot-unplug ``volume`` from the running instance ``name`` (QMP ``device_del``, then
    ``blockdev-del`` once qemu has let go of it; Nanos unmounts a disk that goes away)."""
    from pyops.ops.volumes import find_volume
    from pyops.vm.qemu import volume_node
    from pyops.vm.qmp import Qmp, QmpError

    instance = _running(name, home, "detach a volume from")
    found = find_volume(volume, home)
    real = os.path.realpath(found.path)
    attached = [v for v in instance.volumes if os.path.realpath(v) == real]
    if not attached:
        raise InstanceError(
            f"volume {found.name} is not attached to instance {name}",
            hint=f"attached: {', '.join(Path(v).name for v in instance.volumes) or 'none'}",
        )
    node = volume_node(found.path)
    with Qmp(instance.qmp_socket) as qmp:
        qmp.execute("device_del", {"id": f"dev-{node}"})
        deadline = time.monotonic() + 10
        while True:
            try:
                qmp.execute("blockdev-del", {"node-name": node})
                break
            except QmpError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # the device goes once the guest's driver is done with it
    _update_state(instance, volumes=[v for v in instance.volumes if v not in attached])
    return _load(instance.path)


def _running(name: str, home: str | os.PathLike[str] | None, what: str) -> Instance:
    instance = get_instance(name, home)
    if instance.state != "running":
        raise InstanceError(
            f"cannot {what} instance {name}: it is {instance.state}",
            hint=f"pyops instance start {name}, or give the volume with --mounts",
        )
    if instance.arch != Arch.AMD64:
        raise InstanceError(
            f"cannot {what} instance {name}: hot-plugging is for x86-64 instances (the arm64 "
            "machine pyops boots has no slot for a disk added later)",
            hint=f"stop it and start it with --mounts: pyops instance delete {name}, then "
            "pyops instance create IMAGE --mounts VOLUME:/path",
        )
    return instance


def _update_state(instance: Instance, **changes: Any) -> None:
    state = _read_json(instance.path / STATE) or {}
    write_json(instance.path / STATE, {**state, **changes})


def delete_instance(name: str, *, home: str | os.PathLike[str] | None = None) -> Path:
    """Stop the instance (killing it if need be) and remove everything it had."""
    instance = get_instance(name, home)
    if instance.state not in ("stopped", "crashed"):
        _kill(instance)
        _wait_stopped(instance.path, 10.0)
    _discard(instance.path)
    return instance.path


def _discard(folder: Path) -> None:
    sock = _socket_path(folder)
    if not sock.startswith(os.fspath(folder)) and os.path.lexists(sock):
        os.unlink(sock)
    doomed = atomic.temp_path(folder)
    os.rename(folder, doomed)
    atomic.remove(doomed)


def follow_console(
    name: str, *, home: str | os.PathLike[str] | None = None, follow: bool = False
) -> Iterator[bytes]:
    """The instance's console so far; with ``follow``, then what it writes, until it stops."""
    instance = get_instance(name, home)
    with open(instance.console, "rb") if instance.console.exists() else open(os.devnull, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            if not follow or _load(instance.path).state in ("stopped", "crashed"):
                rest = f.read()
                if rest:
                    yield rest
                return
            time.sleep(0.2)


# --- claims on ports and volumes ------------------------------------------------------------


def _others(home: str | os.PathLike[str] | None, name: str | None) -> Iterator[Instance]:
    for other in list_instances(home):
        if other.name != name and other.state in ("running", "starting", "unreachable"):
            yield other


def _check_ports(
    ports: Sequence[PortForward], home: str | os.PathLike[str] | None, name: str
) -> None:
    wanted = {(p.host, p.protocol) for p in ports}
    for other in _others(home, name):
        for p in other.ports:
            if (p.host, p.protocol) in wanted:
                raise InstanceError(
                    f"host port {p.host} is forwarded to instance {other.name} already",
                    hint=f"forward another port (-p OTHER:{p.guest}), or pyops instance stop "
                    f"{other.name}",
                )


def check_volumes_free(volumes: Sequence[str], home: str | os.PathLike[str] | None = None) -> None:
    """Refuse volumes attached to a running instance: a volume has one user at a time."""
    _check_volumes(volumes, home, None)


def _check_volumes(
    volumes: Sequence[str], home: str | os.PathLike[str] | None, name: str | None
) -> None:
    wanted = {os.path.realpath(v) for v in volumes}
    for other in _others(home, name):
        for v in other.volumes:
            if os.path.realpath(v) in wanted:
                raise InstanceError(
                    f"volume {Path(v).name.split(':')[0]} is attached to instance {other.name}, "
                    "which runs",
                    hint=f"a volume is used by one machine at a time: pyops instance stop "
                    f"{other.name} first",
                )

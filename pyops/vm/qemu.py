"""Booting a Nanos disk with qemu: the command line, the accelerator, the run.

The guest's architecture is its kernel's (the boot filesystem's ``/kernel``, see
:func:`guest_of`).

- x86-64 (``qemu-system-x86_64``): the command line follows Ops's (ops-reference.md section
  6.3): a q35 machine, the disk on virtio-scsi, ``isa-debug-exit`` for the exit code.
- arm64 (``qemu-system-aarch64``): the command line of Nanos's own ``platform/virt``
  Makefile: a ``virt`` machine with GICv2 and no high memory, qemu loading the kernel itself
  (``-kernel``: the disk has no boot loader), the disk on virtio-blk, ``-semihosting`` for the
  exit code.

Both get user networking with the forwarded ports. Unlike Ops the line is built as a list
(paths with spaces work) and the accelerator is chosen for the pair of host and guest: KVM
for a guest of the Linux host's own architecture where ``/dev/kvm`` is usable, HVF for one
of the Mac's own (arm64 on Apple Silicon, x86-64 on Intel Macs), TCG otherwise. Ops turns
acceleration off whenever ``--arch`` is given, and always emulates arm64 guests on Linux.

The exit code: with the root key ``debug_exit`` the kernel ends by handing the program's
status to qemu (nanos ``src/kernel/init.c``). On x86-64 it writes it to the isa-debug-exit
port (``platform/pc/service.c``: ``QEMU_HALT``), which makes qemu exit with
``status * 2 + 1``. On arm64 it makes the semihosting call ``SYS_EXIT`` with
``ADP_Stopped_ApplicationExit`` (``src/aarch64/crt0.S``: ``angel_shutdown``), and qemu exits
with the status itself. Where the call is not available (HVF on Apple M1 and M2), the kernel
says so on the console and powers off through PSCI: the code is then lost, and
:class:`ExitCodeLost` says so instead of a made-up 0.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyops import arch
from pyops.arch import Arch
from pyops.errors import ConfigError, QemuError

log = logging.getLogger(__name__)

QEMU_X86_64 = "qemu-system-x86_64"
QEMU_PREFIXES = ("/opt/homebrew/bin", "/usr/local/bin", "/opt/local/bin")
"""Where Homebrew (Apple Silicon, then Intel Macs) and MacPorts install qemu; looked in after
``PATH``, which often lacks them (shells started by GUI apps, launchd)."""

LOST_EXIT_CODE = "QEMU exit code will not reflect program exit code"
"""What an arm64 kernel prints when it cannot hand the exit code to qemu (interrupt.c)."""


class ExitCodeLost(QemuError):
    """The guest stopped, but the way its exit code reaches qemu is not available here."""


@dataclass(frozen=True, slots=True)
class Guest:
    """What the disk itself decides about the virtual machine: the architecture, and for
    arm64 the kernel file qemu loads."""

    arch: Arch = Arch.AMD64
    kernel: str | None = None

    def __post_init__(self) -> None:
        if not self.arch.nanos:
            raise ConfigError(f"Nanos does not run on {self.arch} guests")
        if self.arch == Arch.ARM64 and self.kernel is None:
            raise ConfigError("an arm64 guest needs its kernel file (qemu loads it)")


class Accel(enum.StrEnum):
    """Which hypervisor runs the guest."""

    AUTO = "auto"
    KVM = "kvm"
    HVF = "hvf"
    TCG = "tcg"


@dataclass(frozen=True, slots=True)
class Host:
    """The facts about the host that shape the qemu command line."""

    system: str  # platform.system(): "Linux", "Darwin", ...
    machine: str  # an Arch (any spelling given is normalised), or the raw name if unknown
    kvm: bool  # /dev/kvm usable and the CPU has vmx/svm
    hvf: bool  # macOS Hypervisor.framework available

    def __post_init__(self) -> None:
        object.__setattr__(self, "machine", normalise_machine(self.machine))

    @classmethod
    def detect(cls) -> Host:
        """Look at this machine."""
        system = platform.system()
        machine = platform.machine()
        return cls(system, machine, _kvm_usable(system, machine), _hvf_usable(system))


def normalise_machine(machine: str) -> str:
    """The :class:`~pyops.arch.Arch` of any spelling (``x86_64``, ``aarch64``...), or the
    name itself, lower case, when it names none."""
    return arch.find(machine) or machine.lower()


def _kvm_usable(system: str, machine: str = "x86_64") -> bool:
    if system != "Linux":
        return False
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if normalise_machine(machine) != Arch.AMD64:
        # arm64 CPUs list no virtualisation flag in /proc/cpuinfo; /dev/kvm is the test.
        return True
    # /dev/kvm can exist where guests still cannot run (some sandboxes and nested setups);
    # like Ops, also require the CPU to advertise hardware virtualisation.
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "vmx" in flags or "svm" in flags
    except OSError:
        return False
    return False


def _hvf_usable(system: str) -> bool:
    if system != "Darwin":
        return False
    try:
        out = subprocess.run(
            ["sysctl", "-n", "kern.hv_support"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "1"


@dataclass(frozen=True, slots=True)
class PortForward:
    """A TCP (or UDP) port on the host forwarded to one in the guest."""

    host: int
    guest: int
    protocol: str = "tcp"

    @classmethod
    def parse(cls, text: str, protocol: str = "tcp") -> PortForward:
        """``8080`` (same on both sides) or ``HOST:GUEST``."""
        parts = text.split(":")
        try:
            if len(parts) == 1:
                host = guest = int(parts[0])
            elif len(parts) == 2:
                host, guest = int(parts[0]), int(parts[1])
            else:
                raise ValueError(text)
        except ValueError:
            raise ConfigError(
                f"invalid port {text!r}", hint="write PORT or HOST_PORT:GUEST_PORT, e.g. 8080:80"
            ) from None
        for p in (host, guest):
            if not 0 < p < 65536:
                raise ConfigError(f"invalid port {text!r}: ports are 1 to 65535")
        return cls(host, guest, protocol)


def parse_ports(items: Sequence[str], protocol: str = "tcp") -> tuple[PortForward, ...]:
    """Port forwards as Ops's ``-p`` takes them (``cmd/network_ports.go``), and pyops's
    ``HOST:GUEST``: ``80`` forwards host 80 to guest 80, ``80-90`` host 80 to guest 90 (as
    Ops's ``hostfwd``; not a range), ``80,81`` both; ``-p`` may be repeated. A host port
    given twice is refused (qemu would fail on it)."""
    found: list[PortForward] = []
    for text in items:
        _check_ops_ports(text)
        for part in text.split(","):
            if "-" in part:
                first, second = part.split("-")
                found.append(PortForward.parse(f"{first}:{second}", protocol))
            else:
                found.append(PortForward.parse(part, protocol))
    seen: set[int] = set()
    for fwd in found:
        if fwd.host in seen:
            raise ConfigError(
                f"host port {fwd.host} is forwarded twice", hint="forward each host port once"
            )
        seen.add(fwd.host)
    return tuple(found)


def _check_ops_ports(text: str) -> None:
    """Ops's ``ValidateNetworkPorts``, with its reasons; ``:`` is pyops's extension."""
    reason = _ops_port_problem(text)
    if reason is not None:
        raise ConfigError(
            f'invalid port "{text}": {reason}',
            hint="write PORT, HOST-GUEST or HOST:GUEST, several joined by commas (80,8080-80)",
        )


def _ops_port_problem(text: str) -> str | None:
    if not text or text[0] == "," or text[-1] == ",":
        return "commas must separate numbers"
    if text[0] in "-:" or text[-1] in "-:":
        return "hyphen must separate two numbers"
    for part in text.split(","):
        if not part:
            return "commas must separate numbers"
        if part.count("-") > 1 or (part.count("-") and part.count(":")):
            return "may have only one hyphen"
        if part.count(":") > 1 or not all(c.isdigit() and c.isascii() or c in "-:" for c in part):
            return "must have only numbers, commas or one hyphen"
        if part[0] in "-:" or part[-1] in "-:":
            return "hyphen must separate two numbers"
    return None


@dataclass(frozen=True, slots=True)
class VmConfig:
    """How to run a disk: memory, CPUs, accelerator, forwarded ports, volumes attached."""

    memory: str = "2G"
    cpus: int | None = None
    accel: Accel = Accel.AUTO
    ports: tuple[PortForward, ...] = ()
    qemu: str | None = None  # the qemu binary; default: qemu-system-x86_64 on PATH
    volumes: tuple[str, ...] = ()
    """Volume files attached as further disks, in order (the guest finds each by its label
    or UUID, not by its position)."""
    gdb_port: int | None = None
    """qemu's gdb server on this TCP port of the host (Ops's ``-g``)."""
    wait_for_gdb: bool = False
    """The guest waits, stopped, for the debugger (Ops's ``-d``: qemu's ``-S``)."""

    def __post_init__(self) -> None:
        memory_bytes(self.memory)
        if self.cpus is not None and not 0 < self.cpus <= 1024:
            raise ConfigError(f"invalid number of CPUs {self.cpus}", hint="give 1 to 1024")
        if self.gdb_port is not None:
            if not 0 < self.gdb_port < 65536:
                raise ConfigError(f"invalid gdb port {self.gdb_port}: ports are 1 to 65535")
            if any(p.host == self.gdb_port and p.protocol == "tcp" for p in self.ports):
                # Ops's message (cmd/flags_run_local_instance.go)
                raise ConfigError(
                    f"Port {self.gdb_port} is forwarded and cannot be used as gdb port",
                    hint="give the debugger another port with -g",
                )


_MEMORY = re.compile(r"([0-9]{1,13})([KMGT]?)", re.IGNORECASE)


def memory_bytes(text: str) -> int:
    """Guest memory as qemu's ``-m`` takes it (``512M``, ``2G``; a bare number is MiB), in
    bytes; anything else (``0``, ``1G,maxmem=2G``) is refused before it reaches qemu."""
    m = _MEMORY.fullmatch(text.strip())
    unit = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    size = int(m.group(1)) * unit[m.group(2).lower()] if m else 0
    if not m or not (1 << 20) <= size <= (1 << 44):
        raise ConfigError(
            f"invalid memory size {text!r}",
            hint="write a size such as 512M or 2G (1 MiB to 16 TiB)",
        )
    return size


def choose_accel(requested: Accel, host: Host, guest: Arch = Arch.AMD64) -> Accel:
    """The accelerator to use for a ``guest`` on ``host``; refuses one that cannot work.

    A hypervisor runs only guests of the host's own architecture: KVM on Linux, HVF on
    macOS (x86-64 on Intel Macs, arm64 on Apple Silicon). Anything else is emulated (TCG).
    """
    native = host.machine == guest
    if requested == Accel.AUTO:
        if native and host.system == "Linux" and host.kvm:
            return Accel.KVM
        if native and host.system == "Darwin" and host.hvf:
            return Accel.HVF
        return Accel.TCG
    what = f"{guest.uname} guests"
    if requested == Accel.KVM:
        if host.system != "Linux" or not native:
            raise QemuError(
                f"KVM cannot run {what} on this {host.system} {host.machine} host"
                + (" (KVM runs guests of the host's own architecture only)" if not native else ""),
                hint="use --accel tcg (or auto)",
            )
        if not host.kvm:
            raise QemuError(
                "KVM is not usable here: /dev/kvm is missing or not writable, or the CPU "
                "has no hardware virtualisation (vmx/svm)",
                hint="add yourself to the kvm group, or use --accel tcg (slower)",
            )
    if requested == Accel.HVF:
        if host.system != "Darwin" or not native:
            mac = "Intel Macs" if guest == Arch.AMD64 else "Apple Silicon Macs"
            other = "Apple Silicon" if guest == Arch.AMD64 else "Intel Macs"
            raise QemuError(
                f"HVF runs {what} only on {mac}"
                + (f" ({other} emulate them with TCG)" if host.system == "Darwin" else ""),
                hint="use --accel tcg (or auto)",
            )
        if not host.hvf:
            raise QemuError(
                "the macOS Hypervisor framework is not available (kern.hv_support is not 1)",
                hint="use --accel tcg",
            )
    return requested


def qemu_command(
    disk: str | os.PathLike[str],
    config: VmConfig,
    host: Host,
    *,
    monitor: str | None = None,
    guest: Guest = Guest(),
    qmp: str | None = None,
) -> list[str]:
    """The full qemu argv for booting ``disk`` as ``guest`` (default: x86-64); nothing is
    run. ``monitor``: a Unix socket path for qemu's human monitor, ``qmp`` one for its
    machine protocol (none by default)."""
    accel = choose_accel(config.accel, host, guest.arch)
    if guest.arch == Arch.ARM64:
        return _arm64_command(disk, config, accel, monitor, guest) + _qmp(qmp)
    binary = config.qemu or QEMU_X86_64
    argv = [
        binary,
        "-machine", "q35",
        "-device",
        "pcie-root-port,port=0x10,chassis=1,id=pci.1,bus=pcie.0,multifunction=on,addr=0x3",
        "-device", "pcie-root-port,port=0x11,chassis=2,id=pci.2,bus=pcie.0,addr=0x3.0x6",
        "-device", "pcie-root-port,port=0x12,chassis=3,id=pci.4,bus=pcie.0,addr=0x3.0x4",
        "-device", "virtio-scsi-pci,bus=pci.2,addr=0x0,id=scsi0",
        "-device", "scsi-hd,bus=scsi0.0,drive=hd0",
        "-vga", "none",
        "-device", "isa-debug-exit",
        "-m", config.memory,
    ]  # fmt: skip
    if config.cpus:
        argv += ["-smp", str(config.cpus)]
    argv += ["-device", "virtio-rng-pci"]
    if accel == Accel.KVM:
        argv += ["-accel", "kvm", "-cpu", "host"]
    elif accel == Accel.HVF:
        # Intel Macs: rdtscp is not passed through by HVF (ops: -cpu host,-rdtscp)
        argv += ["-accel", "hvf", "-cpu", "host,-rdtscp"]
    else:
        argv += ["-accel", "tcg", "-cpu", "max"]
    argv += ["-drive", f"file={_drive_path(disk)},format=raw,if=none,id=hd0"]
    argv += _volumes(config, "scsi-hd,bus=scsi0.0")
    argv += [
        "-device", "virtio-net,bus=pci.4,addr=0x0,netdev=n0,mac=52:54:00:12:34:56",
        "-netdev", _netdev(config),
    ]  # fmt: skip
    return argv + _debugger(config) + _console_and_monitor(monitor) + _qmp(qmp)


def _volumes(config: VmConfig, device: str) -> list[str]:
    """Each volume as a block node and a ``device`` disk, both named after its file."""
    argv: list[str] = []
    for volume in config.volumes:
        node = volume_node(volume)
        argv += [
            "-blockdev",
            volume_blockdev(volume),
            "-device",
            f"{device},drive={node},id=dev-{node}",
        ]
    return argv


def _qmp(path: str | None) -> list[str]:
    return ["-qmp", f"unix:{path},server=on,wait=off"] if path else []


def _arm64_command(
    disk: str | os.PathLike[str], config: VmConfig, accel: Accel, monitor: str | None, guest: Guest
) -> list[str]:
    assert guest.kernel is not None  # Guest checks it
    argv = [
        config.qemu or Arch.ARM64.qemu_binary,
        "-machine", "virt",
        "-machine", "gic-version=2",
        "-machine", "highmem=off",
        "-m", config.memory,
    ]  # fmt: skip
    if config.cpus:
        argv += ["-smp", str(config.cpus)]
    if accel == Accel.TCG:
        argv += ["-accel", "tcg", "-cpu", "max"]
    else:
        argv += ["-accel", str(accel), "-cpu", "host"]
    argv += [
        "-kernel", os.fspath(Path(guest.kernel).absolute()),  # a plain argument: no escapes
        "-drive", f"if=none,id=hd0,format=raw,file={_drive_path(disk)}",
        "-device", "virtio-blk-pci,drive=hd0",
    ]  # fmt: skip
    argv += _volumes(config, "virtio-blk-pci")
    argv += [
        "-device", "virtio-rng-pci",
        "-semihosting",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
        "-netdev", _netdev(config),
    ]  # fmt: skip
    return argv + _debugger(config) + _console_and_monitor(monitor)


def volume_node(path: str | os.PathLike[str]) -> str:
    """qemu's name for the block node of a volume file (its device is ``dev-`` and this):
    the same for a file whichever machine attaches it, so it can be detached by it."""
    import hashlib

    real = os.path.realpath(os.fspath(path))
    return "vol" + hashlib.sha256(os.fsencode(real)).hexdigest()[:12]


def volume_blockdev(path: str | os.PathLike[str]) -> str:
    """The ``-blockdev`` value of a volume file, in JSON (no escaping of its path needed)."""
    import json

    return json.dumps(volume_blockdev_args(path), separators=(",", ":"))


def volume_blockdev_args(path: str | os.PathLike[str]) -> dict[str, object]:
    """QMP ``blockdev-add`` arguments of a volume file: raw, over the file."""
    real = os.fspath(Path(path).absolute())
    return {
        "driver": "raw",
        "node-name": volume_node(path),
        "file": {"driver": "file", "filename": real},
    }


def _netdev(config: VmConfig) -> str:
    netdev = "user,id=n0"
    for fwd in config.ports:
        netdev += f",hostfwd={fwd.protocol}::{fwd.host}-:{fwd.guest}"
    return netdev


def _debugger(config: VmConfig) -> list[str]:
    argv = ["-gdb", f"tcp::{config.gdb_port}"] if config.gdb_port else []
    return argv + (["-S"] if config.wait_for_gdb else [])


def _console_and_monitor(monitor: str | None) -> list[str]:
    return [
        "-display", "none",
        "-serial", "stdio",
        "-monitor", f"unix:{monitor},server=on,wait=off" if monitor else "none",
        "-no-reboot",
    ]  # fmt: skip


def guest_of(disk: str | os.PathLike[str], kernel_dir: str | os.PathLike[str]) -> Guest:
    """The guest a bootable disk makes: its kernel's architecture, and for arm64 its kernel,
    copied out of the boot filesystem into ``kernel_dir`` (as ``<disk name>.kernel``) for
    qemu's ``-kernel``."""
    from pyops import atomic
    from pyops.nanos.disk import boot_kernel
    from pyops.nanos.tfs import iter_file_contents

    guest_arch, kernel = boot_kernel(disk)
    if guest_arch != Arch.ARM64:
        return Guest(guest_arch)
    dest = Path(kernel_dir) / (Path(disk).name + ".kernel")
    with atomic.atomic_path(dest, kernel.size) as tmp, open(tmp, "xb") as out:
        for piece in iter_file_contents(kernel):
            out.write(piece)
    return Guest(guest_arch, os.fspath(dest))


def _drive_path(path: str | os.PathLike[str]) -> str:
    # qemu's option parser splits on commas; a literal comma is written twice.
    return os.fspath(Path(path).absolute()).replace(",", ",,")


def find_qemu(binary: str | None = None, system: str | None = None) -> str:
    """The path of the qemu binary (on ``PATH``, else in Homebrew's and MacPorts' folders),
    or an error that says how to install it on this ``system`` (default: this one's)."""
    name = binary or QEMU_X86_64
    found = shutil.which(name)
    if found is None and os.sep not in name:
        for prefix in QEMU_PREFIXES:
            found = shutil.which(name, path=prefix)
            if found is not None:
                break
    if found is None:
        system = system or platform.system()
        if system == "Darwin":
            how = "'brew install qemu' (Homebrew) or 'port install qemu' (MacPorts)"
        else:
            package = "qemu-system-arm" if "aarch64" in name else "qemu-system-x86"
            how = f"'apt-get install {package}' on Debian/Ubuntu, 'dnf install {name}' on Fedora"
        raise QemuError(f"{name} was not found", hint=f"install qemu: {how}")
    return found


def check_ports_free(ports: Sequence[PortForward]) -> None:
    """Refuse host ports that are already taken, before qemu fails with a vaguer message."""
    for fwd in ports:
        kind = socket.SOCK_STREAM if fwd.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            if fwd.protocol == "tcp":
                # As qemu's user network does: a port held only by TIME_WAIT sockets is free.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", fwd.host))  # qemu's hostfwd listens on every address
            except OSError:
                raise QemuError(
                    f"host port {fwd.host} is already in use",
                    hint=f"stop what listens on {fwd.host}, or forward another port "
                    f"(-p OTHER:{fwd.guest})",
                ) from None


class Console:
    """The guest's console on its way to the terminal: the last ``keep`` bytes are kept,
    for explaining a run afterwards."""

    def __init__(self, keep: int = 256 * 1024) -> None:
        self.keep = keep
        self._data = bytearray()
        self.total = 0
        """Bytes seen in all."""

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._data += chunk
        if len(self._data) > 2 * self.keep:
            del self._data[: -self.keep]

    def text(self) -> str:
        """The kept tail, decoded (bad bytes replaced), carriage returns dropped."""
        return bytes(self._data[-self.keep :]).decode("utf-8", "replace").replace("\r", "")


def _tee(source: int, dest: int | None, console: Console) -> None:
    """Copy the console from ``source`` to ``dest`` (None: this process's stdout) as it
    comes, keeping it in ``console``."""
    write = _writer(dest)
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            break
        if not chunk:
            break
        console.feed(chunk)
        if write is not None:
            try:
                write(chunk)
            except (BrokenPipeError, ValueError):
                write = None  # the reader went away: keep collecting
    os.close(source)


def _writer(dest: int | None) -> Callable[[bytes], object] | None:
    if dest is None:
        try:
            dest = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):
            # Not a real file (a test harness): write through its buffer.
            buffer = getattr(sys.stdout, "buffer", None)
            if buffer is None:
                return None

            def to_buffer(chunk: bytes) -> None:
                buffer.write(chunk)
                buffer.flush()

            return to_buffer
        sys.stdout.flush()
    fd = dest

    def to_fd(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]

    return to_fd


def power_off(monitor: str) -> bool:
    """Ask the guest to power off, as its power button would (ACPI): Nanos sends the program
    SIGTERM and runs its shutdown handlers. False if qemu's monitor could not be reached."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(monitor)
            # The monitor takes commands once it has shown its prompt, and drops one that
            # is still unread when the connection closes: wait for the prompt both times.
            _read_prompt(sock)
            sock.sendall(b"system_powerdown\n")
            _read_prompt(sock)
            return True
    except OSError:
        return False


def _read_prompt(sock: socket.socket) -> None:
    seen = b""
    while b"(qemu)" not in seen:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the monitor closed")
        seen = (seen + chunk)[-256:]


def run_vm(
    disk: str | os.PathLike[str],
    config: VmConfig = VmConfig(),
    *,
    host: Host | None = None,
    stdout: int | None = None,
    stdin: int | None = subprocess.DEVNULL,
    timeout: float | None = None,
    console: Console | None = None,
    power_off_after: float | None = None,
    guest: Guest | None = None,
) -> int:
    """Boot ``disk`` in the foreground and return the guest program's exit code.

    ``guest`` is what :func:`guest_of` makes of the disk (it is asked when not given, and an
    arm64 kernel is then copied out into a temporary folder for the run).

    The console goes to ``stdout`` (default: this process's), and is kept in ``console``
    when one is given. ``power_off_after`` presses the guest's power button after that many
    seconds (the program is stopped as at a shutdown, and the exit code is 0 unless it
    exited first). ``timeout`` kills qemu after that many seconds and raises
    :class:`QemuError`, as does a qemu that fails to start.
    """
    if not Path(disk).is_file():
        raise QemuError(f"{os.fspath(disk)}: no such disk image")
    with contextlib.ExitStack() as stack:
        import tempfile

        folder: str | None = None
        if power_off_after is not None or guest is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="pyops-qemu-"))
        if guest is None:
            assert folder is not None
            guest = guest_of(disk, folder)
        monitor = (
            os.path.join(folder, "monitor") if power_off_after is not None and folder else None
        )
        if guest.arch == Arch.ARM64 and console is None:
            console = Console(keep=4096)  # to see whether the exit code got lost
        argv = qemu_command(disk, config, host or Host.detect(), monitor=monitor, guest=guest)
        argv[0] = find_qemu(argv[0])
        check_ports_free(config.ports)
        log.debug("running %s", shlex.join(argv))
        out: int | None = stdout
        tee: threading.Thread | None = None
        if console is not None:
            read_end, out = os.pipe()
            tee = threading.Thread(target=_tee, args=(read_end, stdout, console), daemon=True)
        try:
            # qemu's stderr is read so that its own failures (exit status 1) are not
            # mistaken for a guest that exited with 0 through isa-debug-exit.
            proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=subprocess.PIPE)
        except OSError as exc:
            raise QemuError(f"cannot start {argv[0]}: {exc.strerror}") from exc
        finally:
            if tee is not None and out is not None:
                os.close(out)  # qemu holds its own copy
                tee.start()
        try:
            err = _wait(proc, timeout, monitor, power_off_after)
        finally:
            if tee is not None:
                tee.join(timeout=5)
    return interpret_exit(
        proc.returncode,
        err.decode("utf-8", "replace"),
        argv,
        guest.arch,
        console.text() if console is not None else "",
    )


def _wait(
    proc: subprocess.Popen[bytes],
    timeout: float | None,
    monitor: str | None,
    power_off_after: float | None,
) -> bytes:
    """Wait for qemu, pressing the power button after ``power_off_after`` seconds."""
    try:
        with _signals_stop_the_vm():
            if monitor is not None and power_off_after is not None:
                try:
                    _out, err = proc.communicate(timeout=power_off_after)
                    return err
                except subprocess.TimeoutExpired:
                    if timeout is not None:
                        timeout = max(timeout - power_off_after, 1.0)
                    if not power_off(monitor):
                        proc.kill()
            _out, err = proc.communicate(timeout=timeout)
            return err
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise QemuError(f"the virtual machine did not stop within {timeout:g} s") from None
    except (KeyboardInterrupt, _Signalled) as stop:
        proc.terminate()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        if isinstance(stop, _Signalled):
            # qemu is gone: now end as the signal asked, with its default action.
            signal.signal(stop.signum, signal.SIG_DFL)
            os.kill(os.getpid(), stop.signum)
        raise


class _Signalled(BaseException):
    """SIGTERM or SIGHUP arrived while a virtual machine ran in the foreground."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_stop_the_vm() -> Iterator[None]:
    """While qemu runs, SIGTERM and SIGHUP stop it first, as Ctrl-C does (only the main
    thread can set handlers; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise _Signalled(signum)

    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {signum: signal.signal(signum, stop) for signum in wanted}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interpret_exit(
    status: int,
    stderr: str,
    argv: Sequence[str],
    guest: Arch = Arch.AMD64,
    console: str = "",
) -> int:
    """The guest's exit code from qemu's exit status and messages, or a :class:`QemuError`.

    x86-64: isa-debug-exit makes qemu exit with ``(value << 1) | 1``; 0 means an ACPI
    power-off. arm64: semihosting's exit makes qemu exit with the value itself, and a kernel
    that could not make that call says so on the ``console`` (:class:`ExitCodeLost`). qemu
    itself fails with status 1, but then it says why on stderr.
    """
    errors = [
        line
        for line in stderr.splitlines()
        if line.startswith(("qemu-system", "qemu:")) and "terminating on signal" not in line
    ]
    for line in stderr.splitlines():
        if line.strip() and line not in errors:
            log.warning("qemu: %s", line)
    if status < 0:
        raise QemuError(
            f"qemu was killed by signal {-status}" + (": " + "; ".join(errors) if errors else ""),
            hint=f"the command was: {shlex.join(argv)}",
        )
    if guest == Arch.ARM64:
        if status == 0 and LOST_EXIT_CODE in console:
            raise ExitCodeLost(
                "the program stopped, but its exit code is lost: this host's hypervisor does "
                "not pass the kernel's semihosting exit call to qemu (HVF on Apple M1 and M2 "
                "lacks it), so Nanos powered off through PSCI instead",
                hint="boot with --accel tcg when the exit code matters",
            )
        if not (status == 1 and errors):
            return status & 0xFF
    elif status & 1 and not (status == 1 and errors):
        return (status >> 1) & 0x7F
    if status == 0:
        return 0
    raise QemuError(
        "qemu failed" + (": " + "; ".join(errors) if errors else f" with status {status}"),
        hint=f"the command was: {shlex.join(argv)}",
    )

"""The qemu command line for each kind of host, the accelerator choice, and exit codes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pyops.errors import ConfigError, QemuError
from pyops.vm.qemu import (
    Accel,
    Host,
    PortForward,
    VmConfig,
    check_ports_free,
    choose_accel,
    interpret_exit,
    qemu_command,
)

LINUX_KVM = Host("Linux", "x86_64", kvm=True, hvf=False)
LINUX_NO_KVM = Host("Linux", "x86_64", kvm=False, hvf=False)
INTEL_MAC = Host("Darwin", "x86_64", kvm=False, hvf=True)
APPLE_SILICON = Host("Darwin", "arm64", kvm=False, hvf=True)
LINUX_ARM = Host("Linux", "arm64", kvm=True, hvf=False)


def value_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize(
    ("host", "accel", "cpu"),
    [
        (LINUX_KVM, "kvm", "host"),
        (LINUX_NO_KVM, "tcg", "max"),
        (INTEL_MAC, "hvf", "host,-rdtscp"),
        (APPLE_SILICON, "tcg", "max"),  # x86-64 guests are emulated on ARM, never HVF
        (LINUX_ARM, "tcg", "max"),  # KVM on an ARM host cannot run an x86-64 guest
    ],
)
def test_auto_accelerator_per_host(host: Host, accel: str, cpu: str) -> None:
    argv = qemu_command("/images/my disk.img", VmConfig(), host)
    assert argv[0] == "qemu-system-x86_64"
    assert value_after(argv, "-accel") == [accel]
    assert value_after(argv, "-cpu") == [cpu]


def test_common_machine_and_devices() -> None:
    argv = qemu_command("/images/a,b.img", VmConfig(memory="512M", cpus=2), LINUX_NO_KVM)
    assert value_after(argv, "-machine") == ["q35"]
    assert value_after(argv, "-m") == ["512M"]
    assert value_after(argv, "-smp") == ["2"]
    devices = value_after(argv, "-device")
    assert "isa-debug-exit" in devices
    assert "scsi-hd,bus=scsi0.0,drive=hd0" in devices
    assert any(d.startswith("virtio-scsi-pci") for d in devices)
    # one argv element per path, commas doubled for qemu's option parser
    assert value_after(argv, "-drive") == ["file=/images/a,,b.img,format=raw,if=none,id=hd0"]
    assert value_after(argv, "-serial") == ["stdio"]
    assert value_after(argv, "-display") == ["none"]


def test_port_forwards() -> None:
    ports = (PortForward.parse("8080"), PortForward.parse("9000:80"))
    argv = qemu_command("d.img", VmConfig(ports=ports), LINUX_NO_KVM)
    assert value_after(argv, "-netdev") == [
        "user,id=n0,hostfwd=tcp::8080-:8080,hostfwd=tcp::9000-:80"
    ]


@pytest.mark.parametrize("text", ["", "x", "1:2:3", "0", "70000", "80:0"])
def test_bad_ports(text: str) -> None:
    with pytest.raises(ConfigError, match="port"):
        PortForward.parse(text)


def test_port_in_use_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(QemuError, match=f"port {port} is already in use"):
            check_ports_free([PortForward(port, 80)])


@pytest.mark.parametrize(
    ("requested", "host", "message"),
    [
        (Accel.KVM, LINUX_NO_KVM, "KVM is not usable"),
        (Accel.KVM, INTEL_MAC, "KVM cannot run"),
        (Accel.KVM, LINUX_ARM, "KVM cannot run"),
        (Accel.HVF, APPLE_SILICON, "Intel Macs"),
        (Accel.HVF, LINUX_KVM, "Intel Macs"),
    ],
)
def test_unusable_accelerators_are_refused(requested: Accel, host: Host, message: str) -> None:
    with pytest.raises(QemuError, match=message) as info:
        choose_accel(requested, host)
    assert info.value.hint and "tcg" in info.value.hint


def test_tcg_always_works() -> None:
    for host in (LINUX_KVM, LINUX_NO_KVM, INTEL_MAC, APPLE_SILICON, LINUX_ARM):
        assert choose_accel(Accel.TCG, host) == Accel.TCG


@pytest.mark.parametrize(("status", "code"), [(1, 0), (7, 3), (11, 5), (0, 0), (255, 127)])
def test_exit_codes_from_isa_debug_exit(status: int, code: int) -> None:
    assert interpret_exit(status, "", ["qemu"]) == code


def test_qemu_failures_are_not_guest_exit_codes() -> None:
    with pytest.raises(QemuError, match="Could not open"):
        interpret_exit(1, "qemu-system-x86_64: -drive file=x: Could not open 'x'\n", ["qemu"])
    with pytest.raises(QemuError, match="signal 6"):
        interpret_exit(-6, "", ["qemu"])


def test_detect_describes_this_machine() -> None:
    host = Host.detect()
    assert host.machine in ("x86_64", "arm64") or host.machine
    assert choose_accel(Accel.AUTO, host) in set(Accel) - {Accel.AUTO}


def test_run_vm_without_disk(tmp_path: Path) -> None:
    from pyops.vm.qemu import run_vm

    with pytest.raises(QemuError, match="no such disk image"):
        run_vm(tmp_path / "missing.img")


def test_a_port_held_only_by_time_wait_sockets_is_free() -> None:
    import socket

    from pyops.vm.qemu import check_ports_free

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the side that closes first keeps TIME_WAIT on the port
        client.close()
    check_ports_free([PortForward(port, 80)])

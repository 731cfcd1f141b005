"""The qemu command line for each kind of host, the accelerator choice, and exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from pyops.arch import Arch
from pyops.errors import ConfigError, QemuError
from pyops.vm import qemu
from pyops.vm.qemu import (
    Accel,
    ExitCodeLost,
    Guest,
    Host,
    PortForward,
    VmConfig,
    check_ports_free,
    choose_accel,
    find_qemu,
    interpret_exit,
    parse_ports,
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


ARM_GUEST = Guest(Arch.ARM64, "/releases/0.1.55-arm/kernel.img")


@pytest.mark.parametrize(
    ("host", "accel", "cpu"),
    [
        (APPLE_SILICON, "hvf", "host"),  # native speed on Apple Silicon
        (LINUX_ARM, "kvm", "host"),
        (Host("Linux", "aarch64", kvm=False, hvf=False), "tcg", "max"),
        (INTEL_MAC, "tcg", "max"),  # HVF runs only the Mac's own architecture
        (LINUX_KVM, "tcg", "max"),  # and so does KVM
        (LINUX_NO_KVM, "tcg", "max"),
    ],
)
def test_arm64_guest_accelerator_per_host(host: Host, accel: str, cpu: str) -> None:
    argv = qemu_command("/images/my disk.img", VmConfig(), host, guest=ARM_GUEST)
    assert argv[0] == "qemu-system-aarch64"
    assert value_after(argv, "-accel") == [accel]
    assert value_after(argv, "-cpu") == [cpu]


def test_arm64_machine_and_devices() -> None:
    argv = qemu_command(
        "/images/a,b.img", VmConfig(memory="1G", cpus=2), LINUX_NO_KVM, guest=ARM_GUEST
    )
    assert value_after(argv, "-machine") == ["virt", "gic-version=2", "highmem=off"]
    assert value_after(argv, "-m") == ["1G"]
    assert value_after(argv, "-smp") == ["2"]
    # qemu loads the kernel itself: the disk has no boot loader
    assert value_after(argv, "-kernel") == ["/releases/0.1.55-arm/kernel.img"]
    assert value_after(argv, "-drive") == ["if=none,id=hd0,format=raw,file=/images/a,,b.img"]
    devices = value_after(argv, "-device")
    assert "virtio-blk-pci,drive=hd0" in devices
    assert "virtio-rng-pci" in devices
    assert "isa-debug-exit" not in devices
    assert "-semihosting" in argv  # how the exit code reaches qemu
    assert value_after(argv, "-serial") == ["stdio"]
    assert "-no-reboot" in argv


def test_arm64_guest_needs_its_kernel() -> None:
    with pytest.raises(ConfigError, match="kernel"):
        Guest(Arch.ARM64)
    with pytest.raises(ConfigError, match="does not run"):
        Guest(Arch.RISCV64, "k")


@pytest.mark.parametrize(
    ("requested", "host", "message"),
    [
        (Accel.HVF, INTEL_MAC, "Apple Silicon Macs"),
        (Accel.HVF, LINUX_ARM, "Apple Silicon Macs"),
        (Accel.KVM, LINUX_KVM, "own architecture"),
        (Accel.KVM, APPLE_SILICON, "KVM cannot run"),
        (Accel.KVM, Host("Linux", "aarch64", kvm=False, hvf=False), "KVM is not usable"),
    ],
)
def test_arm64_unusable_accelerators_are_refused(
    requested: Accel, host: Host, message: str
) -> None:
    with pytest.raises(QemuError, match=message) as info:
        choose_accel(requested, host, Arch.ARM64)
    assert info.value.hint and "tcg" in info.value.hint


@pytest.mark.parametrize(("status", "code"), [(0, 0), (1, 1), (3, 3), (255, 255)])
def test_arm64_exit_code_is_qemus_status(status: int, code: int) -> None:
    assert interpret_exit(status, "", ["qemu"], Arch.ARM64) == code


def test_arm64_lost_exit_code_is_said_plainly() -> None:
    console = (
        "\nAngel shutdown trap failed; shutting down with PSCI.\n"
        "QEMU exit code will not reflect program exit code.\n"
    )
    with pytest.raises(ExitCodeLost, match="exit code is lost") as info:
        interpret_exit(0, "", ["qemu"], Arch.ARM64, console)
    assert info.value.hint and "tcg" in info.value.hint
    # qemu's own failure is still qemu's
    with pytest.raises(QemuError, match="Could not open"):
        interpret_exit(1, "qemu-system-aarch64: -drive x: Could not open 'x'\n", ["q"], Arch.ARM64)


def test_kvm_on_arm64_linux_needs_no_cpu_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # arm64 CPUs list no vmx/svm flag: a usable /dev/kvm is the whole test there.
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: path == "/dev/kvm")

    def no_proc(*args: object, **kw: object) -> object:
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr("builtins.open", no_proc)
    assert qemu._kvm_usable("Linux", "aarch64") is True
    # x86-64 also needs vmx or svm, and a host without /proc has none to show
    assert qemu._kvm_usable("Linux", "x86_64") is False
    assert qemu._kvm_usable("Darwin", "arm64") is False


def test_hvf_is_asked_of_sysctl(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="1\n", stderr="")

    monkeypatch.setattr(qemu.subprocess, "run", fake_run)
    assert qemu._hvf_usable("Darwin") is True
    assert calls == [["sysctl", "-n", "kern.hv_support"]]
    monkeypatch.setattr(
        qemu.subprocess,
        "run",
        lambda argv, **kw: subprocess.CompletedProcess(argv, 0, stdout="0\n", stderr=""),
    )
    assert qemu._hvf_usable("Darwin") is False
    assert qemu._hvf_usable("Linux") is False  # never asked off macOS

    def missing(argv: list[str], **kw: object) -> object:
        raise FileNotFoundError("sysctl")

    monkeypatch.setattr(qemu.subprocess, "run", missing)
    assert qemu._hvf_usable("Darwin") is False


def test_qemu_is_found_in_homebrews_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    brew = tmp_path / "opt/homebrew/bin"
    brew.mkdir(parents=True)
    binary = brew / "qemu-system-aarch64"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(qemu, "QEMU_PREFIXES", (str(brew), "/nonexistent"))
    assert find_qemu("qemu-system-aarch64") == str(binary)
    with pytest.raises(QemuError, match="qemu-system-x86_64 was not found") as info:
        find_qemu("qemu-system-x86_64", system="Darwin")
    assert info.value.hint and "brew install qemu" in info.value.hint
    with pytest.raises(QemuError) as info:
        find_qemu("qemu-system-aarch64x", system="Linux")
    assert info.value.hint and "qemu-system-arm" in info.value.hint


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


def test_volumes_are_attached_as_named_block_nodes() -> None:
    from pyops.vm.qemu import volume_node

    vol = "/home/u/.pyops/volumes/data:0f0e-ab,c.raw"
    config = VmConfig(volumes=(vol,))
    node = volume_node(vol)
    assert node == volume_node(vol) and node.startswith("vol")
    for argv, device in (
        (qemu_command("d.img", config, LINUX_NO_KVM), "scsi-hd,bus=scsi0.0"),
        (qemu_command("d.img", config, LINUX_NO_KVM, guest=ARM_GUEST), "virtio-blk-pci"),
    ):
        (blockdev,) = value_after(argv, "-blockdev")
        # JSON: the path needs no escaping, commas and colons included
        assert json.loads(blockdev) == {
            "driver": "raw",
            "node-name": node,
            "file": {"driver": "file", "filename": vol},
        }
        assert f"{device},drive={node},id=dev-{node}" in value_after(argv, "-device")


# Ops's own cases (cmd/network_ports_test.go: TestValidateNetworkPorts, TestPrepareNetworkPorts)
@pytest.mark.parametrize("text", ["80", "80-100", "80,90,100", "80-8080,9000", "9000,80-8080"])
def test_ops_port_forms_are_accepted(text: str) -> None:
    assert parse_ports([text])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "must have only numbers, commas or one hyphen"),
        ("-80", "hyphen must separate two numbers"),
        ("80-8080-9000", "may have only one hyphen"),
        ("80,", "commas must separate numbers"),
    ],
)
def test_ops_port_errors_are_ops_messages(text: str, message: str) -> None:
    """Ops's reasons, after the port they are about."""
    with pytest.raises(ConfigError) as info:
        parse_ports([text])
    assert str(info.value) == f'invalid port "{text}": {message}'
    assert info.value.hint and "HOST-GUEST" in info.value.hint


def test_ops_port_forms_forward_as_ops_hostfwd_does() -> None:
    # "A-B" forwards host A to guest B (Ops's portfwd.String), commas split, -p repeats.
    ports = parse_ports(["80,8080", "9000-10000"])
    assert ports == (PortForward(80, 80), PortForward(8080, 8080), PortForward(9000, 10000))
    argv = qemu_command("d.img", VmConfig(ports=ports), LINUX_NO_KVM)
    assert value_after(argv, "-netdev") == [
        "user,id=n0,hostfwd=tcp::80-:80,hostfwd=tcp::8080-:8080,hostfwd=tcp::9000-:10000"
    ]
    assert parse_ports(["8080:80"]) == (PortForward(8080, 80),)  # pyops's own form stays
    with pytest.raises(ConfigError, match="host port 80 is forwarded twice"):
        parse_ports(["80", "80-81"])
    with pytest.raises(ConfigError, match="only one hyphen"):
        parse_ports(["80-90:91"])

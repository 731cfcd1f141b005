"""Images written by pyops, booted on a real Nanos kernel under qemu.

These run whenever a Nanos release and qemu are available (see ``nanos_release`` in
conftest.py) and skip with the reason otherwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyops.nanos.disk import open_image, write_disk
from pyops.nanos.manifest import Manifest
from pyops.nanos.tfs import read_file_bytes
from pyops.nanos.tree import File, ImageData, Tree
from pyops.vm.qemu import Accel, Host, VmConfig, choose_accel, run_vm

from ..conftest import compile_c, fixture_source

pytestmark = pytest.mark.boot

PROBE = fixture_source("probe.c")


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory, cc: str) -> Path:
    out = tmp_path_factory.mktemp("probe") / "probe"
    try:
        return compile_c(cc, PROBE, out, "-static")
    except subprocess.CalledProcessError:
        pytest.skip("gcc cannot link static programs here (libc6-dev missing?)")


def boot(disk: Path, timeout: float = 180) -> tuple[int, list[str]]:
    log = disk.with_suffix(".console")
    with open(log, "wb") as out:
        code = run_vm(disk, VmConfig(memory="512M"), stdout=out.fileno(), timeout=timeout)
    text = log.read_bytes().decode("utf-8", "replace").replace("\r", "")
    return code, text.splitlines()


def test_program_sees_arguments_environment_files_links_and_can_write(
    tmp_path: Path, nanos_release: Path, probe: Path
) -> None:
    tree = Tree()
    tree.add_file("/probe", str(probe))
    tree.add_file("/data/input.txt", b"contents of a data file\n")
    tree.add_file('/data/odd "name" ünï.txt', b"odd names work\n")
    tree.add_symlink("/data/link", "input.txt")
    tree.add_directory("/tmp")
    manifest = Manifest(
        program="/probe",
        arguments=("probe", "two words", "3"),
        environment={"GREETING": "hello from the manifest"},
        extra={"debug_exit": "t"},
    )
    disk = tmp_path / "probe.img"
    write_disk(
        disk,
        tree,
        manifest,
        boot_img=nanos_release / "boot.img",
        kernel=nanos_release / "kernel.img",
    )
    code, lines = boot(disk)
    probe_lines = [line for line in lines if line.startswith("probe ")]
    assert probe_lines == [
        "probe arg 0: probe",
        "probe arg 1: two words",
        "probe arg 2: 3",
        "probe env: hello from the manifest",
        "probe data: contents of a data file",
        "probe odd name: odd names work",
        "probe link: input.txt",
        "probe via link: contents of a data file",
        "probe readback: written in the guest",
    ], "\n".join(lines)
    assert code == 3
    assert not [line for line in lines if "assert" in line or "panic" in line.lower()]

    # The kernel appended to the root log while it ran; our reader follows that too.
    after = open_image(disk).tree()
    _path, written = after.lookup("/tmp/new.txt")
    assert isinstance(written, File) and isinstance(written.source, ImageData)
    assert read_file_bytes(written.source) == b"written in the guest\n"


def test_klibs_from_the_boot_filesystem_are_loaded(
    tmp_path: Path, nanos_release: Path, probe: Path
) -> None:
    """klibs: bootfs loads /klib of the boot FS: with strace, debugsyscalls traces syscalls."""
    strace = nanos_release / "klibs" / "strace"
    if not strace.is_file():
        pytest.skip("this Nanos release has no strace klib")
    tree = Tree()
    tree.add_file("/probe", str(probe))
    tree.add_directory("/tmp")
    disk = tmp_path / "klib.img"
    write_disk(
        disk,
        tree,
        Manifest(
            program="/probe",
            arguments=("probe",),
            klibs="bootfs",
            extra={"debugsyscalls": "t", "debug_exit": "t"},
        ),
        boot_img=nanos_release / "boot.img",
        kernel=nanos_release / "kernel.img",
        klibs={"strace": strace},
    )
    code, lines = boot(disk)
    assert "probe arg 0: probe" in lines
    assert any("write(" in line for line in lines), "\n".join(lines[-40:])
    assert code == 0


def test_accelerator_of_this_host_is_usable() -> None:
    """auto never picks an accelerator this host cannot use (the boots above rely on it)."""
    host = Host.detect()
    assert choose_accel(Accel.AUTO, host) in (Accel.KVM, Accel.HVF, Accel.TCG)
    if not host.kvm:
        assert choose_accel(Accel.AUTO, host) != Accel.KVM

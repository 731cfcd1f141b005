"""Bootable disk layout: MBR entries, klog area, boot and root filesystems, atomic writes."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyops.arch import Arch
from pyops.errors import (
    DiskFull,
    FilesystemFull,
    HostFileError,
    ImageFormatError,
    InvalidInput,
    ReleaseError,
)
from pyops.nanos.disk import (
    BOOTFS_SIZE,
    KLOG_SIZE,
    boot_kernel,
    chs,
    load_boot_image,
    open_image,
    partition_entry,
    write_disk,
)
from pyops.nanos.manifest import Manifest
from pyops.nanos.tfs import read_file_bytes
from pyops.nanos.tree import File, ImageData, Tree

from ..conftest import make_boot_img, tiny_elf


def test_partition_entries_of_the_worked_example() -> None:
    """Section 1.3: boot FS at LBA 103 (24,576 sectors), root at 24,679 (5,120 sectors)."""
    assert chs(103).hex() == "012900"
    assert partition_entry(0x83, 103, 24576) == bytes.fromhex("8001290083882e016700000000600000")
    assert partition_entry(0x83, 24679, 5120) == bytes.fromhex("80882f0183d93f016760000000140000")


def test_chs_saturates_past_1023_cylinders() -> None:
    assert chs(1024 * 255 * 63) == bytes([254, (0 | 63) & 0xFF, 1023 & 0xFF])


@pytest.fixture
def elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small x86-64 ELF standing in for the kernel and klibs (only its header is checked)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("elf")
    (d / "k.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-O0", "-o", str(d / "kernel.img"), str(d / "k.c")], check=True)
    return d / "kernel.img"


def test_arm64_disk_layout(tmp_path: Path) -> None:
    """No boot loader: sector 0 is Nanos's virt stub (a filesystem region of length 0
    before the table, and the signature), the klog area follows at 512, then the boot FS
    with the kernel and klibs, then the root FS."""
    kernel = tmp_path / "kernel.img"
    kernel.write_bytes(tiny_elf(183, b"\0" * 5000))
    klib = tmp_path / "strace"
    klib.write_bytes(tiny_elf(183))
    tree = Tree()
    tree.add_file("/hello", b"hi\n")
    info = write_disk(
        tmp_path / "disk.img",
        tree,
        Manifest(program="/hello"),
        boot_img=None,
        kernel=kernel,
        klibs={"strace": klib},
    )
    data = (tmp_path / "disk.img").read_bytes()
    assert not any(data[:0x1B2])
    assert struct.unpack_from("<QI", data, 0x1B2) == (0, 12)  # region: length 0, filesystem
    assert data[0x1FE:0x200] == b"\x55\xaa"
    p1 = 512 + KLOG_SIZE
    assert not any(data[512:p1])
    assert data[0x1BE:0x1CE] == partition_entry(0x83, p1 // 512, BOOTFS_SIZE // 512)
    assert info.root_offset == p1 + BOOTFS_SIZE
    assert data[0x1CE:0x1DE] == partition_entry(
        0x83, info.root_offset // 512, (len(data) - info.root_offset) // 512
    )
    arch, stored = boot_kernel(tmp_path / "disk.img")
    assert arch == Arch.ARM64
    assert read_file_bytes(stored) == kernel.read_bytes()
    image = open_image(tmp_path / "disk.img")
    boot_tree = image.boot_tree()
    assert boot_tree is not None and sorted(p for p, _ in boot_tree.walk()) == [
        "/",
        "/kernel",
        "/klib",
        "/klib/strace",
    ]
    assert image.manifest.program == "/hello"


def test_disk_architecture_checks(tmp_path: Path, elf: Path) -> None:
    arm = tmp_path / "arm.img"
    arm.write_bytes(tiny_elf(183))
    boot = tmp_path / "boot.img"
    make_boot_img(boot)
    tree, manifest = Tree(), Manifest(program="/x")
    tree.add_file("/x", b"x")
    out = tmp_path / "disk.img"
    with pytest.raises(InvalidInput, match="arm64 disk has no boot.img"):
        write_disk(out, tree, manifest, boot_img=boot, kernel=arm)
    with pytest.raises(InvalidInput, match="x86-64 disk needs"):
        write_disk(out, tree, manifest, boot_img=None, kernel=elf)
    with pytest.raises(ReleaseError, match="is an x86_64 Nanos klib, not an aarch64 one"):
        write_disk(out, tree, manifest, boot_img=None, kernel=arm, klibs=[elf])
    assert not out.exists()
    write_disk(out, tree, manifest, boot_img=boot, kernel=elf)
    assert boot_kernel(out)[0] == Arch.AMD64
    with pytest.raises(ImageFormatError, match="not a bootable Nanos disk"):
        boot_kernel(boot)


def test_disk_layout(tmp_path: Path, elf: Path) -> None:
    boot = make_boot_img(tmp_path / "boot.img")
    tree = Tree()
    tree.add_file("/hello", b"hi\n")
    info = write_disk(
        tmp_path / "disk.img",
        tree,
        Manifest(program="/hello"),
        boot_img=tmp_path / "boot.img",
        kernel=elf,
        klibs={"strace": elf},
    )
    data = (tmp_path / "disk.img").read_bytes()
    p1 = len(boot) + KLOG_SIZE
    assert p1 == 52_736
    # boot.img verbatim except the partition table
    assert data[:0x1BE] == boot[:0x1BE] and data[512 : len(boot)] == boot[512:]
    assert data[0x1FE:0x200] == b"\x55\xaa"
    assert not any(data[len(boot) : p1])  # klog area
    entry0 = data[0x1BE:0x1CE]
    entry1 = data[0x1CE:0x1DE]
    assert entry0 == partition_entry(0x83, 103, 24576)
    assert entry1 == partition_entry(0x83, 24679, (len(data) - info.root_offset) // 512)
    assert not any(data[0x1DE:0x1FE])
    assert info.root_offset == p1 + BOOTFS_SIZE
    assert len(data) == info.size
    # C mkfs's sizes for the same one-file content (section 5.4: 52,736 + 12 MiB + 2.5 MiB)
    assert len(data) == 52_736 + 12_582_912 + 2_621_440

    disk = open_image(tmp_path / "disk.img")
    assert disk.manifest.program == "/hello"
    boot_tree = disk.boot_tree()
    assert boot_tree is not None
    kernel = boot_tree.get("/kernel")
    assert isinstance(kernel, File) and isinstance(kernel.source, ImageData)
    assert read_file_bytes(kernel.source) == elf.read_bytes()
    assert boot_tree.exists("/klib/strace")
    hello = disk.tree().get("/hello")
    assert isinstance(hello, File) and isinstance(hello.source, ImageData)
    assert read_file_bytes(hello.source) == b"hi\n"


def test_total_size_like_base_volume_size(tmp_path: Path, elf: Path) -> None:
    make_boot_img(tmp_path / "boot.img")
    tree = Tree()
    tree.add_file("/hello", b"hi\n")
    kw = {"boot_img": tmp_path / "boot.img", "kernel": elf}
    info = write_disk(tmp_path / "d.img", tree, Manifest(program="/hello"), size=64 << 20, **kw)
    assert info.size == os.path.getsize(tmp_path / "d.img") == 64 << 20
    with pytest.raises(FilesystemFull, match="too small"):
        write_disk(tmp_path / "e.img", tree, Manifest(program="/hello"), size=13 << 20, **kw)
    assert not (tmp_path / "e.img").exists()


def test_bad_boot_img_and_kernel(tmp_path: Path, elf: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not a boot image" * 100)
    with pytest.raises(ReleaseError, match="not a Nanos boot.img"):
        load_boot_image(tmp_path / "junk")
    make_boot_img(tmp_path / "boot.img")
    tree = Tree()
    with pytest.raises(ReleaseError, match="not an ELF"):
        write_disk(
            tmp_path / "d.img",
            tree,
            Manifest(program="/x"),
            boot_img=tmp_path / "boot.img",
            kernel=tmp_path / "junk",
        )
    with pytest.raises(HostFileError, match="no such file"):
        write_disk(
            tmp_path / "d.img",
            tree,
            Manifest(program="/x"),
            boot_img=tmp_path / "boot.img",
            kernel=tmp_path / "missing",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot.img", "junk"]


def test_existing_image_survives_a_failed_rebuild(tmp_path: Path, elf: Path) -> None:
    make_boot_img(tmp_path / "boot.img")
    tree = Tree()
    tree.add_file("/hello", b"hi\n")
    kw = {"boot_img": tmp_path / "boot.img", "kernel": elf}
    write_disk(tmp_path / "d.img", tree, Manifest(program="/hello"), **kw)
    before = (tmp_path / "d.img").read_bytes()
    src = tmp_path / "src"
    src.write_bytes(b"x")
    tree.add_file("/gone", str(src))
    src.unlink()
    with pytest.raises(HostFileError):
        write_disk(tmp_path / "d.img", tree, Manifest(program="/hello"), **kw)
    assert (tmp_path / "d.img").read_bytes() == before


def test_corrupt_disks(tmp_path: Path, elf: Path) -> None:
    make_boot_img(tmp_path / "boot.img")
    tree = Tree()
    tree.add_file("/hello", b"hi\n")
    write_disk(
        tmp_path / "d.img",
        tree,
        Manifest(program="/hello"),
        boot_img=tmp_path / "boot.img",
        kernel=elf,
    )
    data = bytearray((tmp_path / "d.img").read_bytes())
    root = struct.unpack_from("<I", data, 0x1CE + 8)[0] * 512
    bad = bytearray(data)
    bad[root : root + 6] = b"XXXXXX"
    (tmp_path / "bad.img").write_bytes(bad)
    with pytest.raises(ImageFormatError, match="root filesystem is corrupt"):
        open_image(tmp_path / "bad.img")
    (tmp_path / "short.img").write_bytes(data[: root - 4096])
    with pytest.raises(ImageFormatError, match="past the end"):
        open_image(tmp_path / "short.img")


def test_a_full_disk_is_reported_with_the_room_needed_and_leaves_nothing(
    tmp_path: Path, elf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import pyops.nanos.disk

    make_boot_img(tmp_path / "boot.img")
    tree = Tree()
    tree.add_file("/big", b"x" * 100_000)

    def no_room(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pyops.nanos.disk, "write_volume", no_room)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DiskFull, match=rf"disk full at {out}, needs [\d,]+ "):
        write_disk(
            out / "disk.img",
            tree,
            Manifest(program="/big"),
            boot_img=tmp_path / "boot.img",
            kernel=elf,
        )
    assert list(out.iterdir()) == []

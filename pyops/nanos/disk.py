"""Bootable Nanos disks: MBR and stage2 from ``boot.img``, the klog area, boot and root TFS.

Layout (nanos-image-format.md section 1; nanos ``tools/mkfs.c``)::

    0                sector 0: stage1 from boot.img, partition table filled in
    512              stage2 (the rest of boot.img)
    len(boot.img)    4 KiB kernel log dump area ("klog"), left zero
    P1               boot FS: a 12 MiB TFS volume holding /kernel and /klib/*
    P1 + 12 MiB      root FS: a TFS volume with the program's tree, to the end of the file

An arm64 disk (the kernel says which) has no boot.img: sector 0 is the stub of
:func:`~pyops.nanos.boot.boot_sector_stub`, and the klog area follows it at 512.

Partitions are found by position (entry 0 boot FS, entry 1 root FS), never by type.
The disk is written to a temporary file next to the destination and renamed into place,
so a failed build never leaves a partial image behind.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyops import atomic
from pyops.arch import Arch
from pyops.errors import (
    DiskFull,
    FilesystemFull,
    HostFileError,
    ImageFormatError,
    InvalidInput,
)
from pyops.nanos.boot import (
    KERNEL_MACHINES,
    PARTITION_TABLE,
    boot_sector_stub,
    check_kernel,
    kernel_arch,
    load_boot_image,
)
from pyops.nanos.copier import iter_image_data
from pyops.nanos.manifest import Manifest
from pyops.nanos.tfs import (
    SECTOR,
    Root,
    RootTuple,
    Volume,
    VolumeInfo,
    read_volume,
    root_tuple,
    volume_tree,
    write_volume,
)
from pyops.nanos.tree import File, HostFile, ImageData, Tree
from pyops.progress import NULL_PROGRESS, Progress

BOOTFS_SIZE = 12 * 1024 * 1024
KLOG_SIZE = 4096
PARTITION_LINUX = 0x83
PARTITION_ESP = 0xEF


@dataclass(frozen=True, slots=True)
class Partition:
    """One MBR partition entry."""

    index: int
    type: int
    lba_start: int
    sectors: int

    @property
    def offset(self) -> int:
        return self.lba_start * SECTOR


@dataclass(frozen=True, slots=True)
class DiskInfo:
    """What :func:`write_disk` produced."""

    path: Path
    size: int
    boot: VolumeInfo
    root: VolumeInfo
    root_offset: int


def chs(lba: int) -> bytes:
    """The CHS triple exactly as mkfs packs it (not standard CHS; nobody reads it)."""
    cyl = (lba // 63) // 255
    head = (lba // 63) % 255
    sec = (lba % 63) + 1
    if cyl > 1023:
        cyl, head, sec = 1023, 254, 63
    return bytes([head & 0xFF, ((cyl >> 8) | sec) & 0xFF, cyl & 0xFF])


def partition_entry(type_: int, lba_start: int, sectors: int) -> bytes:
    """A 16-byte MBR entry as mkfs writes it: active, mkfs-style CHS, type, LBA, count."""
    if lba_start + sectors > 0xFFFFFFFF:
        raise InvalidInput("the disk is too large for an MBR partition table (2 TiB at most)")
    return (
        b"\x80"
        + chs(lba_start)
        + bytes([type_])
        + chs(lba_start + sectors - 1)
        + struct.pack("<II", lba_start, sectors)
    )


def boot_tuple(kernel: HostFile, klibs: Mapping[str, HostFile]) -> RootTuple:
    """The root tuple of the boot FS: ``kernel`` and ``klib/<name>`` (names sorted)."""
    tree = Tree()
    tree.add_file("/kernel", kernel)
    for name in sorted(klibs):
        tree.add_file(f"/klib/{name}", klibs[name])
    return root_tuple(tree)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[tuple[int, Path]]:
    """A file descriptor on a temporary beside ``path`` that replaces it only if the block
    succeeds (pyops.atomic's policy: removed on error, swept if this process dies)."""
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HostFileError(f"cannot create {dest}: {exc.strerror}") from exc
    atomic.sweep(dest.parent)
    with atomic.atomic_path(dest) as tmp_path:
        try:
            fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise HostFileError(f"cannot create {dest}: {exc.strerror}") from exc
        try:
            yield fd, tmp_path
        finally:
            os.close(fd)


def write_disk(
    output: str | os.PathLike[str],
    tree: Tree,
    manifest: Manifest,
    *,
    boot_img: str | os.PathLike[str] | None,
    kernel: str | os.PathLike[str],
    klibs: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]] = (),
    label: str = "",
    uuid: bytes | None = None,
    size: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> DiskInfo:
    """Write a bootable Nanos disk image at ``output``, atomically.

    ``size`` is the total image size in bytes, as Ops's ``BaseVolumeSz``: the file is
    exactly that long (rounded up to a sector), and it is an error if the content does not
    fit.  Without it, the root volume gets 512 KiB to 1 MiB free space at its end, besides
    the 1 MiB reserved gap the kernel needs to be able to write at all.

    ``klibs`` maps klib names to host files (or lists host files, named after the files).
    The kernel's architecture is the disk's: an x86-64 one needs ``boot_img``, an arm64 one
    has none, and the klibs must be built for the same.
    """
    manifest.check_writable()
    kernel_file, arch = kernel_arch(kernel)
    boot = _boot_sectors(arch, boot_img)
    if isinstance(klibs, Mapping):
        klib_map = {name: check_kernel(p, f"klib {name}", arch) for name, p in klibs.items()}
    else:
        klib_map = {Path(p).name: check_kernel(p, "klib", arch) for p in klibs}
    for name in klib_map:
        check_klib_name(name)

    boot_offset = len(boot) + KLOG_SIZE
    root_offset = boot_offset + BOOTFS_SIZE
    boot_root = boot_tuple(kernel_file, klib_map)
    root = root_tuple(tree, manifest.root_items())
    root_size: int | None = None
    if size is not None:
        total = (size + SECTOR - 1) // SECTOR * SECTOR
        root_size = max(total - root_offset, SECTOR)

    try:
        return _write_disk(output, boot, boot_root, root, root_size, size, label, uuid, progress)
    except DiskFull as exc:
        # Only now is the content's size worth adding up, for the message.
        need = root_offset + sum(n.size for _, n in tree.walk() if isinstance(n, File))
        raise atomic.disk_full(output, need) from exc


def check_klib_name(name: str) -> str:
    """``name`` if it can name a klib in the boot filesystem's ``/klib``: a file name, or a
    path below it (``test/lock``: Nanos loads ``/klib/test`` for its in-kernel tests)."""
    parts = name.split("/")
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise InvalidInput(
            f"invalid klib name {name!r}", hint="name a klib file, such as ntp, or test/lock"
        )
    return name


def _boot_sectors(arch: Arch, boot_img: str | os.PathLike[str] | None) -> bytes:
    """What comes before the klog area: boot.img on x86-64, the stub sector on arm64."""
    if arch == Arch.ARM64:
        if boot_img is not None:
            raise InvalidInput(
                f"{os.fspath(boot_img)}: an arm64 disk has no boot.img (qemu loads its kernel)",
                hint="leave out the boot image for an arm64 kernel",
            )
        return boot_sector_stub()
    if boot_img is None:
        raise InvalidInput(
            "an x86-64 disk needs the release's boot.img", hint="install the release again"
        )
    return load_boot_image(boot_img)


def _write_disk(
    output: str | os.PathLike[str],
    boot: bytes,
    boot_root: Root,
    root: Root,
    root_size: int | None,
    size: int | None,
    label: str,
    uuid: bytes | None,
    progress: Progress,
) -> DiskInfo:
    boot_offset = len(boot) + KLOG_SIZE
    root_offset = boot_offset + BOOTFS_SIZE
    with atomic_output(output) as (fd, _tmp):
        os.pwrite(fd, boot, 0)
        try:
            boot_info = write_volume(
                fd, boot_offset, boot_root, size=BOOTFS_SIZE, what="the boot filesystem"
            )
        except FilesystemFull as exc:
            raise FilesystemFull(
                "the kernel and klibs do not fit in the 12 MiB boot filesystem",
                hint="request fewer klibs",
            ) from exc
        try:
            root_info = write_volume(
                fd, root_offset, root, label=label, uuid=uuid, size=root_size, progress=progress
            )
        except FilesystemFull as exc:
            need = root_offset + exc.needed
            raise FilesystemFull(
                f"an image size of {size} bytes is too small: this content needs at least "
                f"{need} bytes ({need / 1048576:.1f} MiB)",
                hint="give a larger size, or none to size the image automatically",
            ) from exc
        end = root_offset + root_info.size
        os.ftruncate(fd, end)
        table = partition_entry(
            PARTITION_LINUX, boot_offset // SECTOR, BOOTFS_SIZE // SECTOR
        ) + partition_entry(PARTITION_LINUX, root_offset // SECTOR, root_info.size // SECTOR)
        os.pwrite(fd, table, PARTITION_TABLE)
    return DiskInfo(Path(output), end, boot_info, root_info, root_offset)


def write_raw_volume(
    output: str | os.PathLike[str],
    tree: Tree,
    manifest: Manifest | None = None,
    *,
    label: str = "",
    uuid: bytes | None = None,
    size: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> VolumeInfo:
    """Write a bare TFS volume (no boot sector), as ``mkfs`` without ``-b``, atomically.

    Such a volume can be attached to a Nanos VM as an extra disk and mounted by label or UUID.
    """
    root = root_tuple(tree, manifest.root_items() if manifest else None)
    with atomic_output(output) as (fd, _tmp):
        info = write_volume(fd, 0, root, label=label, uuid=uuid, size=size, progress=progress)
        os.ftruncate(fd, info.size)
    return info


# --- reading --------------------------------------------------------------------------------


def read_partitions(sector0: bytes) -> list[Partition] | None:
    """The partition entries of an MBR, or None when sector 0 is not an MBR."""
    if len(sector0) < SECTOR or sector0[510:512] != b"\x55\xaa":
        return None
    out = []
    for i in range(4):
        entry = sector0[PARTITION_TABLE + 16 * i : PARTITION_TABLE + 16 * (i + 1)]
        lba, count = struct.unpack_from("<II", entry, 8)
        if lba or count:
            out.append(Partition(i, entry[4], lba, count))
    return out


@dataclass(frozen=True, slots=True)
class DiskImage:
    """A Nanos disk or bare volume opened for reading."""

    path: Path
    size: int
    partitions: tuple[Partition, ...]
    root: Volume
    boot: Volume | None

    @property
    def manifest(self) -> Manifest:
        """The configuration stored in the root tuple."""
        return Manifest.from_root(self.root.root)

    def tree(self) -> Tree:
        """The root filesystem's files."""
        return volume_tree(self.root, os.fspath(self.path))

    def boot_tree(self) -> Tree | None:
        """The boot filesystem's files (kernel and klibs), if this is a bootable disk."""
        if self.boot is None:
            return None
        return volume_tree(self.boot, os.fspath(self.path))


@contextlib.contextmanager
def reading_image(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """The image file at ``path`` open for reading, the host's errors about it (no such
    file, a folder, no permission, a failed read) said as :class:`HostFileError`."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            yield f
    except FileNotFoundError:
        raise HostFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise HostFileError(f"{p} is a directory, not an image") from None
    except OSError as exc:
        raise HostFileError(f"{p}: cannot read it ({exc.strerror})") from exc


def boot_kernel(path: str | os.PathLike[str]) -> tuple[Arch, ImageData]:
    """The architecture of a bootable disk and where its kernel is stored in it (the boot
    filesystem's ``/kernel``), read without reading the root filesystem."""
    from pyops.nanos.tfs import file_extents

    p = Path(path)
    with reading_image(p) as f:
        size = os.fstat(f.fileno()).st_size
        partitions = read_partitions(f.read(SECTOR)) or []
        by_index = {part.index: part for part in partitions}
        first = by_index.get(0)
        boot = by_index.get(1) if first is not None and first.type == PARTITION_ESP else first
        if boot is None or len(partitions) < 2 or boot.offset >= size:
            raise ImageFormatError(f"{p} is not a bootable Nanos disk (no boot filesystem)")
        length = min(boot.sectors * SECTOR, size - boot.offset)
        try:
            volume = read_volume(f, boot.offset, length)
            entry = volume.root.get("children", {}).get("kernel")
            if not isinstance(entry, dict):
                raise ImageFormatError("it holds no kernel")
            extents, file_size = file_extents(entry, boot.offset, length, "/kernel")
        except ImageFormatError as exc:
            raise ImageFormatError(f"{p}: the boot filesystem is unusable: {exc}") from exc
        data = ImageData(os.fspath(p), extents, file_size)
        head = b""
        for _, piece in iter_image_data(f, data, 64):
            head = piece[:20]  # the ELF header is all that is read
            break
    machine = struct.unpack_from("<H", head, 18)[0] if len(head) >= 20 else None
    arch = KERNEL_MACHINES.get(machine or 0) if head[:4] == b"\x7fELF" else None
    if arch is None:
        raise ImageFormatError(f"{p}: the kernel in its boot filesystem is not a Nanos kernel")
    return arch, data


def rewrite_disk(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    manifest: Manifest,
    *,
    directories: Sequence[str] = (),
    progress: Progress = NULL_PROGRESS,
) -> DiskInfo:
    """Write at ``output`` the disk ``source`` is, with ``manifest`` as its root
    configuration and ``directories`` made where missing: the same files, kernel, klibs and
    boot loader (an instance with volumes mounted that its image does not name, for
    example). ``source`` is only read."""
    import tempfile

    from pyops.nanos.tfs import read_file_bytes

    image = open_image(source)
    boot_tree = image.boot_tree()
    boot_part = next((p for p in image.partitions if p.type != PARTITION_ESP), None)
    if boot_tree is None or boot_part is None:
        raise ImageFormatError(f"{source} is not a bootable Nanos disk (no boot filesystem)")
    arch, _ = boot_kernel(source)
    with tempfile.TemporaryDirectory(prefix="pyops-rewrite-") as tmp:
        parts: dict[str, Path] = {}
        for path, node in boot_tree.walk():
            if isinstance(node, File) and isinstance(node.source, ImageData):
                host = Path(tmp, path.strip("/").replace("/", "_"))
                host.write_bytes(read_file_bytes(node.source))
                parts[path] = host
        if "/kernel" not in parts:
            raise ImageFormatError(f"{source}: its boot filesystem holds no kernel")
        boot_img: Path | None = None
        if arch == Arch.AMD64:
            with open(source, "rb") as f:
                loader = bytearray(f.read(boot_part.offset - KLOG_SIZE))
            loader[PARTITION_TABLE : PARTITION_TABLE + 64] = bytes(64)
            boot_img = Path(tmp, "boot.img")
            boot_img.write_bytes(loader)
        klibs = {p.removeprefix("/klib/"): h for p, h in parts.items() if p.startswith("/klib/")}
        tree = image.tree()
        for folder in directories:
            if not tree.exists(folder):
                tree.add_directory(folder)

        def write(size: int | None) -> DiskInfo:
            return write_disk(
                output,
                tree,
                manifest,
                boot_img=boot_img,
                kernel=parts["/kernel"],
                klibs=klibs,
                label=image.root.info.label,
                size=size,
                progress=progress,
            )

        try:
            return write(image.size)  # the room for the guest's writes stays what it was
        except FilesystemFull:
            return write(None)


def open_image(path: str | os.PathLike[str]) -> DiskImage:
    """Open a Nanos disk image (ours or any other writer's) or a bare TFS volume."""
    p = Path(path)
    with reading_image(p) as f:
        return _open(f, p)


def _open(f: BinaryIO, path: Path) -> DiskImage:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    sector0 = f.read(SECTOR)
    partitions = read_partitions(sector0)
    where = f"{path}"
    if partitions is None:
        try:
            root = read_volume(f, 0, size)
        except ImageFormatError as exc:
            raise ImageFormatError(f"{where}: not a Nanos image or TFS volume: {exc}") from exc
        return DiskImage(path, size, (), root, None)
    by_index = {p.index: p for p in partitions}
    first = by_index.get(0)
    if first is not None and first.type == PARTITION_ESP:
        boot_part, root_part = by_index.get(1), by_index.get(2)
    else:
        boot_part, root_part = first, by_index.get(1)
    if root_part is None:
        raise ImageFormatError(f"{where}: the partition table has no root filesystem entry")
    if root_part.offset >= size:
        raise ImageFormatError(f"{where}: the root filesystem starts past the end of the file")
    try:
        # The kernel sizes the root FS from the device, not from the table (init.c).
        root = read_volume(f, root_part.offset, size - root_part.offset)
    except ImageFormatError as exc:
        raise ImageFormatError(f"{where}: the root filesystem is corrupt: {exc}") from exc
    boot = None
    if boot_part is not None:
        length = min(boot_part.sectors * SECTOR, size - boot_part.offset)
        try:
            boot = read_volume(f, boot_part.offset, length)
        except ImageFormatError as exc:
            raise ImageFormatError(f"{where}: the boot filesystem is corrupt: {exc}") from exc
    return DiskImage(path, size, tuple(partitions), root, boot)


# --- resizing -------------------------------------------------------------------------------

RESIZE_ROOM = 2 * 1024 * SECTOR
"""Free room a root filesystem keeps past its content when it is shrunk: the two 1,024-sector
runs the kernel reserves for its log when it mounts the volume (tfs.c
``filesystem_reserve_log_space``), without which the guest cannot write."""


@dataclass(frozen=True, slots=True)
class Resized:
    """What :func:`resize_disk` did."""

    path: Path
    old_size: int
    size: int
    root_offset: int
    minimum: int
    """The smallest size it could have been given: its content and :data:`RESIZE_ROOM`, or
    its old size if that was smaller."""


def content_end(volume: Volume) -> int:
    """Bytes from the start of ``volume`` to the end of its last log extension or file extent:
    everything past it is free space."""
    ends = [1, volume.info.data_end]
    ends += [sector + count for sector, count in volume.info.log_extensions]
    return max(ends) * SECTOR


def resize_disk(path: str | os.PathLike[str], size: int) -> Resized:
    """Make the disk (or bare volume) at ``path`` ``size`` bytes long, rounded up to a sector,
    in place, so that its root filesystem ends at the new end.

    The kernel sizes the root filesystem from the device: its length less the root
    partition's start (nanos ``src/kernel/init.c: rootfs_init``), and TFS records no volume
    size. Growing therefore extends the file (sparsely: the new room is a hole) and sets the
    root partition entry's sector count and end CHS to match, for the other readers of the
    table (Ops's reader, fdisk). Shrinking is refused below the root filesystem's content
    plus :data:`RESIZE_ROOM`. The image is read and checked first; a partition after the
    root filesystem, or a size an MBR cannot describe, is refused.
    """
    p = Path(path)
    image = open_image(p)
    if size <= 0:
        raise InvalidInput(f"cannot resize {p} to {size} bytes", hint="give a positive size")
    new = (size + SECTOR - 1) // SECTOR * SECTOR
    root_offset = image.root.offset
    used = root_offset + content_end(image.root)
    smallest = min(used + RESIZE_ROOM, image.size)
    if new < smallest:
        raise FilesystemFull(
            f"cannot shrink {p} to {new:,} bytes: its root filesystem's files and metadata "
            f"end at {used:,} bytes, and Nanos needs {RESIZE_ROOM // 1048576} MiB free past "
            "them to write",
            hint=f"the smallest size it can have is {smallest:,} bytes ({_mib(smallest)})",
        )
    entry_at: int | None = None
    entry = b""
    if image.partitions:
        root_part = _root_partition(image.partitions)
        if root_part is None or root_part.offset != root_offset:
            raise ImageFormatError(f"{p}: the partition table has no root filesystem entry")
        for other in image.partitions:
            if other is not root_part and other.lba_start >= root_part.lba_start:
                raise ImageFormatError(
                    f"{p}: partition {other.index + 1} lies after the root filesystem; "
                    "pyops resizes only disks whose root filesystem comes last"
                )
        sectors = (new - root_offset) // SECTOR
        if root_part.lba_start + sectors > 0xFFFFFFFF:
            raise InvalidInput(
                f"cannot resize {p} to {new:,} bytes: an MBR partition table describes "
                "disks of 2 TiB at most"
            )
        entry_at = PARTITION_TABLE + 16 * root_part.index
        fields = bytearray(16)
        fields[5:8] = chs(root_part.lba_start + sectors - 1)
        struct.pack_into("<I", fields, 12, sectors)
        entry = bytes(fields)
    try:
        with open(p, "r+b") as f:
            fd = f.fileno()
            if os.fstat(fd).st_size != image.size:
                raise HostFileError(f"{p} changed while it was being resized")
            if new >= image.size:
                with atomic.reporting_disk_full(p, new - image.size):
                    os.ftruncate(fd, new)
            if entry_at is not None:
                _patch_entry(fd, entry_at, entry)
            if new < image.size:
                os.ftruncate(fd, new)
            os.fsync(fd)
    except OSError as exc:
        raise HostFileError(f"cannot resize {p}: {exc.strerror}") from exc
    return Resized(p, image.size, new, root_offset, smallest)


def _root_partition(partitions: Sequence[Partition]) -> Partition | None:
    """The root filesystem's entry, by position as the kernel finds it (storage.h)."""
    by_index = {part.index: part for part in partitions}
    first = by_index.get(0)
    return by_index.get(2 if first is not None and first.type == PARTITION_ESP else 1)


def _patch_entry(fd: int, offset: int, fields: bytes) -> None:
    """Set the end CHS and the sector count of the partition entry at ``offset``; its
    status, type, start and start CHS stay as their writer made them."""
    current = bytearray(os.pread(fd, 16, offset))
    if len(current) != 16:
        raise ImageFormatError("the partition table is truncated")
    current[5:8] = fields[5:8]
    current[12:16] = fields[12:16]
    os.pwrite(fd, bytes(current), offset)


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


__all__ = [
    "BOOTFS_SIZE",
    "KLOG_SIZE",
    "DiskImage",
    "DiskInfo",
    "Partition",
    "Resized",
    "boot_kernel",
    "check_kernel",
    "check_klib_name",
    "load_boot_image",
    "open_image",
    "read_partitions",
    "resize_disk",
    "rewrite_disk",
    "write_disk",
    "write_raw_volume",
]

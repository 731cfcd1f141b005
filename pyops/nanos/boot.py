"""A release's boot parts as the disk writer and the release installer check them: the
``boot.img`` (stage1 and stage2) and the kernel and klib ELF files. Kept apart from the
writer, so that installing a release does not load it."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from pyops.errors import HostFileError, ReleaseError
from pyops.nanos.tree import HostFile

SECTOR = 512
PARTITION_TABLE = 0x1BE
STAGE2_SIZE_FIELD = 0x1B2
REGION_TYPE_FIELD = 0x1BA
REGION_FILESYSTEM = 12


def load_boot_image(path: str | os.PathLike[str]) -> bytes:
    """Read and check a Nanos ``boot.img`` (stage1 + stage2)."""
    p = os.fspath(path)
    try:
        data = Path(p).read_bytes()
    except FileNotFoundError:
        raise ReleaseError(f"{p}: no such file", hint="install a Nanos release") from None
    except OSError as exc:
        raise ReleaseError(f"{p}: cannot read it ({exc.strerror})") from exc
    if len(data) < 2 * SECTOR or data[510:512] != b"\x55\xaa":
        raise ReleaseError(f"{p} is not a Nanos boot.img (no boot sector signature)")
    (region_type,) = struct.unpack_from("<I", data, REGION_TYPE_FIELD)
    (stage2_size,) = struct.unpack_from("<Q", data, STAGE2_SIZE_FIELD)
    if region_type != REGION_FILESYSTEM or SECTOR + stage2_size != len(data):
        raise ReleaseError(
            f"{p} is not a Nanos boot.img (its stage2 size field says {stage2_size} bytes "
            f"but the file holds {len(data) - SECTOR} after the boot sector)"
        )
    if any(data[PARTITION_TABLE : PARTITION_TABLE + 64]):
        raise ReleaseError(f"{p} already has a partition table: it is a disk, not a boot.img")
    return data


def check_kernel(path: str | os.PathLike[str], what: str = "kernel") -> HostFile:
    """Check that ``path`` is an x86-64 ELF file (the kernel or a klib)."""
    source = HostFile.from_path(path)
    try:
        with open(source.path, "rb") as f:
            head = f.read(20)
    except OSError as exc:
        raise HostFileError(f"{source.path}: cannot read it ({exc.strerror})") from exc
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ReleaseError(f"{source.path} is not a Nanos {what} (not an ELF file)")
    machine = struct.unpack_from("<H", head, 18)[0]
    if head[4] != 2 or head[5] != 1 or machine != 62:
        raise ReleaseError(f"{source.path} is not an x86-64 Nanos {what}")
    return source

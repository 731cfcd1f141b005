"""A release's boot parts as the disk writer and the release installer check them: the
``boot.img`` (stage1 and stage2) of x86-64, the boot sector of arm64, and the kernel and klib
ELF files. Kept apart from the writer, so that installing a release does not load it.

An arm64 disk has no boot loader: qemu loads the kernel itself (``-kernel``). Its sector 0
holds only what mkfs reads from Nanos's 512-byte ``boot-stub.img`` (``platform/virt``): a
filesystem region record of length 0 before the partition table, and the 0x55AA signature.
The partitions are filled in as on x86-64, and the kernel finds both filesystems by them.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from pyops.arch import Arch
from pyops.errors import HostFileError, ReleaseError
from pyops.nanos.tree import HostFile

SECTOR = 512
PARTITION_TABLE = 0x1BE
STAGE2_SIZE_FIELD = 0x1B2
REGION_TYPE_FIELD = 0x1BA
REGION_FILESYSTEM = 12
REGION_LENGTH_FIELD = STAGE2_SIZE_FIELD  # in the stub, the region's length: nothing follows

# ELF e_machine of the architectures Nanos runs on.
KERNEL_MACHINES = {62: Arch.AMD64, 183: Arch.ARM64}


def boot_sector_stub() -> bytes:
    """Sector 0 of an arm64 disk before its partitions are filled in."""
    sector = bytearray(SECTOR)
    struct.pack_into("<QI", sector, REGION_LENGTH_FIELD, 0, REGION_FILESYSTEM)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


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


def kernel_arch(path: str | os.PathLike[str], what: str = "kernel") -> tuple[HostFile, Arch]:
    """The host file of a Nanos kernel or klib and the architecture it is built for."""
    source = HostFile.from_path(path)
    try:
        with open(source.path, "rb") as f:
            head = f.read(20)
    except OSError as exc:
        raise HostFileError(f"{source.path}: cannot read it ({exc.strerror})") from exc
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ReleaseError(f"{source.path} is not a Nanos {what} (not an ELF file)")
    machine = struct.unpack_from("<H", head, 18)[0]
    found = KERNEL_MACHINES.get(machine)
    if head[4] != 2 or head[5] != 1 or found is None:
        raise ReleaseError(
            f"{source.path} is not a Nanos {what}: Nanos runs on x86-64 and arm64 only"
        )
    return source, found


def check_kernel(
    path: str | os.PathLike[str], what: str = "kernel", arch: Arch = Arch.AMD64
) -> HostFile:
    """Check that ``path`` is an ELF file (the kernel or a klib) for ``arch``."""
    source, found = kernel_arch(path, what)
    if found != arch:
        raise ReleaseError(
            f"{source.path} is an {found.uname} Nanos {what}, not an {arch.uname} one",
            hint="take the kernel and klibs from one release of the image's architecture",
        )
    return source

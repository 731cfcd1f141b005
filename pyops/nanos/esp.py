"""The EFI System Partition Nanos's ``mkfs -u LOADER`` puts in front of the boot filesystem.

A 33 MiB FAT32 filesystem holding one file, ``\\EFI\\Boot\\BOOTX64.EFI`` (or
``BOOTAA64.EFI``): the UEFI loader, which finds the boot filesystem by the partition table
(entry 0 the ESP, entry 1 the boot filesystem, entry 2 the root filesystem). The geometry is
mkfs's (nanos-image-format.md Appendix C): 512-byte sectors and clusters, 32 reserved
sectors, two FATs of 518 sectors, 67,276 sectors in the filesystem, the root folder in
cluster 2, ``EFI`` in 3, ``EFI/Boot`` in 4 and the loader from cluster 5 on, contiguous.

Unlike mkfs's, this FAT32 is complete and consistent: both FATs are written, the loader's
cluster chain is as long as the loader, the FSInfo sector's counts are right and it has its
backup, and the boot sector's code (never run: firmware reads the filesystem, and BIOS boots
the disk's own stage1) just halts. Its dates are mkfs's, fixed, so the partition is reproducible.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from pyops.errors import HostFileError, InvalidInput

SECTOR = 512
ESP_SIZE = 33 * 1024 * 1024  # large enough for the 65,525 clusters a FAT32 needs
RESERVED_SECTORS = 32
FATS = 2
FAT_SECTORS = 518
TOTAL_SECTORS = 67_276
FSINFO_SECTOR = 1
BACKUP_BOOT_SECTOR = 6
ROOT_CLUSTER, EFI_CLUSTER, BOOT_CLUSTER, FILE_CLUSTER = 2, 3, 4, 5
DATA_SECTOR = RESERVED_SECTORS + FATS * FAT_SECTORS  # cluster 2
CLUSTERS = TOTAL_SECTORS - DATA_SECTOR  # one sector a cluster
MAX_LOADER = (CLUSTERS - (FILE_CLUSTER - ROOT_CLUSTER)) * SECTOR

_END_OF_CHAIN = 0x0FFFFFFF
_ATTR_DIRECTORY, _ATTR_ARCHIVE, _ATTR_LONG_NAME = 0x10, 0x20, 0x0F


def _stamp(year: int, month: int, day: int, hour: int, minute: int, second: int) -> tuple[int, int]:
    """A FAT (time, date)."""
    return (hour << 11) | (minute << 5) | (second // 2), ((year - 1980) << 9) | (month << 5) | day


# The times of mkfs's own entries: EFI in the root folder, and the rest.
_EFI_STAMP = _stamp(2021, 3, 28, 7, 11, 0)
_STAMP = _stamp(2021, 3, 27, 19, 36, 30)
_VOLUME_ID = 0xDF43F99E

# The loader names mkfs accepts, and the names the firmware looks for.
LOADERS = {"bootx64.efi": "BOOTX64 EFI", "bootaa64.efi": "BOOTAA64EFI"}


def loader_name(path: str) -> str:
    """The loader's file name in the ESP (``bootx64.efi`` or ``bootaa64.efi``), by the name
    of ``path``, as mkfs chooses it."""
    for name in LOADERS:
        if path.endswith(name):
            return name
    raise InvalidInput(
        f"invalid UEFI loader file name {path!r}",
        hint="the loader (-u) is a file named bootx64.efi (x86-64) or bootaa64.efi (arm64)",
    )


def read_loader(path: str) -> bytes:
    """The UEFI loader at ``path``, checked to fit in the ESP."""
    loader_name(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise HostFileError(f"{path}: no such file (the UEFI loader, -u)") from None
    except OSError as exc:
        raise HostFileError(f"{path}: cannot read the UEFI loader ({exc.strerror})") from exc
    if not data:
        raise InvalidInput(f"the UEFI loader {path} is empty")
    if len(data) > MAX_LOADER:
        raise InvalidInput(
            f"the UEFI loader {path} is {len(data):,} bytes; the EFI System Partition holds "
            f"at most {MAX_LOADER:,}"
        )
    return data


def boot_sector() -> bytes:
    """Sector 0 (and its backup, sector 6): the FAT32 boot sector and BIOS parameter block."""
    sector = bytearray(SECTOR)
    sector[0:3] = b"\xeb\x58\x90"  # jump over the parameter block, to the code at 0x5A
    sector[3:11] = b"mkfs.fat"
    struct.pack_into(
        "<HBHBHHBHHHII",
        sector,
        11,
        SECTOR,  # bytes a sector
        1,  # sectors a cluster
        RESERVED_SECTORS,
        FATS,
        0,  # root entries (none in FAT32)
        0,  # total sectors, 16-bit
        0xF8,  # media: fixed disk
        0,  # FAT sectors, 16-bit
        32,  # sectors a track
        64,  # heads
        0,  # hidden sectors
        TOTAL_SECTORS,
    )
    struct.pack_into(
        "<IHHIHH", sector, 36, FAT_SECTORS, 0, 0, ROOT_CLUSTER, FSINFO_SECTOR, BACKUP_BOOT_SECTOR
    )
    struct.pack_into("<BBBI", sector, 64, 0x80, 0, 0x29, _VOLUME_ID)
    sector[71:82] = b"NO NAME    "
    sector[82:90] = b"FAT32   "
    sector[90:94] = b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to the hlt
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def fsinfo_sector(free: int, next_free: int) -> bytes:
    """Sector 1 (and its backup, sector 7): FSInfo, with the free cluster count and hint."""
    sector = bytearray(SECTOR)
    sector[0:4] = b"RRaA"
    sector[484:488] = b"rrAa"
    struct.pack_into("<II", sector, 488, free, next_free)
    sector[508:512] = b"\x00\x00\x55\xaa"
    return bytes(sector)


def _short_entry(
    name: bytes, attributes: int, cluster: int, size: int = 0, stamp: tuple[int, int] = _STAMP
) -> bytes:
    time, date = stamp
    return name + struct.pack(
        "<BBBHHHHHHHI",
        attributes,
        0,
        0,
        time,
        date,
        date,
        cluster >> 16,
        time,
        date,
        cluster & 0xFFFF,
        size,
    )


def short_name_checksum(name: bytes) -> int:
    """The checksum a long-name entry carries of its short name (11 bytes)."""
    total = 0
    for byte in name:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _long_entry(name: str, short: bytes) -> bytes:
    """The one long-name entry of a name of at most 13 characters."""
    chars = [ord(c) for c in name]
    if len(chars) < 13:
        chars += [0] + [0xFFFF] * (12 - len(chars))
    units = struct.pack("<13H", *chars)
    checksum = short_name_checksum(short)
    return (
        bytes([0x41])
        + units[0:10]
        + bytes([_ATTR_LONG_NAME, 0, checksum])
        + units[10:22]
        + b"\x00\x00"
        + units[22:26]
    )


def _folder(entries: list[bytes]) -> bytes:
    data = b"".join(entries)
    return data + bytes(SECTOR - len(data))


def _cluster_offset(cluster: int) -> int:
    return (DATA_SECTOR + cluster - ROOT_CLUSTER) * SECTOR


def layout(loader: bytes, name: str) -> list[tuple[int, bytes]]:
    """The ESP's non-zero pieces, as (offset in the partition, bytes), for the loader
    ``loader`` stored as ``name`` (``bootx64.efi`` or ``bootaa64.efi``)."""
    short = LOADERS[name].encode("ascii")
    clusters = (len(loader) + SECTOR - 1) // SECTOR
    last = FILE_CLUSTER + clusters - 1
    fat = [0x0FFFFFF8, _END_OF_CHAIN, 0x0FFFFFF8, _END_OF_CHAIN, _END_OF_CHAIN]
    fat += list(range(FILE_CLUSTER + 1, last + 1)) + [_END_OF_CHAIN]
    fat_bytes = struct.pack(f"<{len(fat)}I", *fat)
    used = len(fat) - ROOT_CLUSTER
    info = fsinfo_sector(CLUSTERS - used, last + 1)
    root = _folder([_short_entry(b"EFI        ", _ATTR_DIRECTORY, EFI_CLUSTER, stamp=_EFI_STAMP)])
    efi = _folder(
        [
            _short_entry(b".          ", _ATTR_DIRECTORY, EFI_CLUSTER),
            _short_entry(b"..         ", _ATTR_DIRECTORY, 0),
            _long_entry("Boot", b"BOOT       "),
            _short_entry(b"BOOT       ", _ATTR_DIRECTORY, BOOT_CLUSTER),
        ]
    )
    boot = _folder(
        [
            _short_entry(b".          ", _ATTR_DIRECTORY, BOOT_CLUSTER),
            _short_entry(b"..         ", _ATTR_DIRECTORY, EFI_CLUSTER),
            _long_entry(name, short),
            _short_entry(short, _ATTR_ARCHIVE, FILE_CLUSTER, len(loader)),
        ]
    )
    sector0 = boot_sector()
    pieces = [
        (0, sector0),
        (FSINFO_SECTOR * SECTOR, info),
        (BACKUP_BOOT_SECTOR * SECTOR, sector0),
        ((BACKUP_BOOT_SECTOR + 1) * SECTOR, info),
    ]
    for i in range(FATS):
        pieces.append(((RESERVED_SECTORS + i * FAT_SECTORS) * SECTOR, fat_bytes))
    pieces += [
        (_cluster_offset(ROOT_CLUSTER), root),
        (_cluster_offset(EFI_CLUSTER), efi),
        (_cluster_offset(BOOT_CLUSTER), boot),
        (_cluster_offset(FILE_CLUSTER), loader),
    ]
    return pieces


def write_esp(fd: int, offset: int, loader: bytes, path: str) -> None:
    """Write the ESP holding ``loader`` (read from ``path``, which names it) at byte
    ``offset`` of ``fd``; the rest of its :data:`ESP_SIZE` bytes is left as holes."""
    for at, data in layout(loader, loader_name(path)):
        os.pwrite(fd, data, offset + at)


__all__ = [
    "ESP_SIZE",
    "LOADERS",
    "MAX_LOADER",
    "boot_sector",
    "layout",
    "loader_name",
    "read_loader",
    "short_name_checksum",
    "write_esp",
]

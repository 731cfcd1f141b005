"""The EFI System Partition of ``mkfs -u``: a FAT32 filesystem a reader finds the loader in."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from pyops.errors import InvalidInput
from pyops.nanos import esp


def partition(loader: bytes, name: str = "bootx64.efi") -> bytes:
    data = bytearray(esp.ESP_SIZE)
    for at, piece in esp.layout(loader, name):
        data[at : at + len(piece)] = piece
    return bytes(data)


def read_fat32(data: bytes, path: list[str]) -> bytes:
    """A file of a FAT32 filesystem, found the way firmware finds it: through the boot
    sector's geometry, the directories' long names and the first FAT's cluster chains."""
    (sector, per_cluster, reserved, fats) = struct.unpack_from("<HBHB", data, 11)
    (fat_sectors,) = struct.unpack_from("<I", data, 36)
    (root_cluster,) = struct.unpack_from("<I", data, 44)
    assert data[510:512] == b"\x55\xaa" and data[82:90] == b"FAT32   "
    fat_at = reserved * sector
    data_at = (reserved + fats * fat_sectors) * sector
    cluster_bytes = sector * per_cluster

    def chain(first: int) -> bytes:
        out = bytearray()
        cluster = first
        while cluster < 0x0FFFFFF8:
            at = data_at + (cluster - 2) * cluster_bytes
            out += data[at : at + cluster_bytes]
            (cluster,) = struct.unpack_from("<I", data, fat_at + 4 * cluster)
            cluster &= 0x0FFFFFFF
        return bytes(out)

    cluster, size = root_cluster, 0
    for name in path:
        folder = chain(cluster)
        long = ""
        for i in range(0, len(folder), 32):
            entry = folder[i : i + 32]
            if entry[0] == 0:
                break
            if entry[11] == 0x0F:
                units = entry[1:11] + entry[14:26] + entry[28:32]
                long = units.decode("utf-16-le").split("\0")[0]
                continue
            short = entry[:11].decode("ascii")
            if name in (long, short.strip()):
                hi, lo = (
                    struct.unpack_from("<H", entry, 20)[0],
                    struct.unpack_from("<H", entry, 26)[0],
                )
                cluster, size = hi << 16 | lo, struct.unpack_from("<I", entry, 28)[0]
                break
            long = ""
        else:
            raise AssertionError(f"{name} not found")
    return chain(cluster)[:size]


@pytest.mark.parametrize(
    ("name", "size"), [("bootx64.efi", 158_436), ("bootaa64.efi", 1), ("bootx64.efi", 512)]
)
def test_the_loader_is_found_as_firmware_finds_it(name: str, size: int) -> None:
    loader = os.urandom(size)
    data = partition(loader, name)
    assert read_fat32(data, ["EFI", "Boot", name]) == loader
    assert read_fat32(data, ["EFI", "BOOT", esp.LOADERS[name]]) == loader  # by short names
    # the two FATs agree, and FSInfo counts what is free
    fat = 32 * 512
    assert data[fat : fat + 518 * 512] == data[fat + 518 * 512 : fat + 2 * 518 * 512]
    free, next_free = struct.unpack_from("<II", data, 512 + 488)
    clusters = (size + 511) // 512
    assert next_free == 5 + clusters and free == esp.CLUSTERS - 3 - clusters
    assert data[6 * 512 : 7 * 512] == data[:512]


def test_long_names_carry_the_short_names_checksums() -> None:
    assert esp.short_name_checksum(b"BOOT       ") == 0xDD
    assert esp.short_name_checksum(b"BOOTX64 EFI") == 0x1D


def test_the_geometry_is_mkfs_s() -> None:
    data = partition(b"x")
    assert data[:3] == b"\xeb\x58\x90" and data[3:11] == b"mkfs.fat"
    assert struct.unpack_from("<I", data, 32)[0] == 67_276
    assert struct.unpack_from("<I", data, 36)[0] == 518
    assert data[0x85800:0x85803] == b"EFI"  # the root folder, at cluster 2
    assert data[0x85E00:0x85E01] == b"x"  # the loader, at cluster 5


def test_loaders_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="invalid UEFI loader file name"):
        esp.read_loader(str(tmp_path / "loader.efi"))
    (tmp_path / "bootx64.efi").write_bytes(b"")
    with pytest.raises(InvalidInput, match="is empty"):
        esp.read_loader(str(tmp_path / "bootx64.efi"))
    with open(tmp_path / "bootx64.efi", "wb") as f:
        f.truncate(esp.MAX_LOADER + 1)
    with pytest.raises(InvalidInput, match="holds at most"):
        esp.read_loader(str(tmp_path / "bootx64.efi"))
    with open(tmp_path / "bootx64.efi", "wb") as f:
        f.truncate(esp.MAX_LOADER)
    assert len(esp.read_loader(str(tmp_path / "bootx64.efi"))) == esp.MAX_LOADER

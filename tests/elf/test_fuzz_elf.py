"""Fuzzing the ELF reader: a host program (/bin/true) and small hand-made ELF files, with
bytes flipped, set, truncated, spliced, and header fields set to extreme values, read by
read_elf and read_version_definitions, and resolved as a program of a root. Only a
PyopsError may come out."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyops.elf.ldd import resolve
from pyops.elf.reader import read_elf, read_version_definitions
from pyops.errors import PyopsError
from tests.elf.test_hostile_elf import make_elf

HAND_MADE = [
    make_elf(needed=["liba.so", "libb.so"], interp="/lib/ld.so", soname="me", rpath="/x"),
    make_elf(needed=["liba.so"], runpath="$ORIGIN/../lib", elf_class=32),
    make_elf(needed=["liba.so"], interp="/lib/ld.so", little_endian=False),
    make_elf(needed=["/abs/lib.so", "liba.so"], elf_type=2),
]

EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 63, (1 << 64) - 1]


def host_seed() -> bytes | None:
    true = shutil.which("true") or "/bin/true"
    try:
        with open(os.path.realpath(true), "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return None
    return data if data[:4] == b"\x7fELF" else None


edits = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.one_of(st.integers(0, 127), st.integers(0, 1 << 20)),  # header, or anywhere
        st.integers(0, 255),
        st.sampled_from(EXTREMES),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, changes: list[tuple[int, int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, value, extreme in changes:
        if not out:
            break
        i = position % len(out)
        if kind == 0:
            out[i] ^= value or 1
        elif kind == 1:
            out[i] = value
        elif kind == 2:
            del out[i:]
        elif kind == 3:  # an extreme 2-, 4- or 8-byte field, in either byte order
            width = (2, 4, 8)[value % 3]
            order = "<>"[value >> 7 & 1]
            raw = struct.pack(order + "HIQ"[value % 3], extreme & ((1 << 8 * width) - 1))
            out[i : i + width] = raw
        elif kind == 4:  # splice a run from elsewhere
            j = (position * 7 + value) % len(out)
            run = out[j : j + 1 + value % 32]
            out[i : i + len(run)] = run
        else:
            del out[i : i + 1 + value % 8]
    return bytes(out)


def read_all(path: Path, root: Path) -> None:
    for reader in (read_elf, read_version_definitions):
        try:
            reader(path)
        except PyopsError:
            pass
    try:
        resolve("/bin/app", root, allow_missing=True, include_runtime_extras=True)
    except PyopsError:
        pass


def fuzz(seed: bytes, tmp_path: Path, examples: int) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "lib").mkdir(exist_ok=True)
    (root / "lib/liba.so").write_bytes(make_elf(soname="liba.so"))
    path = root / "bin/app"

    @settings(max_examples=examples, deadline=None)
    @given(edits)
    def run(changes: list[tuple[int, int, int, int]]) -> None:
        path.write_bytes(mutate(seed, changes))
        read_all(path, root)

    run()


@pytest.mark.parametrize("index", range(len(HAND_MADE)))
def test_mutated_hand_made_elf(index: int, tmp_path: Path) -> None:
    fuzz(HAND_MADE[index], tmp_path, 75)


def test_mutated_host_program(tmp_path: Path) -> None:
    seed = host_seed()
    if seed is None:
        pytest.skip("no ELF /bin/true on this host")
    fuzz(seed, tmp_path, 250)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_headers(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x"
        path.write_bytes(b"\x7fELF" + data)
        for reader in (read_elf, read_version_definitions):
            try:
                reader(path)
            except PyopsError:
                pass

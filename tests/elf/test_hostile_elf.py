"""Hostile ELF files: a small builder of dynamic ELF files, and the reader's bounds.

:func:`make_elf` writes a minimal x86-64 (or other) ELF file with a dynamic table, which
the resolver tests (``test_hostile_ldd``) and the ELF fuzzer use as well.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from pyops.elf.reader import read_elf, read_version_definitions
from pyops.errors import LimitExceeded, NotAnElf

EM_X86_64 = 62
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29


def make_elf(
    *,
    needed: Sequence[str] = (),
    interp: str | None = None,
    soname: str | None = None,
    rpath: str | None = None,
    runpath: str | None = None,
    elf_type: int = 3,
    machine: int = EM_X86_64,
    elf_class: int = 64,
    little_endian: bool = True,
    interp_size: int | None = None,
    extra: bytes = b"",
    runpath_tags: int = 1,
) -> bytes:
    """A dynamic ELF file: header, program headers, interpreter, strings, dynamic table.

    One PT_LOAD maps the whole file at address 0, so addresses are file offsets. Repeated
    ``needed`` names share one string. ``interp_size`` overrides PT_INTERP's p_filesz;
    ``extra`` is appended (for example loader strings to scan); ``runpath_tags`` repeats the
    DT_RUNPATH entry.
    """
    order = "<" if little_endian else ">"
    wide = elf_class == 64
    ehsize, phentsize = (64, 56) if wide else (52, 32)
    nph = 2 + (interp is not None)
    strings = bytearray(b"\0")
    offsets: dict[str, int] = {}

    def add(text: str) -> int:
        if text not in offsets:
            offsets[text] = len(strings)
            strings.extend(os.fsencode(text) + b"\0")
        return offsets[text]

    tags: list[tuple[int, int]] = [(DT_NEEDED, add(name)) for name in needed]
    if soname is not None:
        tags.append((DT_SONAME, add(soname)))
    if rpath is not None:
        tags.append((DT_RPATH, add(rpath)))
    if runpath is not None:
        tags += [(DT_RUNPATH, add(runpath))] * runpath_tags
    interp_bytes = os.fsencode(interp) + b"\0" if interp is not None else b""
    interp_off = ehsize + nph * phentsize
    str_off = interp_off + len(interp_bytes)
    dyn_off = str_off + len(strings)
    dyn_off += -dyn_off % 8
    tags += [(DT_STRTAB, str_off), (DT_STRSZ, len(strings)), (DT_NULL, 0)]
    dyn = b"".join(struct.pack(order + ("qQ" if wide else "iI"), t, v) for t, v in tags)
    total = dyn_off + len(dyn) + len(extra)

    def phdr(p_type: int, offset: int, size: int) -> bytes:
        if wide:
            return struct.pack(order + "IIQQQQQQ", p_type, 4, offset, offset, offset, size, size, 8)
        return struct.pack(order + "IIIIIIII", p_type, offset, offset, offset, size, size, 4, 4)

    headers = phdr(PT_LOAD, 0, total) + phdr(PT_DYNAMIC, dyn_off, len(dyn))
    if interp is not None:
        size = len(interp_bytes) if interp_size is None else interp_size
        headers += phdr(PT_INTERP, interp_off, size)
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if little_endian else 2, 1, 0]) + bytes(8)
    if wide:
        header = ident + struct.pack(
            order + "HHIQQQIHHHHHH", elf_type, machine, 1, 0, ehsize, 0, 0, ehsize,
            phentsize, nph, 64, 0, 0,
        )  # fmt: skip
    else:
        header = ident + struct.pack(
            order + "HHIIIIIHHHHHH", elf_type, machine, 1, 0, ehsize, 0, 0, ehsize,
            phentsize, nph, 40, 0, 0,
        )  # fmt: skip
    out = bytearray(header + headers + interp_bytes + strings)
    out += bytes(dyn_off - len(out))
    out += dyn + extra
    return bytes(out)


def write_elf(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_the_builder_makes_files_the_reader_understands(tmp_path: Path) -> None:
    for elf_class in (32, 64):
        for little in (True, False):
            data = make_elf(
                needed=["liba.so", "libb.so"],
                interp="/lib/ld.so",
                soname="libme.so",
                runpath="/opt",
                elf_class=elf_class,
                little_endian=little,
            )
            info = read_elf(write_elf(tmp_path / f"e{elf_class}{little}", data))
            assert info.needed == ("liba.so", "libb.so")
            assert info.interpreter == "/lib/ld.so"
            assert (info.soname, info.runpath, info.elf_class) == ("libme.so", "/opt", elf_class)


def test_sixty_thousand_needed_entries_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_elf(tmp_path / "many", make_elf(needed=["libx.so"] * 60_000))
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_NEEDED"):
        read_elf(path)
    # Raised, the entries are read, their one string once.
    monkeypatch.setenv("PYOPS_LIMIT_NEEDED", "100000")
    info = read_elf(path)
    assert len(info.needed) == 60_000 and set(info.needed) == {"libx.so"}


def test_needed_limit_is_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_elf(tmp_path / "few", make_elf(needed=[f"lib{i}.so" for i in range(5)]))
    monkeypatch.setenv("PYOPS_LIMIT_NEEDED", "4")
    with pytest.raises(LimitExceeded):
        read_elf(path)
    monkeypatch.setenv("PYOPS_LIMIT_NEEDED", "5")
    assert len(read_elf(path).needed) == 5


def test_huge_pt_interp_is_refused_without_reading_it(tmp_path: Path) -> None:
    # A 1 GB PT_INTERP in a sparse file: refused as Linux refuses it (over PATH_MAX).
    path = write_elf(tmp_path / "big", make_elf(interp="/lib/ld.so", interp_size=1 << 30))
    os.truncate(path, 1 << 31)
    with pytest.raises(NotAnElf, match="PT_INTERP"):
        read_elf(path)


def test_program_header_size_must_be_exact(tmp_path: Path) -> None:
    data = bytearray(make_elf(needed=["liba.so"]))
    struct.pack_into("<H", data, 54, 0xFFFF)  # e_phentsize
    path = write_elf(tmp_path / "odd", bytes(data))
    with pytest.raises(NotAnElf, match="program header"):
        read_elf(path)
    with pytest.raises(NotAnElf):
        read_version_definitions(path)


def test_truncated_and_empty_files(tmp_path: Path) -> None:
    data = make_elf(needed=["liba.so"], interp="/lib/ld.so")
    for n in (0, 3, 4, 16, 40, 64, 100, len(data) - 20):
        path = write_elf(tmp_path / f"cut{n}", data[:n])
        with pytest.raises(NotAnElf):
            read_elf(path)


def test_long_names_and_many_search_paths_are_bounded(tmp_path: Path) -> None:
    # A DT_NEEDED name longer than PATH_MAX cannot be opened: the file is refused.
    path = write_elf(tmp_path / "long", make_elf(needed=["a" * 5000]))
    with pytest.raises(NotAnElf, match="too long"):
        read_elf(path)
    assert read_elf(write_elf(tmp_path / "ok", make_elf(needed=["a" * 4000]))).needed
    # Thousands of DT_RUNPATH tags (each 60 KB) joined: refused, not gigabytes of text.
    data = make_elf(runpath="/r" * 30_000, runpath_tags=3000)
    with pytest.raises(NotAnElf, match="search paths"):
        read_elf(write_elf(tmp_path / "paths", data))

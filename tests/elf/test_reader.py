"""Reading ELF facts: compiled programs and libraries, and every kind of bad file."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyops.elf.reader import (
    DF_1_PIE,
    check_machine,
    normalize_machine,
    read_elf,
    read_version_definitions,
)
from pyops.errors import ElfMismatch, HostFileError, NotAnElf

HELLO = "int dep(void);\nint main(void) { return dep(); }\n"
LIB = "int dep(void) { return 0; }\n"


def build(cc: str, tmp: Path, name: str, source: str, *flags: str) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    subprocess.run([cc, "-o", str(out), str(src), *flags], check=True)
    return out


def readelf(path: Path, *flags: str) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    return subprocess.run(
        ["readelf", "-W", *flags, str(path)], capture_output=True, text=True, check=True
    ).stdout


def test_dynamic_program_and_library(cc: str, tmp_path: Path) -> None:
    lib = build(cc, tmp_path, "libdep.so.1", LIB, "-shared", "-fPIC", "-Wl,-soname,libdep.so.1")
    prog = build(
        cc,
        tmp_path,
        "prog",
        HELLO,
        str(lib),
        "-Wl,--enable-new-dtags,-rpath,/opt/a:$ORIGIN/../lib",
    )
    info = read_elf(prog)
    dynamic = readelf(prog, "-d")
    interp = readelf(prog, "-l").split("Requesting program interpreter: ")[1].split("]")[0]
    assert info.interpreter == interp
    assert info.needed == tuple(
        line.split("[")[1].split("]")[0] for line in dynamic.splitlines() if "(NEEDED)" in line
    )
    assert "libdep.so.1" in info.needed
    assert info.runpath == "/opt/a:$ORIGIN/../lib"
    assert info.rpath is None
    assert info.elf_class == (64 if "ELF64" in readelf(prog, "-h") else 32)
    assert not info.is_static

    lib_info = read_elf(lib)
    assert lib_info.soname == "libdep.so.1"
    assert lib_info.elf_type == "ET_DYN"
    assert lib_info.interpreter is None
    assert lib_info.machine == info.machine


def test_rpath_with_old_dtags(cc: str, tmp_path: Path) -> None:
    lib = build(cc, tmp_path, "libdep.so", LIB, "-shared", "-fPIC")
    prog = build(cc, tmp_path, "prog", HELLO, str(lib), "-Wl,--disable-new-dtags,-rpath,/x:/y")
    info = read_elf(prog)
    assert info.rpath == "/x:/y"
    assert info.runpath is None


def test_static_and_static_pie(cc: str, tmp_path: Path) -> None:
    source = "int main(void) { return 0; }\n"
    try:
        static = build(cc, tmp_path, "static", source, "-static")
        static_pie = build(cc, tmp_path, "static-pie", source, "-static-pie")
    except subprocess.CalledProcessError:
        pytest.skip("no static C library (libc6-dev's libc.a)")
    info = read_elf(static)
    assert info.is_static and info.interpreter is None and not info.dynamic
    pie = read_elf(static_pie)
    # static-pie: a dynamic section, no interpreter, no DT_NEEDED (ldd: "statically linked").
    assert pie.is_static and pie.dynamic and pie.is_pie
    assert pie.flags_1 & DF_1_PIE


def test_version_definitions_of_a_library(cc: str, tmp_path: Path) -> None:
    script = tmp_path / "v.map"
    script.write_text("V_1 { global: dep; local: *; };\nV_2 { } V_1;\n")
    lib = build(cc, tmp_path, "libv.so", LIB, "-shared", "-fPIC", f"-Wl,--version-script={script}")
    names = read_version_definitions(lib)
    assert names[1:] == ("V_1", "V_2")
    assert read_version_definitions(build(cc, tmp_path, "plain.so", LIB, "-shared")) == ()


def test_not_an_elf(tmp_path: Path) -> None:
    text = tmp_path / "libc.so"
    text.write_text("/* GNU ld script */\nGROUP ( libc.so.6 )\n")
    with pytest.raises(NotAnElf, match="not an ELF"):
        read_elf(text)
    script = tmp_path / "run"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(NotAnElf, match="script") as caught:
        read_elf(script)
    assert caught.value.hint
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(NotAnElf):
        read_elf(empty)


@pytest.mark.parametrize("length", [4, 16, 40, 64, 300])
def test_truncated(cc: str, tmp_path: Path, length: int) -> None:
    prog = build(cc, tmp_path, "prog", "int main(void){return 0;}\n")
    cut = tmp_path / "cut"
    cut.write_bytes(prog.read_bytes()[:length])
    with pytest.raises(NotAnElf, match="truncated|corrupt"):
        read_elf(cut)


def test_corrupt_header_fields(cc: str, tmp_path: Path) -> None:
    data = bytearray(build(cc, tmp_path, "prog", "int main(void){return 0;}\n").read_bytes())
    bad_class = tmp_path / "bad-class"
    bad_class.write_bytes(bytes(data[:4]) + b"\x07" + bytes(data[5:]))
    with pytest.raises(NotAnElf, match="EI_CLASS"):
        read_elf(bad_class)
    # e_phoff (offset 32 in ELF64) far past the end of the file.
    far = bytearray(data)
    struct.pack_into("<Q", far, 32, len(data) * 4)
    bad_phoff = tmp_path / "bad-phoff"
    bad_phoff.write_bytes(bytes(far))
    with pytest.raises(NotAnElf, match="past its end"):
        read_elf(bad_phoff)


def test_unreadable(tmp_path: Path) -> None:
    with pytest.raises(HostFileError):
        read_elf(tmp_path / "nothing")
    with pytest.raises(HostFileError):
        read_elf(tmp_path)


def test_machines(cc: str, tmp_path: Path) -> None:
    assert normalize_machine("amd64") == normalize_machine("x86_64") == "EM_X86_64"
    assert normalize_machine("arm64") == normalize_machine("EM_AARCH64") == "EM_AARCH64"
    with pytest.raises(ElfMismatch):
        normalize_machine("pdp11")
    info = read_elf(build(cc, tmp_path, "prog", "int main(void){return 0;}\n"))
    check_machine(info, info.machine)
    other = "arm64" if info.machine != "EM_AARCH64" else "x86_64"
    with pytest.raises(ElfMismatch, match="not for"):
        check_machine(info, other)


def test_foreign_machine_is_described(cc: str, tmp_path: Path) -> None:
    data = bytearray(build(cc, tmp_path, "lib.so", LIB, "-shared", "-fPIC").read_bytes())
    order = "<" if data[5] == 1 else ">"
    struct.pack_into(order + "H", data, 18, 183)  # e_machine = EM_AARCH64
    foreign = tmp_path / "foreign.so"
    foreign.write_bytes(bytes(data))
    assert read_elf(foreign).machine == "EM_AARCH64"

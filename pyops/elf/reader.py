"""Facts about one ELF file: class, byte order, machine, interpreter and dynamic tags.

This is the only module that imports pyelftools. The ELF header is decoded with
pyelftools' structure definitions (``ELFStructs``), which name the machine, OS ABI and
type; the fixed integer records after it (program headers, dynamic entries, version
definitions) are decoded with :mod:`struct`. Only the bytes needed are read, with
``os.pread``: pyelftools' ``ELFFile`` and ``DynamicSegment`` walk every section header of
the file, which costs milliseconds per library, and a resolver reads hundreds of them.

Every failure (a file that is not ELF, a truncated one, an unreadable one) leaves this
module as a :class:`~pyops.errors.PyopsError`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.structs import ELFStructs

from pyops.errors import ElfMismatch, HostFileError, NotAnElf
from pyops.limits import NEEDED
from pyops.rootfs import Window

__all__ = [
    "DF_1_NODEFLIB",
    "DF_1_PIE",
    "ElfInfo",
    "check_machine",
    "normalize_machine",
    "read_elf",
    "read_version_definitions",
]

ELF_MAGIC = b"\x7fELF"

# Dynamic tag values (ELF gABI; glibc elf/elf.h).
_DT_NULL = 0
_DT_NEEDED = 1
_DT_STRTAB = 5
_DT_STRSZ = 10
_DT_SONAME = 14
_DT_RPATH = 15
_DT_RUNPATH = 29
_DT_FLAGS_1 = 0x6FFFFFFB
_DT_VERDEF = 0x6FFFFFFC
_DT_VERDEFNUM = 0x6FFFFFFD

DF_1_NODEFLIB = 0x00000800
"""``DT_FLAGS_1`` bit: do not search the default directories (``-z nodeflib``)."""
DF_1_PIE = 0x08000000
"""``DT_FLAGS_1`` bit: the object is a position-independent executable."""

# Program header types.
_PT_LOAD = 1
_PT_DYNAMIC = 2
_PT_INTERP = 3

# Upper bounds that keep a corrupt header from making us read gigabytes.
_MAX_PHNUM = 4096
_MAX_DYN_ENTRIES = 65536
_MAX_STRING = 65536
_MAX_NAME = 4096  # PATH_MAX: no file of a longer name can be opened (DT_NEEDED, DT_SONAME)
_MAX_INTERP = 4096  # PATH_MAX: Linux refuses a longer PT_INTERP (fs/binfmt_elf.c)

# Names users give for an architecture, mapped to the ELF e_machine name.
_MACHINE_ALIASES = {
    "x86_64": "EM_X86_64",
    "amd64": "EM_X86_64",
    "x86-64": "EM_X86_64",
    "aarch64": "EM_AARCH64",
    "arm64": "EM_AARCH64",
    "i386": "EM_386",
    "i686": "EM_386",
    "386": "EM_386",
    "arm": "EM_ARM",
    "armhf": "EM_ARM",
    "riscv64": "EM_RISCV",
    "ppc64le": "EM_PPC64",
    "ppc64": "EM_PPC64",
    "s390x": "EM_S390",
}


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """What a loader needs to know about one ELF file."""

    path: str
    """The path the file was read from (as given, for messages)."""
    elf_class: int
    """32 or 64 (``EI_CLASS``)."""
    little_endian: bool
    """``EI_DATA``: True for ``ELFDATA2LSB``."""
    machine: str
    """``e_machine`` as its ELF name, for example ``EM_X86_64`` (``EM_<n>`` if unknown)."""
    osabi: str
    """``EI_OSABI`` as its ELF name, for example ``ELFOSABI_SYSV``."""
    elf_type: str
    """``e_type``: ``ET_EXEC``, ``ET_DYN``, ..."""
    interpreter: str | None
    """The ``PT_INTERP`` path, or None."""
    dynamic: bool
    """Whether there is a ``PT_DYNAMIC`` segment."""
    needed: tuple[str, ...]
    """``DT_NEEDED`` names, in order."""
    soname: str | None
    """``DT_SONAME``."""
    rpath: str | None
    """``DT_RPATH``, unsplit (several tags are joined with ``:``)."""
    runpath: str | None
    """``DT_RUNPATH``, unsplit."""
    flags_1: int
    """``DT_FLAGS_1`` (0 if absent)."""

    @property
    def is_static(self) -> bool:
        """True when the kernel runs the file without a dynamic loader."""
        return self.interpreter is None and not self.needed

    @property
    def is_pie(self) -> bool:
        """True for a position-independent executable (``DF_1_PIE``)."""
        return bool(self.flags_1 & DF_1_PIE)


def normalize_machine(machine: str) -> str:
    """Turn ``x86_64``, ``amd64``, ``arm64``, ``EM_AARCH64``... into the ELF ``EM_*`` name."""
    value = machine.strip()
    if value.upper().startswith("EM_"):
        return value.upper()
    try:
        return _MACHINE_ALIASES[value.lower()]
    except KeyError:
        known = ", ".join(sorted(_MACHINE_ALIASES))
        raise ElfMismatch(
            f"unknown machine {machine!r}", hint=f"use one of: {known}, or an EM_* name"
        ) from None


def check_machine(info: ElfInfo, machine: str) -> None:
    """Raise :class:`ElfMismatch` unless ``info`` is for ``machine`` (an alias or EM_ name)."""
    wanted = normalize_machine(machine)
    if info.machine != wanted:
        raise ElfMismatch(
            f"{info.path} is an ELF for {info.machine}, not for {wanted}",
            hint="build the program for the target machine, or pass the matching --machine",
        )


@lru_cache(maxsize=8)
def _basic_structs(little_endian: bool, elf_class: int) -> Any:
    # Building ELFStructs costs a fraction of a millisecond; keep one per layout.
    structs = ELFStructs(little_endian=little_endian, elfclass=elf_class)
    structs.create_basic_structs()
    return structs


@lru_cache(maxsize=8)
def _layouts(little_endian: bool, elf_class: int) -> tuple[struct.Struct, struct.Struct]:
    # Program headers and dynamic entries are fixed records of integers (ELF gABI). pyelftools'
    # construct parser takes ~10 us per record, struct well under one: a resolver reads
    # tens of thousands of them, so they are decoded here; the header, whose fields have
    # names (machine, OS ABI, type), still goes through pyelftools.
    order = "<" if little_endian else ">"
    if elf_class == 64:
        # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        phdr = struct.Struct(order + "IIQQQQQQ")
        dyn = struct.Struct(order + "qQ")
    else:
        # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
        phdr = struct.Struct(order + "IIIIIIII")
        dyn = struct.Struct(order + "iI")
    return phdr, dyn


def _program_headers(
    reader: _Reader, header: Any, little_endian: bool, elf_class: int
) -> list[tuple[int, int, int, int]]:
    """(p_type, p_offset, p_vaddr, p_filesz) of each program header."""
    phdr, _ = _layouts(little_endian, elf_class)
    phnum = header["e_phnum"]
    phentsize = header["e_phentsize"]
    # The kernel and the loader accept only their own entry size (fs/binfmt_elf.c).
    if phnum > _MAX_PHNUM or (phnum and phentsize != phdr.size):
        raise NotAnElf(f"{reader.name} is a corrupt ELF file (bad program header table)")
    table = reader.read(header["e_phoff"], phnum * phentsize, "the program headers")
    out = []
    for index in range(phnum):
        fields = phdr.unpack_from(table, index * phentsize)
        if elf_class == 64:
            out.append((fields[0], fields[2], fields[3], fields[5]))
        else:
            out.append((fields[0], fields[1], fields[2], fields[4]))
    return out


class _Reader:
    """Bounded reads at offsets of one open file, failing as a truncated ELF."""

    def __init__(self, fd: int, size: int, name: str, base: int = 0) -> None:
        self.fd = fd
        self.size = size
        self.name = name
        self.base = base  # where the ELF file starts in the open file (a layer's tar)

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise NotAnElf(
                f"{self.name} is a truncated or corrupt ELF file ({what} lies past its end)"
            )
        data = os.pread(self.fd, length, self.base + offset)
        if len(data) != length:
            raise NotAnElf(f"{self.name} is a truncated ELF file (short read of {what})")
        return data

    def string(self, offset: int, what: str, limit: int = _MAX_STRING) -> str:
        if offset < 0 or offset >= self.size:
            raise NotAnElf(f"{self.name} is a corrupt ELF file ({what} lies past its end)")
        chunk = b""
        pos = offset
        while True:
            part = os.pread(self.fd, min(256, self.size - pos), self.base + pos)
            if not part:
                raise NotAnElf(f"{self.name} is a truncated ELF file ({what} is not terminated)")
            end = part.find(b"\0")
            if end >= 0:
                chunk += part[:end]
                break
            chunk += part
            pos += len(part)
            if len(chunk) > limit:
                raise NotAnElf(f"{self.name} is a corrupt ELF file ({what} is too long)")
        # Names in dynamic tables are bytes; surrogateescape keeps odd ones round-trippable.
        return chunk.decode("utf-8", "surrogateescape")


def _open_reader(fd: int, name: str, window: Window | None) -> _Reader:
    if window is None:
        return _Reader(fd, os.fstat(fd).st_size, name)
    _, offset, length = window
    if offset < 0 or length < 0 or offset + length > os.fstat(fd).st_size:
        raise NotAnElf(f"{name} lies past the end of the file holding it")
    return _Reader(fd, length, name, offset)


def _name(value: object) -> str:
    # pyelftools maps known numbers to names and leaves unknown ones as ints.
    return value if isinstance(value, str) else f"EM_{value}"


def read_elf(
    path: str | os.PathLike[str], *, display: str | None = None, window: Window | None = None
) -> ElfInfo:
    """Read the loader-relevant facts of the ELF file at ``path``.

    ``display`` is the name used in messages (for example the path inside an image root).
    With ``window`` (``(host file, offset, length)``), the ELF file is those bytes of that
    file (a member of a layer's tar) and ``path`` only names it. Raises :class:`NotAnElf`
    for a file that is not ELF, is truncated or is corrupt, and :class:`HostFileError` when
    the file cannot be opened or read.
    """
    name = display if display is not None else os.fspath(path)
    try:
        fd = os.open(window[0] if window else path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostFileError(f"cannot open {name}: {exc.strerror}") from exc
    try:
        return _parse(_open_reader(fd, name, window), name)
    except (ELFError, ConstructError, ValueError, OverflowError, struct.error) as exc:
        raise NotAnElf(f"{name} is a corrupt ELF file ({exc})") from exc
    except OSError as exc:
        raise HostFileError(f"cannot read {name}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _identify(reader: _Reader, name: str) -> tuple[bool, int]:
    head = os.pread(reader.fd, min(16, reader.size), reader.base)
    if head[:4] != ELF_MAGIC:
        if head[:2] == b"#!":
            raise NotAnElf(
                f"{name} is a script, not an ELF program",
                hint="resolve the interpreter named on its #! line instead",
            )
        raise NotAnElf(f"{name} is not an ELF file (invalid ELF header)")
    if len(head) < 16:
        raise NotAnElf(f"{name} is a truncated ELF file (shorter than its identification)")
    if head[4] not in (1, 2):
        raise NotAnElf(f"{name} is a corrupt ELF file (EI_CLASS is {head[4]})")
    if head[5] not in (1, 2):
        raise NotAnElf(f"{name} is a corrupt ELF file (EI_DATA is {head[5]})")
    return head[5] == 1, 32 if head[4] == 1 else 64


@dataclass(frozen=True, slots=True)
class _Layout:
    """The ELF header and the segments a loader looks at."""

    little_endian: bool
    elf_class: int
    header: Any
    loads: list[tuple[int, int, int]]  # (p_vaddr, p_filesz, p_offset) of each PT_LOAD
    interp: tuple[int, int] | None  # (offset, size) of PT_INTERP
    dynamic: tuple[int, int] | None  # (offset, size) of PT_DYNAMIC


def _layout(reader: _Reader, name: str) -> _Layout:
    little_endian, elf_class = _identify(reader, name)
    basic = _basic_structs(little_endian, elf_class)
    header = basic.Elf_Ehdr.parse(reader.read(0, basic.Elf_Ehdr.sizeof(), "the ELF header"))
    loads: list[tuple[int, int, int]] = []
    interp: tuple[int, int] | None = None
    dynamic: tuple[int, int] | None = None
    for p_type, p_offset, p_vaddr, p_filesz in _program_headers(
        reader, header, little_endian, elf_class
    ):
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_filesz, p_offset))
        elif p_type == _PT_INTERP:
            interp = (p_offset, p_filesz)
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    return _Layout(little_endian, elf_class, header, loads, interp, dynamic)


def _parse(reader: _Reader, name: str) -> ElfInfo:
    layout = _layout(reader, name)
    little_endian, elf_class, header = layout.little_endian, layout.elf_class, layout.header
    loads, interp, dynamic = layout.loads, layout.interp, layout.dynamic
    e_type = header["e_type"]
    machine = _name(header["e_machine"])
    osabi = header["e_ident"]["EI_OSABI"]

    interpreter = None
    if interp is not None:
        if interp[1] > _MAX_INTERP:
            raise NotAnElf(
                f"{name} is a corrupt ELF file (its PT_INTERP is {interp[1]:,} bytes long; "
                f"the kernel accepts at most {_MAX_INTERP})"
            )
        raw = reader.read(interp[0], interp[1], "PT_INTERP")
        interpreter = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    needed: list[str] = []
    soname = rpath = runpath = None
    flags_1 = 0
    if dynamic is not None:
        tags = _dynamic_tags(reader, little_endian, elf_class, dynamic)
        strtab = _strtab_offset(tags, loads, name)
        strsz = _strsz(tags)
        offsets = [v for t, v in tags if t == _DT_NEEDED]
        NEEDED.check(len(offsets), f"the DT_NEEDED entries of {name}")
        # Each distinct string is read once (entries may repeat one name).
        names = {v: _string(reader, strtab, strsz, v, "DT_NEEDED") for v in dict.fromkeys(offsets)}
        needed = [names[v] for v in offsets]
        for tag, value in tags:
            if tag == _DT_SONAME:
                soname = _string(reader, strtab, strsz, value, "DT_SONAME")
            elif tag == _DT_RPATH:
                text = _string(reader, strtab, strsz, value, "DT_RPATH")
                rpath = text if rpath is None else f"{rpath}:{text}"
            elif tag == _DT_RUNPATH:
                text = _string(reader, strtab, strsz, value, "DT_RUNPATH")
                runpath = text if runpath is None else f"{runpath}:{text}"
            elif tag == _DT_FLAGS_1:
                flags_1 = value
            if len(rpath or "") + len(runpath or "") > _MAX_STRING:
                raise NotAnElf(f"{name} is a corrupt ELF file (its search paths are too long)")

    return ElfInfo(
        path=name,
        elf_class=elf_class,
        little_endian=little_endian,
        machine=machine,
        osabi=str(osabi),
        elf_type=str(e_type),
        interpreter=interpreter,
        dynamic=dynamic is not None,
        needed=tuple(needed),
        soname=soname,
        rpath=rpath,
        runpath=runpath,
        flags_1=flags_1,
    )


def _dynamic_tags(
    reader: _Reader, little_endian: bool, elf_class: int, segment: tuple[int, int]
) -> list[tuple[int, int]]:
    """(d_tag, d_val) of each dynamic entry before DT_NULL."""
    _, dyn = _layouts(little_endian, elf_class)
    offset, size = segment
    count = min(size // dyn.size, _MAX_DYN_ENTRIES)
    data = reader.read(offset, count * dyn.size, "the dynamic table")
    tags: list[tuple[int, int]] = []
    for tag, value in dyn.iter_unpack(data):
        if tag == _DT_NULL:
            break
        tags.append((tag, value))
    return tags


def _strtab_offset(
    tags: list[tuple[int, int]], loads: list[tuple[int, int, int]], name: str
) -> int:
    address = next((value for tag, value in tags if tag == _DT_STRTAB), None)
    if address is None:
        if any(tag in (_DT_NEEDED, _DT_SONAME, _DT_RPATH, _DT_RUNPATH) for tag, _ in tags):
            raise NotAnElf(f"{name} is a corrupt ELF file (a dynamic table without DT_STRTAB)")
        return -1
    return _file_offset(address, loads, name, "DT_STRTAB")


def _file_offset(address: int, loads: list[tuple[int, int, int]], name: str, what: str) -> int:
    # Dynamic tags hold virtual addresses; the PT_LOAD segment that covers one maps it to
    # the file (this is what the loader sees after mapping the segments).
    for vaddr, filesz, offset in loads:
        if vaddr <= address < vaddr + filesz:
            return int(address - vaddr + offset)
    raise NotAnElf(f"{name} is a corrupt ELF file ({what} is outside every PT_LOAD segment)")


def _strsz(tags: list[tuple[int, int]]) -> int | None:
    return next((value for tag, value in tags if tag == _DT_STRSZ), None)


def _string(reader: _Reader, strtab: int, size: int | None, index: int, what: str) -> str:
    """The string at ``index`` of the string table at ``strtab`` of ``size`` bytes."""
    limit = _MAX_NAME if what in ("DT_NEEDED", "DT_SONAME") else _MAX_STRING
    if size is not None and index >= size:
        raise NotAnElf(f"{reader.name} is a corrupt ELF file ({what} lies outside .dynstr)")
    return reader.string(strtab + index, what, limit)


def read_version_definitions(
    path: str | os.PathLike[str], *, display: str | None = None, window: Window | None = None
) -> tuple[str, ...]:
    """Return the symbol version names a library defines (``DT_VERDEF``), e.g. ``GLIBC_2.34``.

    The first entry is the library's own base name. Arguments and errors as :func:`read_elf`.
    """
    name = display if display is not None else os.fspath(path)
    try:
        fd = os.open(window[0] if window else path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostFileError(f"cannot open {name}: {exc.strerror}") from exc
    try:
        return _version_definitions(_open_reader(fd, name, window), name)
    except (ELFError, ConstructError, ValueError, OverflowError, struct.error) as exc:
        raise NotAnElf(f"{name} is a corrupt ELF file ({exc})") from exc
    except OSError as exc:
        raise HostFileError(f"cannot read {name}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _version_definitions(reader: _Reader, name: str) -> tuple[str, ...]:
    layout = _layout(reader, name)
    little_endian, elf_class = layout.little_endian, layout.elf_class
    loads, dynamic = layout.loads, layout.dynamic
    if dynamic is None:
        return ()
    tags = _dynamic_tags(reader, little_endian, elf_class, dynamic)
    verdef = next((value for tag, value in tags if tag == _DT_VERDEF), None)
    count = next((value for tag, value in tags if tag == _DT_VERDEFNUM), 0)
    if verdef is None:
        return ()
    strtab = _strtab_offset(tags, loads, name)
    strsz = _strsz(tags)
    offset = _file_offset(verdef, loads, name, "DT_VERDEF")
    # Elf_Verdef: vd_version, vd_flags, vd_ndx, vd_cnt (half words), vd_hash, vd_aux, vd_next;
    # Elf_Verdaux: vda_name, vda_next. The same layout for both classes.
    order = "<" if little_endian else ">"
    verdef_layout = struct.Struct(order + "HHHHIII")
    verdaux_layout = struct.Struct(order + "II")
    names: list[str] = []
    for _ in range(min(count, 4096)):
        fields = verdef_layout.unpack(reader.read(offset, verdef_layout.size, "DT_VERDEF"))
        vd_cnt, vd_aux, vd_next = fields[3], fields[5], fields[6]
        if vd_cnt:
            aux = verdaux_layout.unpack(
                reader.read(offset + vd_aux, verdaux_layout.size, "DT_VERDEF")
            )
            names.append(_string(reader, strtab, strsz, aux[0], "DT_VERDEF"))
        if not vd_next:
            break
        offset += vd_next
    return tuple(names)

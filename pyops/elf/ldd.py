"""Which files the dynamic loader opens for a program, worked out without running it.

The resolver follows the real loaders, not ``ldd`` or lddtree:

- glibc: ``elf/dl-load.c`` (``_dl_map_object``, ``open_path``, ``open_verify``,
  ``fillin_rpath``, ``_dl_dst_substitute``), ``elf/dl-deps.c`` (breadth-first loading),
  ``elf/dl-cache.c`` and ``sysdeps/generic/dl-cache.h`` (``/etc/ld.so.cache``),
  ``elf/get-dynamic-info.h`` (``DT_RUNPATH`` disables ``DT_RPATH``), and ld.so(8);
- musl: ``ldso/dynlink.c`` (``load_library``, ``path_open``, ``fixup_rpath``).

Every path is resolved inside a root directory: symlinks are followed one component at a
time by this module, absolute link targets are re-rooted and ``..`` stops at the root, so
the host kernel never follows a link of the image and nothing outside the root is read.
Without a root the host's ``/`` is the root.

A :class:`Resolver` keeps caches (resolved paths, directory listings, parsed ELF files by
device and inode, the parsed ``ld.so.cache``) and can resolve many programs of one root;
:func:`resolve` is the one-call form.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from pyops import rootfs
from pyops.elf.reader import (
    DF_1_NODEFLIB,
    ElfInfo,
    check_machine,
    read_elf,
    read_version_definitions,
)
from pyops.errors import (
    ElfMismatch,
    HostFileError,
    LibraryNotFound,
    NotAnElf,
    PyopsError,
    UnsafeLayerPath,
)
from pyops.limits import LOADER_FILE_BYTES, NEEDED, OBJECTS, PATH_ELEMENTS

__all__ = [
    "LoadedFile",
    "Missing",
    "Resolution",
    "Resolver",
    "RuntimeExtra",
    "format_tree",
    "resolve",
]

Libc = Literal["glibc", "musl"]


# glibc: the OS ABIs open_verify accepts (VALID_ELF_OSABI: SYSV and GNU).
_GLIBC_OSABIS = frozenset({"ELFOSABI_SYSV", "ELFOSABI_LINUX"})

# Accepted ld.so.cache entry flags, by (machine, class): the low byte is the type (3 = glibc
# ELF), the high byte the ABI (sysdeps/generic/ldconfig.h; each port's dl-cache.h defines
# _dl_cache_check_flags). The x86-64 loader accepts exactly 0x0303, aarch64 0x0a03.
_CACHE_FLAGS: dict[tuple[str, int], frozenset[int]] = {
    ("EM_X86_64", 64): frozenset({0x0303}),
    ("EM_X86_64", 32): frozenset({0x0803}),
    ("EM_AARCH64", 64): frozenset({0x0A03}),
    ("EM_386", 32): frozenset({0x0001, 0x0003}),
    ("EM_ARM", 32): frozenset({0x0903}),
    ("EM_PPC64", 64): frozenset({0x0503}),
    ("EM_S390", 64): frozenset({0x0403}),
    ("EM_RISCV", 64): frozenset({0x1003}),
}

# $PLATFORM is the guest loader's dl_platform, not the build host's. Nanos passes no
# AT_PLATFORM (src/unix/exec.c builds the auxiliary vector without it), so glibc starts with
# none. On x86-64 it then sets one from the CPU, on Intel CPUs only (sysdeps/x86/
# cpu-features.c: "xeon_phi" with AVX512ER and AVX512PF, else "haswell" with AVX2, FMA, BMI1,
# BMI2, LZCNT, MOVBE and POPCNT); aarch64 sets none (sysdeps/aarch64/dl-machine.h). With no
# value, a search element naming $PLATFORM is dropped (elf/dl-load.c, _dl_dst_substitute).
# The guest's CPU is not known when the image is built (TCG, or KVM/HVF on any host), so the
# closure is resolved once for every value the guest's loader may take (None: no value).
_GUEST_PLATFORMS: dict[str, tuple[str | None, ...]] = {
    "EM_X86_64": (None, "haswell", "xeon_phi"),
    "EM_AARCH64": (None,),
    "EM_386": ("i686", "i586"),
}

# Debian multiarch triplets, to guess default directories when the loader gives none.
_TRIPLETS = {
    ("EM_X86_64", 64): "x86_64-linux-gnu",
    ("EM_X86_64", 32): "x86_64-linux-gnux32",
    ("EM_AARCH64", 64): "aarch64-linux-gnu",
    ("EM_386", 32): "i386-linux-gnu",
    ("EM_ARM", 32): "arm-linux-gnueabihf",
    ("EM_PPC64", 64): "powerpc64le-linux-gnu",
    ("EM_S390", 64): "s390x-linux-gnu",
    ("EM_RISCV", 64): "riscv64-linux-gnu",
}

# musl's libc.so *is* its loader: these names are answered by the loader itself
# (ldso/dynlink.c, load_library: reserved "c.pthread.rt.m.dl.util.xnet.").
_MUSL_RESERVED = re.compile(r"lib(?:c|pthread|rt|m|dl|util|xnet)\.")

# glibc dynamic string tokens (elf/dl-load.c, is_dst): $NAME or ${NAME}; $NAME followed by
# an identifier character is not a token.
_DST = re.compile(r"\$(?:\{(ORIGIN|PLATFORM|LIB)\}|(ORIGIN|PLATFORM|LIB)(?![A-Za-z0-9_]))")

# The loader keeps its built-in directories as consecutive NUL-terminated strings, each
# absolute and ending in "/" (elf/dl-load.c: system_dirs, from gen-trusted-dirs). The
# pattern never backtracks: each string starts after a NUL (a literal prefix the engine
# searches for), is consumed possessively, then must have ended in "/"; runs are cut at 32.
_SYSTEM_DIR = rb"/[!-~]*+(?<=[!-~]/)\x00"
_SYSTEM_DIRS = re.compile(rb"\x00(" + _SYSTEM_DIR + rb"(?:" + _SYSTEM_DIR + rb"){1,31})")

_CACHE_MAGIC_NEW = b"glibc-ld.so.cache1.1"
_CACHE_MAGIC_OLD = b"ld.so-1.7.0"

# Files that glibc (and musl) read at run time for user and host-name lookups.
_LOOKUP_FILES = (
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
)
_NSS_DATABASES = ("passwd", "group", "shadow", "hosts")


# ---------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class LoadedFile:
    """One file the loader (or the kernel) opens."""

    name: str
    """The name it was first asked for: a ``DT_NEEDED`` entry, or the path for the program
    and the interpreter."""
    path: str
    """The path the loader opens, as it builds it (search directory + name, the
    ``ld.so.cache`` value, the ``PT_INTERP`` string): what ``ldd`` prints."""
    real_path: str
    """``path`` with every symlink resolved inside the root."""
    host_path: str
    """Where the content is on this machine (the root joined with ``real_path``)."""
    chain: tuple[str, ...]
    """The in-root entries the image must contain to make ``path`` work: every symlink
    passed on the way (directory links such as ``/lib -> usr/lib`` included), then
    ``real_path``. No entry has a symlink among its parent directories."""
    needed_by: str | None
    """``path`` of the object that first needed it (None for the program)."""
    found_via: str
    """How it was found: ``program``, ``interpreter``, ``path``, ``rpath``, ``runpath``,
    ``LD_LIBRARY_PATH``, ``ld.so.cache``, ``default``, ``system path`` (musl),
    ``ld.so.conf`` or ``data``."""
    soname: str | None = None
    """Its ``DT_SONAME``."""
    needed: tuple[tuple[str, str | None], ...] = ()
    """Each ``DT_NEEDED`` name with the ``path`` of the object that answered it (None if
    missing)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "name": self.name,
            "path": self.path,
            "real_path": self.real_path,
            "host_path": self.host_path,
            "chain": list(self.chain),
            "needed_by": self.needed_by,
            "found_via": self.found_via,
            "soname": self.soname,
            "needed": [{"name": n, "path": p} for n, p in self.needed],
        }


@dataclass(frozen=True, slots=True)
class Missing:
    """A library the loader would fail to load."""

    name: str
    needed_by: str
    searched: tuple[str, ...]
    """Every directory (and ``/etc/ld.so.cache``) tried, in order."""
    reason: str
    """``not found``, or why a candidate stopped the search."""
    fatal: bool = True
    """False for preloads, which the loader skips with a warning."""
    skipped: tuple[str, ...] = ()
    """Files of that name the loader passed over, each with why (another machine or class:
    glibc goes on searching)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "name": self.name,
            "needed_by": self.needed_by,
            "searched": list(self.searched),
            "reason": self.reason,
            "fatal": self.fatal,
            "skipped": list(self.skipped),
        }


@dataclass(frozen=True, slots=True)
class RuntimeExtra:
    """Something the program may open at run time that ``DT_NEEDED`` does not show."""

    name: str
    purpose: str
    """Why it may be needed."""
    file: LoadedFile | None
    """The file in the root, or None when the root does not have it."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "name": self.name,
            "purpose": self.purpose,
            "file": self.file.to_dict() if self.file else None,
        }


@dataclass(frozen=True, slots=True)
class Resolution:
    """The closure of one program: what the image must contain for it to start."""

    program: LoadedFile
    interpreter: LoadedFile | None
    libraries: tuple[LoadedFile, ...]
    """In load order (breadth-first, as the loader maps them)."""
    missing: tuple[Missing, ...]
    runtime_extras: tuple[RuntimeExtra, ...]
    libc: Libc | None
    """Which loader's rules applied (None for a static program)."""
    root: str | None
    include_runtime_extras: bool = False
    """Whether :meth:`paths` includes the run-time extras found in the root."""

    def files(self) -> tuple[LoadedFile, ...]:
        """The program, the interpreter, the libraries and (if included) the extras."""
        items = [self.program]
        if self.interpreter is not None:
            items.append(self.interpreter)
        items.extend(self.libraries)
        if self.include_runtime_extras:
            items.extend(extra.file for extra in self.runtime_extras if extra.file is not None)
        return tuple(items)

    def paths(self) -> tuple[str, ...]:
        """Every in-root path the image must contain (links and their targets), sorted."""
        return tuple(sorted({entry for item in self.files() for entry in item.chain}))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "program": self.program.to_dict(),
            "interpreter": self.interpreter.to_dict() if self.interpreter else None,
            "libc": self.libc,
            "root": self.root,
            "libraries": [lib.to_dict() for lib in self.libraries],
            "missing": [m.to_dict() for m in self.missing],
            "runtime_extras": [extra.to_dict() for extra in self.runtime_extras],
            "paths": list(self.paths()),
        }


# ---------------------------------------------------------------------------------------
# The root filesystem, seen only through lstat/readlink/listdir


@dataclass(frozen=True, slots=True)
class _Node:
    real: str
    links: tuple[str, ...]
    st: rootfs.FileStat


class _RootFs:
    """Path resolution confined to a root, with every result cached."""

    def __init__(self, root: str | rootfs.RootFiles | None) -> None:
        if root is None or isinstance(root, str):
            host_root = os.path.abspath(root) if root is not None else "/"
            try:
                st: rootfs.FileStat | None = os.stat(host_root)
            except OSError as exc:
                raise HostFileError(f"cannot use root {host_root}: {exc.strerror}") from exc
            self.files: rootfs.RootFiles = rootfs.HostFiles(host_root)
            shown = host_root
        else:
            self.files = root
            st = root.lstat("/")
            shown = root.host("/")
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise HostFileError(f"the root {shown} is not a directory")
        self._root_st = st
        self._nodes: dict[str, _Node | None] = {"/": _Node("/", (), st)}
        self._max_parts = PATH_ELEMENTS.value()
        self._listings: dict[str, frozenset[str]] = {}
        self._stats: dict[str, rootfs.FileStat] = {}
        self._elves: dict[tuple[int, int], ElfInfo | PyopsError] = {}

    def host(self, real: str) -> str:
        """The host path of an in-root path that has no symlinks left in it."""
        return self.files.host(real)

    def lookup(self, path: str, depth: int = 0) -> _Node | None:
        """Resolve an absolute in-root path; None if it does not exist (or loops).

        Iterative, however many parts the path has and however its links nest; a path of
        more than :data:`~pyops.limits.PATH_ELEMENTS` parts is refused.  ``depth`` is
        ignored (kept for callers).
        """
        try:
            return self._nodes[path]
        except KeyError:
            pass
        result = self._resolve(path)
        self._nodes[path] = result
        return result

    def _resolve(self, path: str) -> _Node | None:
        parts: list[str] = path.split("/")
        if len(parts) > self._max_parts:
            count = sum(1 for part in parts if part)
            if count > self._max_parts:
                raise PATH_ELEMENTS.exceeded(f"the path {_short(path)}: its parts", count)
        # Most lookups name an entry of a directory already resolved: start there.
        trimmed = path.rstrip("/")
        parent_path, _, last = trimmed.rpartition("/")
        parent = self._nodes.get(parent_path or "/") if trimmed and last else None
        links: tuple[str, ...] = ()
        start: tuple[int, tuple[str, ...]] = (0, ())
        if parent is not None:
            if not stat.S_ISDIR(parent.st.st_mode):
                return None
            known = tuple(p for p in parent.real.split("/") if p)
            parts = [*known, last]
            start = (len(known), known)
            links = parent.links
        try:
            # Each of the path's parts, and of each link's target, is one step at most.
            steps = self._max_parts * (rootfs.MAX_SYMLINKS + 1)
            found = rootfs.resolve(parts, self._mode, self._readlink, start=start, max_steps=steps)
        except (UnsafeLayerPath, _Unreadable):
            return None  # ELOOP, or a link that cannot be read
        if found.mode is None:
            return None
        real = found.path
        st = self._stats[real] if found.parts else self._root_st
        return _Node(real, _unique((*links, *found.links)), st)

    def _mode(self, parts: tuple[str, ...]) -> int | None:
        real = "/" + "/".join(parts)
        st = self._stats.get(real)
        if st is None:
            try:
                st = self.files.lstat(real)
            except OSError:
                return None
            if st is None:
                return None
            self._stats[real] = st
        return st.st_mode

    def _readlink(self, parts: tuple[str, ...]) -> str:
        real = "/" + "/".join(parts)
        try:
            target = self.files.readlink(real)
        except OSError:
            raise _Unreadable from None
        more = sum(1 for p in target.split("/") if p)
        if more > self._max_parts:
            raise PATH_ELEMENTS.exceeded(f"the link {real}: its target's parts", more)
        return target

    def listing(self, real_dir: str) -> frozenset[str]:
        """Names in a resolved in-root directory (empty if it cannot be read)."""
        names = self._listings.get(real_dir)
        if names is None:
            try:
                names = frozenset(self.files.listdir(real_dir))
            except OSError:
                names = frozenset()
            self._listings[real_dir] = names
        return names

    def entry(self, directory: str, name: str) -> _Node | None:
        """``directory/name`` resolved, checking the cached listing before any lstat."""
        parent = self.lookup(directory or "/")
        if parent is None or not stat.S_ISDIR(parent.st.st_mode):
            return None
        if name not in self.listing(parent.real):
            return None
        return self.lookup(_join(directory, name) if directory else "/" + name)

    def elf(self, node: _Node) -> ElfInfo:
        """Parsed ELF facts of a resolved file, cached by device and inode."""
        key = (node.st.st_dev, node.st.st_ino)
        info = self._elves.get(key)
        if info is None:
            try:
                info = read_elf(node.real, display=node.real, window=self.window(node.real))
            except OSError as exc:
                info = HostFileError(f"cannot read {node.real}: {exc.strerror or exc}")
            except PyopsError as exc:
                info = exc
            self._elves[key] = info
        if isinstance(info, PyopsError):
            raise info
        return info

    def read_bytes(self, path: str, *, prefix: bool = False) -> bytes | None:
        """Content of an in-root regular file, or None.

        A file over :data:`~pyops.limits.LOADER_FILE_BYTES` is refused
        (:class:`~pyops.errors.LimitExceeded`), or with ``prefix`` only its first bytes up
        to the limit are read; never more than that is read.
        """
        node = self.lookup(path)
        if node is None or not stat.S_ISREG(node.st.st_mode):
            return None
        limit = LOADER_FILE_BYTES.value()
        if node.st.st_size > limit and not prefix:
            raise LOADER_FILE_BYTES.exceeded(f"{path} in the root", node.st.st_size)
        # Sized from the file (read(n) allocates n bytes first); more only if it grew.
        cap = limit if prefix else limit + 1
        try:
            data = rootfs.read_window(self.window(node.real), cap)
        except OSError:
            return None
        if len(data) > limit:
            raise LOADER_FILE_BYTES.exceeded(f"{path} in the root")
        return data

    def window(self, real: str) -> rootfs.Window:
        """Where the bytes of a resolved regular file are (OSError if they cannot be)."""
        return self.files.window(real)

    def glob(self, pattern: str) -> list[str]:
        """Expand a glob inside the root, sorted like glob(3)."""
        matches = ["/"]
        for part in [p for p in pattern.split("/") if p]:
            expanded: list[str] = []
            for base in matches:
                if not any(ch in part for ch in "*?["):
                    expanded.append(_join(base, part))
                    continue
                node = self.lookup(base)
                if node is None or not stat.S_ISDIR(node.st.st_mode):
                    continue
                for name in self.listing(node.real):
                    if name.startswith(".") and not part.startswith("."):
                        continue
                    if fnmatch.fnmatchcase(name, part):
                        expanded.append(_join(base, name))
            matches = expanded
        return sorted(m for m in matches if self.lookup(m) is not None)


class _Unreadable(Exception):
    """A symlink of the root could not be read."""


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _join(directory: str, name: str) -> str:
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def _dirname(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------
# ld.so.cache and ld.so.conf


def _find_system_dirs(data: bytes) -> list[str] | None:
    """The first run of two or more consecutive NUL-terminated strings, each absolute and
    ending in "/", one of which names a lib directory: the loader's built-in directories.

    Linear in ``data`` whatever its bytes (see :data:`_SYSTEM_DIRS`).
    """
    for match in _SYSTEM_DIRS.finditer(data):
        found = [d.decode("utf-8", "replace") for d in match.group(1).split(b"\0") if d]
        if any("lib" in d for d in found):
            return found
    return None


def _parse_ld_so_cache(data: bytes) -> dict[str, list[tuple[int, str]]]:
    """Map each soname to its (flags, path) entries, in file order.

    Format "glibc-ld.so.cache1.1" (sysdeps/generic/dl-cache.h): a 48-byte header, then
    nlibs entries of (int32 flags, uint32 key, uint32 value, uint32 osversion, uint64
    hwcap); string offsets count from the start of the new-format header. An old-format
    cache ("ld.so-1.7.0") may come first.
    """
    start = 0
    if data.startswith(_CACHE_MAGIC_OLD):
        start = data.find(_CACHE_MAGIC_NEW)
        if start < 0:
            return {}
    if data[start : start + len(_CACHE_MAGIC_NEW)] != _CACHE_MAGIC_NEW or len(data) < start + 48:
        return {}
    order = ">" if data[start + 28] == 3 else "<"
    (nlibs,) = struct.unpack_from(order + "I", data, start + 20)
    entry = struct.Struct(order + "iIIIQ")
    if start + 48 + nlibs * entry.size > len(data):
        return {}
    entries: dict[str, list[tuple[int, str]]] = {}
    strings: dict[int, str] = {}
    # Strings may share bytes (ldconfig merges common tails), but not without end: what is
    # decoded is bounded by a few times the file, each string by PATH_MAX.
    budget = 4 * len(data) + 65536

    def string(offset: int) -> str:
        nonlocal budget
        text = strings.get(offset)
        if text is None:
            begin = start + offset
            end = data.find(b"\0", begin, begin + 4096)
            raw = data[begin : end if end >= 0 else begin + 4096]
            budget -= len(raw) + 1
            if budget < 0:
                raise LOADER_FILE_BYTES.exceeded("the strings of /etc/ld.so.cache")
            text = strings[offset] = raw.decode("utf-8", "surrogateescape")
        return text

    for flags, key, value, _osversion, hwcap in entry.iter_unpack(
        data[start + 48 : start + 48 + nlibs * entry.size]
    ):
        # Only baseline entries: hwcap != 0 marks glibc-hwcaps subdirectory (bit 62) or
        # legacy hwcap entries, chosen by the CPU the program will run on, which is not
        # known here. The loader falls back to the baseline library when none applies.
        if hwcap:
            continue
        entries.setdefault(string(key), []).append((flags, string(value)))
    return entries


def _parse_ld_so_conf(fs: _RootFs, path: str, seen: set[str]) -> list[str]:
    """Directories listed by an ld.so.conf file and its includes (elf/ldconfig.c).

    Includes are followed depth first without recursion; a file is read once, by its real
    path (so a folder that links to itself cannot loop), and all of them together are
    bounded by :data:`~pyops.limits.LOADER_FILE_BYTES`.
    """
    dirs: list[str] = []
    budget = LOADER_FILE_BYTES.value()
    # Open files and includes: the file's path, its lines (or the include's matches) still
    # to read, and whether they are matches.
    stack: list[tuple[str, Iterator[str], bool]] = []

    def open_conf(conf: str) -> None:
        nonlocal budget
        node = fs.lookup(conf)
        key = node.real if node is not None else conf
        if conf in seen or key in seen:
            return
        seen.update((conf, key))
        data = fs.read_bytes(conf)
        if data is None:
            return
        budget -= len(data)
        if budget < 0:
            raise LOADER_FILE_BYTES.exceeded("/etc/ld.so.conf with the files it includes")
        stack.append((conf, iter(data.decode("utf-8", "surrogateescape").splitlines()), False))

    open_conf(path)
    while stack:
        conf, items, matches = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
        elif matches:
            open_conf(item)  # an included file, read where the include is
        else:
            line = item.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] == "include" and len(words) > 1:
                found: list[str] = []
                for pattern in words[1:]:
                    if not pattern.startswith("/"):
                        pattern = _join(_dirname(conf), pattern)
                    found.extend(fs.glob(pattern))
                stack.append((conf, iter(found), True))
            elif words[0] == "hwcap":
                continue  # obsolete, ignored by ldconfig
            else:
                dirs.append(line.rstrip("/") or "/")
    return list(dict.fromkeys(dirs))


# ---------------------------------------------------------------------------------------
# The loader's view of one object while resolving


@dataclass(eq=False)
class _Obj:
    name: str
    path: str
    node: _Node
    info: ElfInfo
    loader: _Obj | None
    found_via: str
    origin: str | None
    names: set[str] = field(default_factory=set)
    seq: int = 0
    deps: list[tuple[str, str | None]] = field(default_factory=list)
    rpath_dirs: list[str] | None = None
    runpath_dirs: list[str] | None = None


# One search step: the object found, True to go on searching, None when a bad file stopped
# the search (glibc open_verify "lose").
_Step: TypeAlias = "_Obj | None | bool"


@dataclass
class _GlibcSetup:
    system_dirs: list[str]
    lib: str
    cache: dict[str, list[tuple[int, str]]] | None
    conf_dirs: list[str]


class _Search:
    """State of one program's resolution."""

    def __init__(
        self, resolver: Resolver, main: _Obj, libc: Libc | None, platform: str | None
    ) -> None:
        self.resolver = resolver
        self.platform = platform
        self.platform_used = False
        self.fs = resolver._fs
        self.main = main
        self.libc = libc
        self.interp: _Obj | None = None
        self.loaded: list[_Obj] = [main]
        self.by_name: dict[str, _Obj] = {}
        self.by_soname: dict[str, _Obj] = {}
        self.by_id: dict[tuple[int, int], _Obj] = {}
        self.missing: list[Missing] = []
        self.glibc: _GlibcSetup | None = None
        self.musl_path: str | None = None
        self.env_dirs: list[str] = []
        self.max_objects = OBJECTS.value()

    # -- bookkeeping ---------------------------------------------------------------------

    def register(self, obj: _Obj, names: Iterable[str]) -> None:
        """Add a loaded object, known under ``names``, its soname and its file id."""
        if obj is not self.main:
            obj.seq = len(self.loaded)
            if obj.seq > self.max_objects:
                raise OBJECTS.exceeded(f"the libraries loaded by {self.main.path}", obj.seq)
            self.loaded.append(obj)
        obj.names.update(names)
        for name in obj.names:
            self.by_name.setdefault(name, obj)
        if obj.info.soname and self.libc != "musl":
            self.by_soname.setdefault(obj.info.soname, obj)
        self.by_id.setdefault((obj.node.st.st_dev, obj.node.st.st_ino), obj)

    def already_loaded(self, name: str) -> _Obj | None:
        # glibc (_dl_map_object) takes the first loaded object whose names or soname match;
        # musl matches short names only (the soname is not consulted).
        by_name = self.by_name.get(name)
        if self.libc == "musl":
            return by_name
        by_soname = self.by_soname.get(name)
        if by_name is None or by_soname is None:
            found = by_name or by_soname
        else:
            found = min(by_name, by_soname, key=lambda obj: obj.seq)
        if found is not None:
            found.names.add(name)
            self.by_name.setdefault(name, found)
        return found

    def new_object(
        self, name: str, path: str, node: _Node, info: ElfInfo, loader: _Obj | None, via: str
    ) -> _Obj:
        absolute = path if path.startswith("/") else _join(self.resolver.cwd, path)
        # A library's $ORIGIN is the directory of the path it was opened under, symlinks
        # not resolved (glibc elf/dl-object.c; musl fixup_rpath uses p->name).
        obj = _Obj(name, path, node, info, loader, via, origin=_dirname(absolute))
        self.register(obj, (name, path))
        return obj

    # -- dynamic string tokens and path lists ----------------------------------------

    def expand(self, text: str, obj: _Obj) -> str | None:
        """glibc _dl_dst_substitute: None when a known token has no value."""
        if "$" not in text:
            return text
        failed = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal failed
            token = match.group(1) or match.group(2)
            value: str | None
            if token == "ORIGIN":
                value = obj.origin
            elif token == "PLATFORM":
                self.platform_used = True
                value = self.platform
            else:
                value = self.glibc.lib if self.glibc else None
            if value is None:
                failed = True
                return ""
            return value

        result = _DST.sub(substitute, text)
        return None if failed else result

    def glibc_dirs(self, text: str, obj: _Obj, separators: str) -> list[str]:
        """glibc fillin_rpath: split, expand, drop empty expansions, normalise slashes."""
        dirs: list[str] = []
        elements = re.split(f"[{re.escape(separators)}]", text)
        PATH_ELEMENTS.check(len(elements), f"the search path {_short(text)} of {obj.path}")
        seen: set[str] = set()
        for element in elements:
            if element:
                expanded = self.expand(element, obj)
                if not expanded:
                    continue  # a token that could not be expanded drops the element
                element = expanded.rstrip("/") or "/"
                if not element.endswith("/"):
                    element += "/"
            # An empty element is "" and means the working directory.
            if element not in seen:
                seen.add(element)
                dirs.append(element)
        return dirs

    def rpath_of(self, obj: _Obj) -> list[str]:
        if obj.rpath_dirs is None:
            # elf/get-dynamic-info.h: "If both RUNPATH and RPATH are given, the latter is
            # ignored."
            rpath = obj.info.rpath if obj.info.runpath is None else None
            obj.rpath_dirs = self.glibc_dirs(rpath, obj, ":") if rpath else []
        return obj.rpath_dirs

    def runpath_of(self, obj: _Obj) -> list[str]:
        if obj.runpath_dirs is None:
            runpath = obj.info.runpath
            obj.runpath_dirs = self.glibc_dirs(runpath, obj, ":") if runpath else []
        return obj.runpath_dirs

    # -- candidates ------------------------------------------------------------------

    def absolute(self, path: str) -> str:
        return path if path.startswith("/") else _join(self.resolver.cwd, path)

    def check_candidate(self, node: _Node, path: str) -> tuple[str, ElfInfo | str]:
        """Return ("ok", info), ("skip", why) or ("stop", why) for a candidate file."""
        if not stat.S_ISREG(node.st.st_mode):
            return "stop", f"{path}: cannot read file data (not a regular file)"
        try:
            info = self.fs.elf(node)
        except NotAnElf as exc:
            return "stop", f"{path}: invalid ELF header ({exc})"
        except HostFileError as exc:
            return "stop", str(exc)
        main = self.main.info
        wrong = info.elf_class != main.elf_class or info.machine != main.machine
        if self.libc == "musl":
            # musl does not skip foreign files: mapping fails with ENOEXEC and loading stops.
            if wrong or info.little_endian != main.little_endian:
                return "stop", f"{path}: Exec format error ({_describe(info)})"
            return "ok", info
        if wrong:
            # glibc open_verify: another class or machine is skipped, the search goes on.
            return "skip", f"{path}: {_describe(info)}"
        if info.little_endian != main.little_endian:
            return "stop", f"{path}: ELF file data encoding does not match"
        if info.osabi not in _GLIBC_OSABIS:
            return "stop", f"{path}: ELF file OS ABI invalid ({info.osabi})"
        if info.elf_type not in ("ET_DYN", "ET_EXEC"):
            return "stop", f"{path}: only ET_DYN and ET_EXEC can be loaded"
        return "ok", info

    # -- glibc -----------------------------------------------------------------------

    def map_glibc(self, name: str, requester: _Obj, *, preload: bool = False) -> _Obj | None:
        """glibc _dl_map_object for one name requested by ``requester``."""
        found = self.already_loaded(name)
        if found is not None:
            return found
        assert self.glibc is not None
        searched: list[str] = []
        skipped: list[str] = []
        stop: str | None = None

        def attempt(path: str, via: str) -> _Step:
            nonlocal stop
            node = self.fs.lookup(self.absolute(path))
            if node is None:
                return True
            verdict, detail = self.check_candidate(node, path)
            if verdict == "skip":
                skipped.append(str(detail))
                return True
            if verdict == "stop":
                stop = str(detail)
                return None
            assert isinstance(detail, ElfInfo)
            same = self.by_id.get((node.st.st_dev, node.st.st_ino))
            if same is not None:
                # _dl_map_object_from_fd: the same file under another name is not loaded
                # twice (_dl_file_id_match_p).
                same.names.add(name)
                self.by_name.setdefault(name, same)
                return same
            return self.new_object(name, path, node, detail, requester, via)

        # A directory tried once for this name gives the same answer again (RPATHs up a
        # long loading chain often repeat one): each is tried once.
        tried: set[str] = set()

        def search_dirs(dirs: list[str], via: str) -> _Step:
            for directory in dirs:
                if directory in tried:
                    continue
                tried.add(directory)
                searched.append(directory.rstrip("/") or "/" if directory else ".")
                if directory.startswith("/"):
                    if self.fs.entry(directory, name) is None:
                        continue
                result = attempt(directory + name, via)
                if result is not True:
                    return result
            return True

        if "/" in name:
            result = attempt(name, "path")
            searched.append(name)
        else:
            result = self._glibc_sources(name, requester, search_dirs, attempt, searched)
        if isinstance(result, _Obj):
            return result
        reason = stop if stop is not None else "not found"
        self.missing.append(
            Missing(
                name,
                requester.path,
                _unique(searched),
                reason,
                fatal=not preload,
                skipped=_unique(skipped),
            )
        )
        return None

    def _glibc_sources(
        self,
        name: str,
        requester: _Obj,
        search_dirs: Callable[[list[str], str], _Step],
        attempt: Callable[[str, str], _Step],
        searched: list[str],
    ) -> _Step:
        assert self.glibc is not None
        result: _Step = True
        # 1. DT_RPATH of the requester and of each object up the loading chain, then of the
        #    executable, unless the requester has DT_RUNPATH (ld.so(8), _dl_map_object).
        if requester.info.runpath is None:
            did_main = False
            obj: _Obj | None = requester
            while obj is not None and result is True:
                dirs = self.rpath_of(obj)
                if dirs:
                    result = search_dirs(dirs, "rpath")
                    did_main |= obj is self.main
                obj = obj.loader
            if result is True and not did_main and self.rpath_of(self.main):
                result = search_dirs(self.rpath_of(self.main), "rpath")
        # 2. LD_LIBRARY_PATH of the image's environment.
        if result is True and self.env_dirs:
            result = search_dirs(self.env_dirs, "LD_LIBRARY_PATH")
        # 3. DT_RUNPATH of the requester only: it is not inherited.
        if result is True and self.runpath_of(requester):
            result = search_dirs(self.runpath_of(requester), "runpath")
        nodeflib = bool(requester.info.flags_1 & DF_1_NODEFLIB)
        # 4. /etc/ld.so.cache, the loader never reads ld.so.conf itself (elf/dl-cache.c).
        if result is True and self.glibc.cache is not None:
            searched.append("/etc/ld.so.cache")
            cached = self.cache_lookup(name)
            if (
                cached is not None
                and nodeflib
                and any(cached.startswith(d) for d in self.glibc.system_dirs)
            ):
                cached = None
            if cached is not None:
                result = attempt(cached, "ld.so.cache")
        elif result is True and self.resolver.emulate_ldconfig and self.glibc.conf_dirs:
            # No cache in the image: optionally behave as if ldconfig had been run.
            result = search_dirs([_slash(d) for d in self.glibc.conf_dirs], "ld.so.conf")
        # 5. The loader's built-in directories, unless DF_1_NODEFLIB.
        if result is True and not nodeflib:
            result = search_dirs(self.glibc.system_dirs, "default")
        return result

    def cache_lookup(self, name: str) -> str | None:
        assert self.glibc is not None and self.glibc.cache is not None
        accepted = _CACHE_FLAGS.get((self.main.info.machine, self.main.info.elf_class))
        if accepted is None:
            return None
        for flags, path in self.glibc.cache.get(name, ()):
            if flags in accepted:
                return path
        return None

    # -- musl ------------------------------------------------------------------------

    def map_musl(self, name: str, requester: _Obj | None) -> _Obj | None:
        """musl load_library for one name; ``requester`` None for preloads."""
        interp = self.interp
        if interp is not None and (
            ("/" not in name and _MUSL_RESERVED.match(name)) or name == interp.path
        ):
            interp.names.add(name)
            return interp
        requested_by = requester.path if requester is not None else self.main.path
        searched: list[str] = []
        if "/" in name:
            candidates: Iterator[tuple[str, str]] = iter([(name, "path")])
            searched.append(name)
        else:
            found = self.already_loaded(name)
            if found is not None:
                return found
            candidates = self._musl_candidates(name, requester, searched)
        for path, via in candidates:
            node = self.fs.lookup(self.absolute(path))
            if node is None:
                continue
            same = self.by_id.get((node.st.st_dev, node.st.st_ino))
            if same is not None:
                same.names.add(name)
                self.by_name.setdefault(name, same)
                return same
            verdict, detail = self.check_candidate(node, path)
            if verdict != "ok":
                self.missing.append(Missing(name, requested_by, _unique(searched), str(detail)))
                return None
            assert isinstance(detail, ElfInfo)
            return self.new_object(name, path, node, detail, requester, via)
        self.missing.append(Missing(name, requested_by, _unique(searched), "not found"))
        return None

    def _musl_candidates(
        self, name: str, requester: _Obj | None, searched: list[str]
    ) -> Iterator[tuple[str, str]]:
        def in_path(text: str, via: str) -> Iterator[tuple[str, str]]:
            # path_open: elements split on ':' and newlines, empty ones skipped, each tried
            # as "<element>/<name>" verbatim.
            elements = re.split(r"[:\n]", text)
            PATH_ELEMENTS.check(len(elements), f"the search path {_short(text)}")
            for element in dict.fromkeys(elements):
                if not element:
                    continue
                searched.append(element)
                if element.startswith("/") and self.fs.entry(element, name) is None:
                    continue
                yield f"{element}/{name}", via

        env = self.resolver.env.get("LD_LIBRARY_PATH")
        if env:
            yield from in_path(env, "LD_LIBRARY_PATH")
        obj = requester
        while obj is not None:
            rpath = self.musl_rpath(obj)
            if rpath:
                yield from in_path(rpath, "rpath")
            obj = obj.loader
        yield from in_path(self.musl_system_path(), "system path")

    def musl_rpath(self, obj: _Obj) -> str | None:
        # decode_dyn: DT_RUNPATH wins over DT_RPATH; fixup_rpath expands only $ORIGIN and
        # ${ORIGIN}, and any other '$' makes musl ignore the whole string.
        text = obj.info.runpath if obj.info.runpath is not None else obj.info.rpath
        if not text or "$" not in text:
            return text
        pieces = text.split("$")
        for piece in pieces[1:]:
            if not (piece.startswith("ORIGIN") or piece.startswith("{ORIGIN}")):
                return None
        origin = obj.origin or "."
        out = pieces[0]
        for piece in pieces[1:]:
            out += origin + piece[len("{ORIGIN}") if piece.startswith("{") else len("ORIGIN") :]
        return out

    def musl_system_path(self) -> str:
        if self.musl_path is None:
            assert self.interp is not None
            # The path file sits in "<dir above the loader's directory>/etc"
            # (ldso/dynlink.c): /lib/ld-musl-x86_64.so.1 -> /etc/ld-musl-x86_64.path.
            interp = self.interp.path
            arch = os.path.basename(interp).removeprefix("ld-musl-").split(".so", 1)[0]
            prefix = _dirname(_dirname(interp)).rstrip("/")
            data = self.fs.read_bytes(f"{prefix}/etc/ld-musl-{arch}.path")
            if data is not None:
                self.musl_path = data.decode("utf-8", "surrogateescape")
            else:
                self.musl_path = "/lib:/usr/local/lib:/usr/lib"
        return self.musl_path

    # -- the walk --------------------------------------------------------------------

    def map(self, name: str, requester: _Obj, *, preload: bool = False) -> _Obj | None:
        if self.libc == "musl":
            return self.map_musl(name, None if preload else requester)
        if "$" in name:
            expanded = self.expand(name, requester)
            if not expanded:
                self.missing.append(
                    Missing(name, requester.path, (), "empty dynamic string token substitution")
                )
                return None
            name = expanded
        return self.map_glibc(name, requester, preload=preload)

    def load_closure(self, queue: list[_Obj]) -> None:
        """Breadth-first, like glibc _dl_map_object_deps and musl load_deps."""
        index = 0
        while index < len(queue):
            obj = queue[index]
            index += 1
            # The same name twice in one object is looked up once (the loader finds the
            # object it has just loaded); the DT_NEEDED list itself is bounded in elf.py.
            for name in dict.fromkeys(obj.info.needed):
                before = len(self.loaded)
                dep = self.map(name, obj)
                obj.deps.append((name, dep.path if dep is not None else None))
                if dep is not None and len(self.loaded) > before and dep is self.loaded[-1]:
                    queue.append(dep)


def _slash(directory: str) -> str:
    return directory if directory.endswith("/") else directory + "/"


def _describe(info: ElfInfo) -> str:
    return f"{info.elf_class}-bit {info.machine}"


# ---------------------------------------------------------------------------------------
# The resolver


class Resolver:
    """Resolves programs inside one root, with caches shared between calls.

    ``env`` is the environment the program will run with (the image's ``Env``): only its
    ``LD_LIBRARY_PATH`` and ``LD_PRELOAD`` are used, and the host's environment never is.
    ``machine`` (``x86_64``, ``arm64``, an ``EM_*`` name...) is checked against each
    program. ``cwd`` is the working directory relative search paths are taken from.
    ``emulate_ldconfig`` searches the ``ld.so.conf`` directories when the root has no
    ``/etc/ld.so.cache``, as if ``ldconfig`` had been run (the real loader does not).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | rootfs.RootFiles | None = None,
        *,
        env: Mapping[str, str] | None = None,
        machine: str | None = None,
        cwd: str = "/",
        emulate_ldconfig: bool = False,
    ) -> None:
        files: rootfs.RootFiles | None = None
        if isinstance(root, (str, os.PathLike)):
            self.root: str | None = os.fspath(root)
        elif root is not None:
            files = root
            self.root = root.host("/")
        else:
            self.root = None
        self.env: dict[str, str] = dict(env) if env is not None else {}
        self.machine = machine
        self.cwd = cwd if cwd.startswith("/") else "/" + cwd
        self.emulate_ldconfig = emulate_ldconfig
        self._fs = _RootFs(files if files is not None else self.root)
        self._glibc: dict[str, _GlibcSetup] = {}
        self._cache: dict[str, list[tuple[int, str]]] | None = None
        self._cache_read = False
        self._conf_dirs: list[str] | None = None
        self._glibc_versions: dict[str, tuple[str, ...]] = {}

    # -- per-root facts --------------------------------------------------------------

    def _ld_so_cache(self) -> dict[str, list[tuple[int, str]]] | None:
        if not self._cache_read:
            self._cache_read = True
            data = self._fs.read_bytes("/etc/ld.so.cache")
            self._cache = _parse_ld_so_cache(data) if data is not None else None
        return self._cache

    def _ld_so_conf(self) -> list[str]:
        if self._conf_dirs is None:
            self._conf_dirs = _parse_ld_so_conf(self._fs, "/etc/ld.so.conf", set())
        return self._conf_dirs

    def _glibc_setup(self, interp: _Obj, info: ElfInfo) -> _GlibcSetup:
        key = interp.node.real
        setup = self._glibc.get(key)
        if setup is None:
            dirs = self._system_dirs(interp, info)
            # $LIB is the loader's own library directory (DL_DST_LIB, glibc's slibdir), the
            # first of its built-in directories: lib/x86_64-linux-gnu on Debian, lib64 on
            # Fedora.
            lib = dirs[0].strip("/") if dirs else "lib"
            setup = _GlibcSetup(dirs, lib, self._ld_so_cache(), self._ld_so_conf())
            self._glibc[key] = setup
        return setup

    def _system_dirs(self, interp: _Obj, info: ElfInfo) -> list[str]:
        # The built-in list belongs to the image's loader; read it from the loader file.
        # Only a prefix of a huge file is scanned: the list is in the loader's .rodata.
        data = self._fs.read_bytes(interp.node.real, prefix=True)
        if data is not None:
            found = _find_system_dirs(data)
            if found is not None:
                return found
        return self._layout_dirs(info)

    def _layout_dirs(self, info: ElfInfo) -> list[str]:
        # No list in the loader: guess from the layout of the root.
        triplet = _TRIPLETS.get((info.machine, info.elf_class))
        if triplet and any(
            self._fs.lookup(f"{base}/{triplet}") is not None for base in ("/lib", "/usr/lib")
        ):
            return [f"/lib/{triplet}/", f"/usr/lib/{triplet}/", "/lib/", "/usr/lib/"]
        if info.elf_class == 64 and self._fs.lookup("/usr/lib64") is not None:
            return ["/lib64/", "/usr/lib64/"]
        return ["/lib/", "/usr/lib/"]

    # -- files -----------------------------------------------------------------------

    def _file(self, obj: _Obj, needed_by: str | None) -> LoadedFile:
        return LoadedFile(
            name=obj.name,
            path=obj.path,
            real_path=obj.node.real,
            host_path=self._fs.host(obj.node.real),
            chain=obj.node.links + (obj.node.real,),
            needed_by=needed_by,
            found_via=obj.found_via,
            soname=obj.info.soname,
            needed=tuple(obj.deps),
        )

    def _data_file(self, path: str, purpose: str) -> RuntimeExtra:
        node = self._fs.lookup(path)
        if node is None or not stat.S_ISREG(node.st.st_mode):
            return RuntimeExtra(path, purpose, None)
        loaded = LoadedFile(
            name=path,
            path=path,
            real_path=node.real,
            host_path=self._fs.host(node.real),
            chain=node.links + (node.real,),
            needed_by=None,
            found_via="data",
        )
        return RuntimeExtra(path, purpose, loaded)

    # -- the public entry point ------------------------------------------------------

    def resolve(
        self,
        program: str | os.PathLike[str],
        *,
        allow_missing: bool = False,
        include_runtime_extras: bool = False,
    ) -> Resolution:
        """Resolve ``program`` (a path inside the root) to everything it loads.

        Raises :class:`HostFileError` if the program is not in the root,
        :class:`NotAnElf` or :class:`ElfMismatch` for a bad program or interpreter, and,
        unless ``allow_missing``, :class:`LibraryNotFound` (or :class:`NotAnElf` when an
        invalid file stops the loader's search) for the first library that cannot be
        loaded. With ``allow_missing`` the failures are listed in ``Resolution.missing``.
        ``include_runtime_extras`` makes :meth:`Resolution.paths` include the run-time
        extras found in the root; they are always reported.
        """
        fs = self._fs
        given = os.fspath(program)
        if self.root is None:
            given = os.path.abspath(given)
        path = given if given.startswith("/") else _join(self.cwd, given)
        node = fs.lookup(path)
        where = f" in {self.root}" if self.root is not None else ""
        if node is None:
            raise HostFileError(f"{given} does not exist{where}")
        if not stat.S_ISREG(node.st.st_mode):
            raise HostFileError(f"{given} is not a regular file{where}")
        info = fs.elf(node)
        if self.machine is not None:
            check_machine(info, self.machine)

        platforms = _GUEST_PLATFORMS.get(info.machine, (None,))
        search, extras = self._search(given, node, info, platforms[0])
        passes = [search]
        if search.platform_used:
            passes.extend(self._search(given, node, info, p)[0] for p in platforms[1:])

        # A library missing for any value of $PLATFORM is missing (the first pass's report).
        first_report: dict[tuple[str, str], Missing] = {}
        for one in passes:
            for m in one.missing:
                first_report.setdefault((m.name, m.needed_by), m)
        missing = tuple(first_report.values())
        fatal = [m for m in missing if m.fatal]
        if fatal and not allow_missing:
            raise _missing_error(fatal, search)

        libraries: dict[str, LoadedFile] = {}
        for one in passes:
            for obj in one.loaded[1:]:
                if obj is not one.interp and obj.path not in libraries:
                    needer = obj.loader.path if obj.loader else one.main.path
                    libraries[obj.path] = self._file(obj, needer)
        interp_obj = search.interp
        return Resolution(
            program=self._file(search.main, None),
            interpreter=None if interp_obj is None else self._file(interp_obj, given),
            libraries=tuple(libraries.values()),
            missing=missing,
            runtime_extras=tuple(extras),
            libc=search.libc,
            root=self.root,
            include_runtime_extras=include_runtime_extras,
        )

    def _search(
        self, given: str, node: _Node, info: ElfInfo, platform: str | None
    ) -> tuple[_Search, list[RuntimeExtra]]:
        """One resolution of the program, with the guest loader's $PLATFORM = ``platform``."""
        # The executable's $ORIGIN is the directory of its fully resolved path (glibc reads
        # /proc/self/exe: sysdeps/unix/sysv/linux/dl-origin.c; musl does the same).
        main = _Obj(given, given, node, info, None, "program", origin=_dirname(node.real))
        libc: Libc | None = None
        if info.interpreter is not None:
            libc = "musl" if os.path.basename(info.interpreter).startswith("ld-musl-") else "glibc"
        elif info.needed:
            libc = "glibc"  # a shared library given as the program
        search = _Search(self, main, libc, platform)
        # The executable's own name is "" for glibc (elf/rtld.c); only its soname matches.
        search.register(main, ())

        if info.interpreter is not None:
            self._interpreter(search, info)
        if libc == "glibc":
            if search.glibc is None:
                # No usable interpreter (a missing one, or a library given as the program):
                # guess the default directories from the layout of the root.
                dirs = self._layout_dirs(info)
                search.glibc = _GlibcSetup(
                    dirs, dirs[0].strip("/"), self._ld_so_cache(), self._ld_so_conf()
                )
            if self.env.get("LD_LIBRARY_PATH"):
                # ld.so(8): LD_LIBRARY_PATH elements are separated by ':' or ';', and tokens
                # are expanded for the executable (elf/dl-load.c, _dl_init_paths).
                search.env_dirs = search.glibc_dirs(self.env["LD_LIBRARY_PATH"], main, ":;")

        # musl's search path comes from its loader's location, so nothing more can be found
        # without it; glibc's can still be listed (the loader is reported missing).
        if libc == "glibc" or (libc == "musl" and search.interp is not None):
            queue = [main]
            queue.extend(self._preloads(search))
            search.load_closure(queue)

        # Data files matter for static programs too (Go's resolver reads /etc/hosts).
        extras = self._runtime_extras(search)

        return search, extras

    def _interpreter(self, search: _Search, info: ElfInfo) -> None:
        fs = self._fs
        interp_path = info.interpreter
        assert interp_path is not None
        # The kernel (and Nanos, src/unix/exec.c) opens exactly the PT_INTERP path.
        node = fs.lookup(interp_path) if interp_path.startswith("/") else None
        if node is None or not stat.S_ISREG(node.st.st_mode):
            search.missing.append(
                Missing(interp_path, search.main.path, (interp_path,), "interpreter not found")
            )
            return
        interp_info = fs.elf(node)
        if (interp_info.elf_class, interp_info.machine) != (info.elf_class, info.machine):
            raise ElfMismatch(
                f"the interpreter {interp_path} is a {_describe(interp_info)} ELF, but "
                f"{search.main.path} is {_describe(info)}"
            )
        interp = _Obj(
            interp_path,
            interp_path,
            node,
            interp_info,
            search.main,
            "interpreter",
            origin=_dirname(interp_path),
        )
        # The loader is already loaded: its PT_INTERP path and its soname satisfy DT_NEEDED
        # entries (libc.so.6 needs ld-linux-x86-64.so.2), elf/rtld.c.
        search.interp = interp
        search.register(interp, (interp_path,))
        if search.libc == "glibc":
            search.glibc = self._glibc_setup(interp, interp_info)

    def _preloads(self, search: _Search) -> list[_Obj]:
        names: list[str] = []
        preload = self.env.get("LD_PRELOAD", "")
        if search.libc == "musl":
            names = [n for n in re.split(r"[\s:]+", preload) if n]
        else:
            # elf/rtld.c: LD_PRELOAD is split on spaces and colons, /etc/ld.so.preload also on
            # tabs and newlines; both are loaded before the DT_NEEDED entries.
            names = [n for n in re.split(r"[ :]+", preload) if n]
            data = self._fs.read_bytes("/etc/ld.so.preload")
            if data is not None:
                text = data.decode("utf-8", "surrogateescape")
                names += [n for n in re.split(r"[ \t\n:]+", text) if n]
        unique = list(dict.fromkeys(names))
        NEEDED.check(len(unique), "the names in LD_PRELOAD and /etc/ld.so.preload")
        loaded: list[_Obj] = []
        for name in unique:
            before = len(search.loaded)
            obj = search.map(name, search.main, preload=True)
            if obj is not None and len(search.loaded) > before:
                loaded.append(obj)
        return loaded

    # -- things loaded with dlopen ---------------------------------------------------

    def _runtime_extras(self, search: _Search) -> list[RuntimeExtra]:
        extras: list[RuntimeExtra] = []
        for path in _LOOKUP_FILES:
            extras.append(self._data_file(path, "read by user and host-name lookups"))
        if search.libc != "glibc":
            return extras
        libc = search.by_soname.get("libc.so.6") or search.by_name.get("libc.so.6")
        if libc is None:
            return extras
        modern = "GLIBC_2.34" in self._versions(libc)
        wanted: list[tuple[str, str]] = []
        # glibc dlopens libgcc_s.so.1 (by soname) to unwind for pthread_cancel, pthread_exit
        # and backtrace (sysdeps/generic/unwind-resume / nptl).
        wanted.append(("libgcc_s.so.1", "dlopened by glibc for pthread_cancel and backtrace"))
        for service in self._nss_services(modern):
            wanted.append(
                (f"libnss_{service}.so.2", f"NSS module for '{service}' in nsswitch.conf")
            )
        before = len(search.loaded)
        missing_before = len(search.missing)
        for name, purpose in wanted:
            present = search.already_loaded(name)
            if present is not None and present.seq < before:
                continue  # already part of the closure
            obj = search.map(name, libc)
            if obj is None:
                extras.append(RuntimeExtra(name, purpose, None))
            elif obj.seq >= before:
                extras.append(RuntimeExtra(name, purpose, self._file(obj, libc.path)))
        # Their own dependencies come along, as dlopen loads them.
        search.load_closure(search.loaded[before:])
        listed = {e.file.path for e in extras if e.file is not None}
        for obj in search.loaded[before:]:
            if obj.path not in listed:
                needer = obj.loader.path if obj.loader else libc.path
                extras.append(
                    RuntimeExtra(obj.name, f"needed by {needer}", self._file(obj, needer))
                )
        # Failures here do not stop the program from starting: report, do not raise.
        del search.missing[missing_before:]
        del search.loaded[before:]
        return extras

    def _versions(self, libc: _Obj) -> tuple[str, ...]:
        key = libc.node.real
        versions = self._glibc_versions.get(key)
        if versions is None:
            try:
                versions = read_version_definitions(key, display=key, window=self._fs.window(key))
            except PyopsError:
                versions = ()
            self._glibc_versions[key] = versions
        return versions

    def _nss_services(self, modern: bool) -> list[str]:
        """NSS modules user and host lookups load (nss/nss_database.c)."""
        data = self._fs.read_bytes("/etc/nsswitch.conf")
        services: list[str] = []
        if data is None:
            # Without nsswitch.conf glibc uses "files" (and "dns" for hosts).
            services = ["files", "dns"]
        else:
            for raw in data.decode("utf-8", "surrogateescape").splitlines():
                line = raw.split("#", 1)[0]
                database, sep, rest = line.partition(":")
                if not sep or database.strip() not in _NSS_DATABASES:
                    continue
                for word in re.sub(r"\[[^\]]*\]", " ", rest).split():
                    if word not in services:
                        services.append(word)
        if modern:
            # Since glibc 2.34 files and dns are built into libc.so.6.
            return [s for s in services if s not in ("files", "dns")]
        # Older glibc needs the files and dns modules for /etc/hosts and DNS in any case.
        return list(dict.fromkeys(services + ["files", "dns"]))


def _missing_error(fatal: list[Missing], search: _Search) -> PyopsError:
    first = fatal[0]
    others = len(fatal) - 1
    more = f" ({others} more missing; --allow-missing lists them all)" if others else ""
    if first.reason == "interpreter not found":
        return LibraryNotFound(
            f"the interpreter {first.name} of {first.needed_by} is not in the image{more}",
            library=first.name,
            needed_by=first.needed_by,
            searched=first.searched,
            hint="the kernel loads the interpreter from exactly its PT_INTERP path",
        )
    if first.reason != "not found":
        return NotAnElf(
            f"cannot load {first.name} needed by {first.needed_by}: {first.reason}{more}",
            hint="the loader stops at the first unusable file it finds on its search path",
        )
    searched = ", ".join(first.searched) if first.searched else "nothing"
    hint = "add the library to the image, or set LD_LIBRARY_PATH in the image's environment"
    glibc = search.glibc
    if first.skipped:
        main = search.main.info
        return LibraryNotFound(
            f"{first.name} needed by {first.needed_by} was not found for its machine "
            f"({_describe(main)}): the loader passes over {'; '.join(first.skipped)}{more}",
            library=first.name,
            needed_by=first.needed_by,
            searched=first.searched,
            hint=f"add the {main.machine.removeprefix('EM_').lower()} build of {first.name} "
            "to the image (libraries of another architecture are never loaded)",
        )
    if glibc is not None and "/" not in first.name:
        fs = search.fs
        elsewhere = [d for d in glibc.conf_dirs if fs.entry(d, first.name) is not None]
        if elsewhere:
            hint = (
                f"{first.name} is in {elsewhere[0]}, listed in /etc/ld.so.conf, but the "
                "image's /etc/ld.so.cache does not point there (missing or stale): run "
                "ldconfig in the image or set LD_LIBRARY_PATH"
            )
    return LibraryNotFound(
        f"{first.name} needed by {first.needed_by} was not found; searched: {searched}{more}",
        library=first.name,
        needed_by=first.needed_by,
        searched=first.searched,
        hint=hint,
    )


def resolve(
    program: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    machine: str | None = None,
    allow_missing: bool = False,
    include_runtime_extras: bool = False,
    cwd: str = "/",
    emulate_ldconfig: bool = False,
) -> Resolution:
    """Resolve ``program`` inside ``root`` (the host's ``/`` if None) like the real loader.

    See :class:`Resolver` for ``env``, ``machine``, ``cwd`` and ``emulate_ldconfig``, and
    :meth:`Resolver.resolve` for the errors and the other flags.
    """
    resolver = Resolver(root, env=env, machine=machine, cwd=cwd, emulate_ldconfig=emulate_ldconfig)
    return resolver.resolve(
        program, allow_missing=allow_missing, include_runtime_extras=include_runtime_extras
    )


def format_tree(resolution: Resolution) -> str:
    """The closure as an indented tree, one ``name => path`` per line (like lddtree)."""
    by_path = {lib.path: lib for lib in resolution.libraries}
    program = resolution.program
    lines = [program.path]
    if resolution.interpreter is not None:
        lines[0] += f" (interpreter => {resolution.interpreter.path})"
    elif resolution.libc is None:
        lines[0] += " (statically linked)"
    interp_path = resolution.interpreter.path if resolution.interpreter else None
    shown: set[str] = set()
    walked: set[str] = set()
    missing = {(m.name, m.needed_by): m for m in resolution.missing}

    def walk(top: LoadedFile, top_depth: int) -> None:
        # Depth first without recursion: (an object's remaining needs, their depth).
        stack = [(iter(top.needed), top, top_depth)]
        while stack:
            needs, item, depth = stack[-1]
            indent = "    " * depth
            for name, path in needs:
                if path is None:
                    reason = missing.get((name, item.path))
                    lines.append(f"{indent}{name} => {reason.reason if reason else 'not found'}")
                    continue
                child = by_path.get(path)
                if (
                    child is not None
                    and child.needed_by == item.path
                    and child.name == name
                    and path not in walked
                ):
                    # Each library is shown once, under the object that made the loader load it.
                    walked.add(path)
                    lines.append(f"{indent}{name} => {path}")
                    stack.append((iter(child.needed), child, depth + 1))
                    break
                if path == interp_path and resolution.libc == "musl" and name not in shown:
                    shown.add(name)  # musl's libc.so is its loader
                    lines.append(f"{indent}{name} => {path}")
            else:
                stack.pop()

    walk(program, 1)
    preloaded = {name for name, _ in program.needed}
    for lib in resolution.libraries:
        if lib.needed_by == program.path and lib.name not in preloaded:
            lines.append(f"    {lib.name} => {lib.path} (preloaded)")
            walk(lib, 2)
    if resolution.runtime_extras:
        lines.append("run-time extras (loaded with dlopen or read at run time):")
        for extra in resolution.runtime_extras:
            where = extra.file.path if extra.file is not None else "not in the image"
            lines.append(f"    {extra.name} => {where}  [{extra.purpose}]")
    return "\n".join(lines)

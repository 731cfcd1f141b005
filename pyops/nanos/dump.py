"""``dump``: Nanos's own image reader, printing what its ``tools/dump.c`` prints.

Nanos's ``dump [-d DIR] [-t] [-l] IMAGE`` opens the root filesystem of a disk (or a bare
TFS volume) and prints::

    detected filesystem at 0x<root offset>      (a disk with a partition table only)
    Label: <label>
    UUID: <uuid>
    metadata
    <the root tuple, as the kernel holds it>

With ``-t`` the metadata is replaced by a coloured tree of the files; with ``-d DIR`` the
files and folders are also copied into DIR; ``-l`` prints the kernel's crash log (the klog
area in front of the first partition) instead.

Values are printed as Nanos's ``print_value`` prints them (nanos ``src/runtime/
extra_prints.c``): entries in byte order of their names, each on its own line and indented
under the first; strings and names as they are; integers in decimal; ``<null>``; untyped
buffers that are not printable ASCII as ``{binary, length N}``; a tuple or vector printed
before as ``<visited>``. As the kernel, the reader gives every folder's tuple a ``..`` entry
naming its parent (the root's is itself, so it shows as ``..:<visited>``).

Unlike Nanos's dump, the tree lists names in byte order (Nanos's in hash-table order, which
changes from run to run), the copy refuses names that would leave DIR, and nothing read
from the image can make the printing recurse or loop.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from pyops.errors import HostFileError, ImageFormatError
from pyops.limits import PATH_DEPTH
from pyops.nanos.boot import PARTITION_TABLE
from pyops.nanos.disk import PARTITION_ESP
from pyops.nanos.tfs import SECTOR, Volume, file_extents, format_uuid, read_volume
from pyops.nanos.tree import Directory, File, ImageData, Tree, sorted_names

# dump.c's colours (ANSI codes) for folders, links and other entries.
BLUE, CYAN, WHITE = 94, 96, 97


# --- print_value ----------------------------------------------------------------------------


class _Text(str):
    """Text :func:`format_value` writes as it is."""

    __slots__ = ()


def printable(text: str) -> str:
    """``text`` with control characters (and undecodable bytes) escaped, for a terminal:
    a name or value from an image cannot then move the cursor, clear the screen or forge a
    line. Nanos's dump prints them as they are, as pyops's does into a pipe or a file."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or char == " ":
            out.append(char)
        elif "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _plain(text: str) -> str:
    return text


def _scalar(value: Any) -> str:
    if value is None:
        return "<null>"
    if isinstance(value, bool):  # not a TFS value; shown as the kernel would not
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes | bytearray):
        if any(b < 0x20 or b > 0x7E for b in value):
            return f"{{binary, length {len(value)}}}"
        return value.decode("ascii")
    return str(value)


def _name_bytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


def format_value(
    value: Any,
    indent: int | None = 0,
    parents: Mapping[int, Any] | None = None,
    *,
    escape: bool = False,
) -> str:
    """``value`` as Nanos's ``print_value`` prints it (``indent`` None: all on one line).

    ``parents`` maps the ``id`` of a folder's tuple to its parent's tuple, shown as the
    folder's ``..`` entry (see :func:`folder_parents`). ``escape`` escapes control
    characters in names and values (see :func:`printable`). Iterative: any depth prints.
    """
    show = printable if escape else _plain
    out: list[str] = []
    visited: set[int] = set()
    links = parents or {}
    # Work items: text to write, or (value, indent) to print.
    stack: list[Any] = [(value, indent)]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item)
            continue
        value, level = item
        if not isinstance(value, dict | list | tuple):
            out.append(show(_scalar(value)))
            continue
        if id(value) in visited:
            out.append("<visited>")
            continue
        visited.add(id(value))
        todo: list[Any] = []
        if isinstance(value, dict):
            inner = None if level is None else level + 1
            entries = dict(value)
            parent = links.get(id(value))
            if parent is not None:
                entries[".."] = parent
            todo.append(_Text("("))
            for i, name in enumerate(sorted_names(entries)):
                if i:
                    todo.append(_Text(" " if inner is None else "\n" + " " * inner))
                shown = show(name)
                todo.append(_Text(f"{shown}:"))
                after = None if inner is None else inner + _name_bytes(shown) + 1
                todo.append((entries[name], after))
            todo.append(_Text(")"))
        else:
            inner = None if level is None else level + 1
            todo.append(_Text("["))
            for i, element in enumerate(value):
                if i:
                    todo.append(_Text(" " if inner is None else "\n" + " " * inner))
                todo.append((element, inner))
            todo.append(_Text("]"))
        todo.reverse()
        stack.extend(todo)
    return "".join(out)


def folder_parents(root: dict[str, Any]) -> dict[int, Any]:
    """The ``..`` entries the kernel's reader adds: the ``id`` of each folder's tuple (one
    with a ``children`` tuple, reached through ``children`` from the root) to its parent's
    tuple; the root is its own parent."""
    parents: dict[int, Any] = {}
    seen: set[int] = set()
    stack: list[tuple[dict[str, Any], dict[str, Any]]] = [(root, root)]
    while stack:
        node, parent = stack.pop()
        children = node.get("children")
        if not isinstance(children, dict):
            continue
        parents[id(node)] = parent
        if id(node) in seen:
            continue
        seen.add(id(node))
        for child in children.values():
            if isinstance(child, dict):
                stack.append((child, node))
    return parents


# --- finding the filesystem -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """Where dump finds the root filesystem."""

    offset: int
    detected: bool
    """Whether a partition table said so (else the file is read as a bare volume)."""


def _sector0(f: BinaryIO, path: str) -> bytes:
    f.seek(0)
    data = f.read(SECTOR)
    if len(data) < SECTOR:
        raise ImageFormatError(f"{path} is smaller than one sector: it is not an image")
    return data


def _entry(sector0: bytes, index: int) -> tuple[int, int, int]:
    """(type, first sector, sectors) of partition entry ``index``."""
    at = PARTITION_TABLE + 16 * index
    lba, count = struct.unpack_from("<II", sector0, at + 8)
    return sector0[at + 4], lba, count


def find_root(f: BinaryIO, path: str) -> Found:
    """The root filesystem as dump finds it: by the partition table when sector 0 ends in
    55 AA (entry 2 after an EFI System Partition, else entry 1), else at byte 0."""
    sector0 = _sector0(f, path)
    if sector0[510:512] != b"\x55\xaa":
        return Found(0, False)
    first_type = _entry(sector0, 0)[0]
    _type, lba, count = _entry(sector0, 2 if first_type == PARTITION_ESP else 1)
    if not lba or not count:
        return Found(0, False)
    return Found(lba * SECTOR, True)


def open_root(path: str | os.PathLike[str]) -> tuple[Found, Volume]:
    """The root filesystem of the image at ``path``, found as dump finds it, and read."""
    from pyops.nanos.disk import reading_image

    p = os.fspath(path)
    with reading_image(p) as f:
        found = find_root(f, p)
        try:
            volume = read_volume(f, found.offset)
        except ImageFormatError as exc:
            where = f" at byte {found.offset:#x}" if found.detected else ""
            raise ImageFormatError(f"{p}: the filesystem{where} is unusable: {exc}") from exc
    return found, volume


# --- what dump prints -----------------------------------------------------------------------


def header(volume: Volume, *, escape: bool = False) -> str:
    """``Label: ...`` and ``UUID: ...``, without the last line's end."""
    label = printable(volume.info.label) if escape else volume.info.label
    return f"Label: {label}\nUUID: {format_uuid(volume.info.uuid)}"


def metadata(volume: Volume, *, escape: bool = False) -> str:
    """dump's default output after the ``detected filesystem`` line (``escape``: see
    :func:`printable`)."""
    root = volume.root
    text = format_value(root, 0, folder_parents(root), escape=escape)
    return f"{header(volume, escape=escape)}\nmetadata\n{text}\n"


def tree_lines(volume: Volume, *, escape: bool = False) -> Iterator[str]:
    """dump ``-t``'s tree, a line at a time (with their line ends): ``|   `` for each level,
    then the name coloured blue for a folder, cyan and ``-> TARGET`` for a link, else white
    (``escape``: see :func:`printable`).
    """
    show = printable if escape else _plain
    root = volume.root
    stack: list[tuple[int, str, Any]] = [(0, "/", root)]
    while stack:
        level, name, node = stack.pop()
        prefix = "|   " * level
        if not isinstance(node, dict):
            raise ImageFormatError(f"the entry {name!r} of the volume is not a tuple")
        children = node.get("children")
        if isinstance(children, dict):
            yield f"{prefix}\x1b[{BLUE}m{show(name)}\x1b[0m\n"
            names = [n for n in sorted_names(children) if n not in (".", "..")]
            stack.extend((level + 1, n, children[n]) for n in reversed(names))
            continue
        target = node.get("linktarget")
        if target is not None:
            text = target if isinstance(target, str) else format_value(target, None)
            yield f"{prefix}\x1b[{CYAN}m{show(name)}\x1b[0m -> {show(text)}\n"
        else:
            yield f"{prefix}\x1b[{WHITE}m{show(name)}\x1b[0m\n"


def copy_tree(volume: Volume, image_path: str) -> Tree:
    """What dump ``-d`` copies: folders (tuples with ``children``) and files (tuples with
    ``extents``); links and tuples with neither are left out, as dump leaves them out."""
    tree = Tree()
    stack: list[tuple[Directory, dict[str, Any], str, int]] = [(tree.root, volume.root, "", 0)]
    depth_limit = PATH_DEPTH.value()
    while stack:
        directory, node, path, depth = stack.pop()
        children = node.get("children")
        if not isinstance(children, dict):
            continue
        for name in sorted_names(children):
            if name in (".", ".."):
                continue
            child = children[name]
            child_path = f"{path}/{name}"
            if not name or "/" in name or "\0" in name:
                raise ImageFormatError(
                    f"the volume holds the name {name!r} in {path or '/'}, which cannot be "
                    "copied to a host folder"
                )
            if not isinstance(child, dict):
                raise ImageFormatError(f"{child_path} is not a tuple in the volume")
            if isinstance(child.get("children"), dict):
                if depth + 1 > depth_limit:
                    raise PATH_DEPTH.exceeded(f"a folder of the image ({child_path[:80]})")
                sub = Directory()
                directory.entries[name] = sub
                stack.append((sub, child, child_path, depth + 1))
            elif isinstance(child.get("extents"), dict):
                extents, size = file_extents(child, volume.offset, volume.info.size, child_path)
                directory.entries[name] = File(ImageData(image_path, extents, size))
    return tree


def extract(
    volume: Volume, image_path: str | os.PathLike[str], dest: str | os.PathLike[str]
) -> Any:
    """Copy what dump ``-d DEST`` copies into ``dest`` (made if missing); returns the
    :class:`~pyops.nanos.extract.CopyResult`. Nothing is written outside ``dest``."""
    from pyops.nanos.extract import copy_out

    tree = copy_tree(volume, os.fspath(image_path))
    target = os.fspath(dest)
    if not os.path.isdir(target):
        try:
            os.mkdir(target)
        except OSError as exc:
            raise HostFileError(f"cannot make the folder {target}: {exc.strerror}") from exc
    return copy_out(tree, ["/"], target, recursive=True)


# --- the crash log --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Klog:
    """The kernel's crash log (klog) of a disk, as dump ``-l`` reads it."""

    partition_offset: int
    offset: int
    size: int
    boot_id: int
    exit_code: int
    messages: bytes
    """The log's text, up to its first NUL."""

    def report(self, *, escape: bool = False) -> bytes:
        """dump ``-l``'s output after the ``detected filesystem`` line (``escape``: control
        characters of the log but its line ends escaped, see :func:`printable`)."""
        head = (
            f"klog offset: {self.offset:#x}\nklog size: {self.size} bytes\n"
            f"boot id: {self.boot_id:x}\nexit code: {self.exit_code}\n\n"
        )
        messages = self.messages
        if escape:
            lines = messages.decode("utf-8", "surrogateescape").split("\n")
            text = "\n".join(printable(line.replace("\t", "    ")) for line in lines)
            messages = text.encode("utf-8", "surrogateescape")
        return head.encode() + messages + b"\n"


_KLOG_MAGIC = b"KLOG"
_KLOG_HEADER = 16  # magic, boot id (u64), exit code (s32), packed


def first_partition(path: str | os.PathLike[str]) -> int:
    """The byte offset of the disk's first partition (entry 0), or 0 when it has none."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            sector0 = _sector0(f, p)
    except FileNotFoundError:
        raise HostFileError(f"{p}: no such file") from None
    except OSError as exc:
        raise HostFileError(f"{p}: cannot read it ({exc.strerror})") from exc
    _type, lba, count = _entry(sector0, 0)
    return lba * SECTOR if lba and count else 0


KLOG_SEARCH = 1 << 20
"""How far in front of the first partition the crash log is looked for. Nanos's klog is
4 KiB, right in front of it; Nanos's dump searches back to sector 1, which on a hostile image
(a first partition terabytes in) would never end."""


def read_klog(path: str | os.PathLike[str], partition_offset: int) -> Klog | None:
    """The crash log in front of the partition at ``partition_offset``: from the nearest
    sector before it that starts with ``KLOG`` (within :data:`KLOG_SEARCH` bytes, and after
    sector 0) to the partition. None when no sector does."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            start = partition_offset - SECTOR
            lowest = max(partition_offset - KLOG_SEARCH, 0)
            while start > 0 and start >= lowest:
                f.seek(start)
                head = f.read(_KLOG_HEADER)
                if len(head) != _KLOG_HEADER:
                    raise ImageFormatError(f"{p}: cannot read the sector at byte {start}")
                if head[:4] == _KLOG_MAGIC:
                    break
                start -= SECTOR
            else:
                return None
            boot_id, exit_code = struct.unpack_from("<Qi", head, 4)
            size = partition_offset - start
            messages = bytearray()
            left = size - _KLOG_HEADER
            while left > 0:
                piece = f.read(min(left, 1 << 16))
                if not piece:
                    raise ImageFormatError(f"{p}: the klog ends past the end of the file")
                end = piece.find(b"\0")
                if end >= 0:
                    messages += piece[:end]
                    break
                messages += piece
                left -= len(piece)
    except FileNotFoundError:
        raise HostFileError(f"{p}: no such file") from None
    except OSError as exc:
        raise HostFileError(f"{p}: cannot read it ({exc.strerror})") from exc
    return Klog(partition_offset, start, size, boot_id, exit_code, bytes(messages))


__all__ = [
    "Found",
    "Klog",
    "copy_tree",
    "extract",
    "find_root",
    "first_partition",
    "folder_parents",
    "format_value",
    "KLOG_SEARCH",
    "header",
    "metadata",
    "open_root",
    "printable",
    "read_klog",
    "tree_lines",
]

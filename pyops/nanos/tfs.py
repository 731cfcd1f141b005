"""TFS version 5 volumes: writing a tree into one, and reading one back.

The layout follows nanos-image-format.md sections 2 and 7 and reproduces the C ``mkfs``
writer (nanos ``tools/mkfs.c``): one snapshot record of the tree, then per file an
``extents`` update, one update per extent, and a ``filelength`` update (and for a file of
several names, an ``nlink`` update: the count is known only once the tree is walked).  Given
the same entry order, the metadata bytes are those of C mkfs.  Placement:

* sector 0: the initial extension (magic, version, UUID, label, link to sector 1);
* sectors 1 ... 1024: the first log extension;
* two unrecorded 1,024-sector runs: the kernel reserves the first two free runs of that size
  for its own log before it writes any file data (section 2.6), so this gap is what lets the
  guest write files at all;
* file data, in encoding order, packed, split into extents of at most 32 MiB;
* further log extensions, if the log needs them, after the data (as Ops places them).

With one log extension this is exactly C mkfs's placement (data at sector 3,073).

Everything is deterministic: entries are encoded in the order of the input dicts (a tree's
names in byte order), and the UUID is derived from the metadata unless given.

A tree is written in one walk, with memory for the folders being walked and the distinct
names met, not for its entries: the snapshot is encoded as the walk goes (a host folder
nothing has read is listed from the host and dropped once written), each file is placed
when the walk meets it and handed to :mod:`pyops.nanos.copier`, which copies it while the
walk goes on, and the snapshot and the placed files wait in temporary files until the walk
ends, when the log is framed and written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeAlias

from pyops.errors import (
    FilesystemFull,
    ImageFormatError,
    InvalidInput,
)
from pyops.limits import FILE_BYTES, PATH_DEPTH
from pyops.nanos.copier import DataCopy, iter_image_data
from pyops.nanos.gcpause import gc_paused
from pyops.nanos.tree import (
    Directory,
    File,
    HardLink,
    HostFile,
    ImageData,
    ImageExtent,
    Node,
    Source,
    Symlink,
    Tree,
    host_entries,
    sorted_names,
)
from pyops.nanos.tuples import (
    TYPE_TUPLE,
    DecodedTuple,
    Decoder,
    Encoder,
    check_structure,
    encode_header,
    encode_varint,
)
from pyops.progress import NULL_PROGRESS, Progress

SECTOR = 512
MAGIC = b"NVMTFS"
VERSION = 5
EXTENSION_SECTORS = 1024  # TFS_LOG_DEFAULT_EXTENSION_SIZE
EXTENSION_BYTES = EXTENSION_SECTORS * SECTOR
RESERVED_GAP_SECTORS = 2 * EXTENSION_SECTORS  # C mkfs's "next extension" and "next new log"
MAX_EXTENT_SECTORS = 65536  # MAX_EXTENT_SIZE: 32 MiB, as C mkfs splits files
LABEL_MAX = 31  # VOLUME_LABEL_MAX_LEN is 32 with the terminating NUL
SLACK = 512 * 1024  # C mkfs rounds volumes up to this, with at least this much free

# Log frame types (nanos src/fs/tlog.c)
END_OF_LOG = 0x01
TUPLE_AVAILABLE = 0x02
TUPLE_EXTENDED = 0x03
END_OF_SEGMENT = 0x04
LOG_EXTENSION_LINK = 0x05

_EXTENSION_HEADER = MAGIC + bytes([VERSION]) + encode_varint(EXTENSION_SECTORS)


class FileEntry(dict[str, Any]):
    """A regular file's tuple in a tree about to be written: a dict that knows its contents."""

    __slots__ = ("source",)

    def __init__(self, source: Source, attributes: Mapping[str, Any] | None = None) -> None:
        super().__init__(attributes or ())
        self.source = source

    def __hash__(self) -> int:  # type: ignore[override]
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """What was written, or read: where the log and data are, and the volume's identity."""

    uuid: bytes
    label: str
    size: int  # bytes
    log_extensions: tuple[tuple[int, int], ...]  # (first sector, sectors)
    data_start: int  # first data sector
    data_end: int  # sector after the last data sector
    files: int


def format_uuid(raw: bytes) -> str:
    """``xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``, lowercase, bytes in order."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def check_label(label: str) -> bytes:
    """The label's bytes, refusing labels Nanos would reject."""
    raw = label.encode("utf-8")
    if len(raw) > LABEL_MAX:
        raise InvalidInput(
            f"volume label {label!r} is {len(raw)} bytes long; Nanos allows at most {LABEL_MAX}"
        )
    if b"\0" in raw:
        raise InvalidInput(f"volume label {label!r} contains a NUL byte")
    return raw


# --- the root of a volume made from a Tree ------------------------------------------------------


class RootTuple:
    """A volume's root tuple made from a :class:`Tree`: ``children`` (the tree), then the
    configuration ``items``.

    It is not converted into tuples: the writer encodes the tree as it walks it, reading
    folders that nothing has read yet straight from the host (see
    :class:`~pyops.nanos.tree.Directory`), so the tree is never held twice.
    """

    __slots__ = ("tree", "items")

    def __init__(self, tree: Tree, items: Mapping[str, Any]) -> None:
        self.tree = tree
        self.items = items


def root_tuple(tree: Tree, items: dict[str, Any] | None = None) -> RootTuple:
    """The root tuple of a volume: ``children`` first, then configuration ``items``."""
    if items and "children" in items:
        raise InvalidInput("'children' is the root directory and cannot be configured")
    return RootTuple(tree, dict(items or {}))


Root: TypeAlias = "dict[str, Any] | RootTuple"
"""What a volume is written from: a tree's root, or tuples given as dicts (mkfs)."""


# --- writing --------------------------------------------------------------------------------


def _distinct_files(root: dict[str, Any]) -> list[FileEntry]:
    """Files in encoding order (depth first, dict order), each object once."""
    seen: set[int] = set()
    out: list[FileEntry] = []
    stack: list[Any] = [root]
    while stack:
        value = stack.pop()
        if isinstance(value, FileEntry):
            if id(value) not in seen:
                seen.add(id(value))
                out.append(value)
            continue
        if isinstance(value, dict):
            if id(value) in seen:
                continue
            seen.add(id(value))
            stack.extend(reversed(list(value.values())))
        elif isinstance(value, list | tuple):
            stack.extend(reversed(value))
    return out


def _sectors(nbytes: int) -> int:
    return (nbytes + SECTOR - 1) // SECTOR


class _LogWriter:
    """Frames records into log extensions exactly as C mkfs does (section 2.3), and hands
    each extension to ``emit(k, bytes)`` as soon as it is complete.

    Each extension but the last ends with a link to the next one, which starts at sector
    ``extension_sector(k)`` for the k-th extension (0-based); the last ends with END_OF_LOG.
    """

    def __init__(
        self, extension_sector: Callable[[int], int], emit: Callable[[int, bytearray], None]
    ) -> None:
        self._sector = extension_sector
        self._emit = emit
        self._cur = bytearray(_EXTENSION_HEADER)
        self.count = 0  # extensions emitted

    # 21 = longest link frame, 21 = longest 02 header, 32 = least data worth a segment
    _LIMIT = EXTENSION_BYTES - (21 + 21 + 32)

    def record(self, record: bytes | bytearray) -> None:
        """Add one record."""
        cur = self._cur
        total = len(record)
        # Most records are small: one 02 frame with one-byte lengths, written at once.
        if total < 128 and len(cur) < self._LIMIT:
            cur.append(TUPLE_AVAILABLE)
            cur.append(total)
            cur.append(total)
            cur += record
            return
        self.record_chunks(total, (record,))

    def records(self, records: Iterable[bytes]) -> None:
        """Add records, in order (:meth:`record` for many small ones)."""
        cur = self._cur
        limit = self._LIMIT
        for record in records:
            total = len(record)
            if total < 128 and len(cur) < limit:
                cur.append(TUPLE_AVAILABLE)
                cur.append(total)
                cur.append(total)
                cur += record
            else:
                self.record_chunks(total, (record,))
                cur = self._cur

    def record_chunks(self, total: int, chunks: Iterable[bytes | bytearray]) -> None:
        """Add one record of ``total`` bytes, given as pieces in order."""
        pieces = iter(chunks)
        piece = memoryview(b"")
        written = 0
        while written < total:
            if len(self._cur) >= self._LIMIT:
                self._next()
            cur = self._cur
            seg = min(EXTENSION_BYTES - (len(cur) + 21 + 21), total - written)
            if written == 0:
                cur.append(TUPLE_AVAILABLE)
                cur += encode_varint(total)
            else:
                cur.append(TUPLE_EXTENDED)
            cur += encode_varint(seg)
            left = seg
            while left:
                if not piece:
                    piece = memoryview(next(pieces))
                n = min(left, len(piece))
                cur += piece[:n]
                piece = piece[n:]
                left -= n
            written += seg

    def _next(self) -> None:
        cur = self._cur
        cur.append(LOG_EXTENSION_LINK)
        cur += encode_varint(self._sector(self.count + 1))
        cur += encode_varint(EXTENSION_SECTORS)
        cur.append(END_OF_LOG)
        self._emit(self.count, cur)
        self.count += 1
        self._cur = bytearray(_EXTENSION_HEADER)

    def end(self) -> tuple[int, int]:
        """End the log; the last extension's number and length in bytes."""
        cur = self._cur
        cur.append(END_OF_LOG)
        self._emit(self.count, cur)
        self.count += 1
        return self.count - 1, len(cur)


def frame_log(records: Iterable[bytes], extension_sector: Callable[[int], int]) -> list[bytearray]:
    """Split records into log extensions exactly as C mkfs does (section 2.3)."""
    extensions: list[bytearray] = []
    log = _LogWriter(extension_sector, lambda _k, ext: extensions.append(ext))
    for record in records:
        log.record(record)
    log.end()
    return extensions


class _Spill:
    """Bytes written once and read back once, in order: in memory up to ``limit``, the rest
    in a temporary file.  ``buf`` is appended to directly; :meth:`check` moves it out."""

    def __init__(self, limit: int = 4 * 1024 * 1024) -> None:
        self.buf = bytearray()
        self._limit = limit
        self._file: BinaryIO | None = None
        self._spilled = 0

    def check(self) -> None:
        """Move the buffer to the file if it has grown past the limit."""
        if len(self.buf) >= self._limit:
            if self._file is None:
                self._file = tempfile.TemporaryFile()
            self._file.write(self.buf)
            self._spilled += len(self.buf)
            self.buf.clear()

    @property
    def size(self) -> int:
        return self._spilled + len(self.buf)

    def chunks(self, size: int = 1024 * 1024) -> Iterator[bytes | bytearray]:
        """Everything written, in pieces."""
        if self._file is not None:
            self._file.flush()
            self._file.seek(0)
            while chunk := self._file.read(size):
                yield chunk
        yield self.buf

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# A placed file, as the per-file updates need it: its tuple's index in the dictionary, its
# first sector, its size, and its group of names (0: none; see _Placer.groups).
_PLACED = struct.Struct("<QQQQ")


class _Placer:
    """Places each file's data as the snapshot meets it (packed, in encoding order, from
    ``FIRST_DATA_SECTOR``) and hands it to the copy; remembers, outside memory, what the
    per-file updates need."""

    def __init__(self, fd: int, offset: int, size: int | None, copy: DataCopy) -> None:
        self._fd = fd
        self._offset = offset
        self._limit = None if size is None else _sectors(size)
        self._copy = copy
        self.next = FIRST_DATA_SECTOR  # the first free data sector
        self.files = 0
        self.placed = _Spill(1024 * 1024)
        self.counts: list[int] = [0]  # names of each group of hard links (group 0: none)
        self._prealloc = _can_preallocate(fd)
        self._reserved = FIRST_DATA_SECTOR  # sectors preallocated up to here
        # Up to this sector, a file needs neither a reservation nor the size check.
        self._horizon = self._limit if self._limit is not None else 1 << 62
        if self._prealloc:
            self._horizon = min(self._horizon, self._reserved)

    def place(self, index: int, source: Source, group: int) -> None:
        start = self.next
        size = source.size
        self.next = end = start + (size + SECTOR - 1) // SECTOR
        self.files += 1
        placed = self.placed.buf
        placed += _PLACED.pack(index, start, size, group)
        if len(placed) >= _PLACED_SPILL:
            self.placed.check()
        if end > self._horizon and self._beyond(end):
            return
        self._copy.add(self._offset + start * SECTOR, source)

    def _beyond(self, end: int) -> bool:
        """Past the horizon: True if the volume is too small for ``end`` (the error comes
        once the whole need is known, and nothing more is copied), else reserve ahead."""
        if self._limit is not None and end > self._limit:
            self._horizon = 1 << 62
            self._prealloc = False
            self._copy = _NO_COPY
            return True
        if self._prealloc:
            # Reserve ahead, in large steps: the file system then allocates long runs of
            # blocks instead of growing the file a file at a time (7% faster on ext4).
            ahead = end + _PREALLOCATE_STEP // SECTOR
            if self._limit is not None:
                ahead = min(ahead, self._limit)
            at = self._offset + self._reserved * SECTOR
            _preallocate(self._fd, at, (ahead - self._reserved) * SECTOR)
            self._reserved = ahead
            self._horizon = ahead
        return False

    def new_group(self) -> int:
        self.counts.append(1)
        return len(self.counts) - 1

    def records(self) -> Iterator[tuple[int, int, int, int]]:
        """(index, first sector, size, names if a hard link else 0) of each file, in order."""
        counts = self.counts
        for chunk in self.placed.chunks(_PLACED.size * 32768):
            for index, start, size, group in _PLACED.iter_unpack(chunk):
                yield index, start, size, counts[group] if group else 0


_PREALLOCATE_STEP = 64 * 1024 * 1024
_PLACED_SPILL = 1024 * 1024


class _NoCopy:
    """Where files go once the volume is known to be too small: nowhere."""

    def add(self, offset: int, source: Source) -> None:
        pass


_NO_COPY: Any = _NoCopy()


def _encode_dict(root: dict[str, Any], encoder: Encoder, out: _Spill, placer: _Placer) -> None:
    """The snapshot of tuples given as dicts (hard links: one FileEntry under two names)."""
    if not isinstance(root.get("children", {}), dict):
        raise InvalidInput("the root's 'children' must be a tuple")
    encoder.value_deep(out.buf, root)
    for entry in _distinct_files(root):
        index = encoder.index_of(entry)
        assert index is not None
        placer.place(index, entry.source, 0)


def _link_targets(tree: Tree) -> set[str]:
    """The paths hard links of the tree name (they are all in its loaded part)."""
    targets: set[str] = set()
    stack = [tree.root]
    while stack:
        directory = stack.pop()
        if not directory.loaded:
            continue
        for node in directory.entries.values():
            if isinstance(node, Directory):
                stack.append(node)
            elif isinstance(node, HardLink):
                targets.add(node.target)
    return targets


def _tuple_header(out: bytearray, n: int) -> None:
    if n < 8:
        out.append(0x90 | n)
    else:
        out += encode_header(True, TYPE_TUPLE, n)


def _listing(directory: Directory) -> list[tuple[str, Node]]:
    if directory.loaded:
        entries = directory.entries
        return [(name, entries[name]) for name in sorted_names(entries)]
    assert directory.host is not None
    return host_entries(directory.host)


def _encode_tree(root: RootTuple, encoder: Encoder, out: _Spill, placer: _Placer) -> None:
    """The snapshot of a tree, encoded as it is walked: the bytes and the dictionary
    numbering of ``Encoder.value`` on the tuples the tree stands for (folders as
    ``{children: {...}, attributes...}``, links as ``{linktarget: ..., attributes...}``,
    files as their attributes), names in byte order.

    Only the folders being walked are held (a folder nothing has read is listed from the
    host here and dropped once written).  Names of one file (hard links, or host files of
    one inode) become one tuple: immediate where it comes first, a reference elsewhere.
    """
    tree = root.tree
    buf = out.buf
    name, value, varint = encoder.name, encoder.value, encode_varint
    targets = _link_targets(tree)
    groups: dict[object, tuple[int, int]] = {}  # hard link key -> (group, tuple index)
    counts = placer.counts

    def file(node: File, keys: list[object]) -> None:
        """Write a file's tuple: a reference if one of its ``keys`` (hard link groups) was
        written before."""
        for key in keys:
            found = groups.get(key)
            if found is not None:
                counts[found[0]] += 1
                buf.append(0x10)  # a reference, count 0 (encode_header(False, TUPLE, 0))
                buf.extend(varint(found[1]))
                return
        encoder.count += 1
        index = encoder.count
        attributes = node.attributes
        _tuple_header(buf, len(attributes))
        for key, item in attributes.items():
            name(buf, key)
            value(buf, item)
        group = 0
        if keys:
            group = placer.new_group()
            for key in keys:
                groups[key] = (group, index)
        placer.place(index, node.source, group)

    def keys_of(node: File, path: str | None) -> list[object]:
        keys: list[object] = []
        if path is not None and path in targets:
            keys.append(path)
        source = node.source
        if isinstance(source, HostFile) and source.inode is not None:
            keys.append(source.inode)
        return keys

    encoder.count += 1  # the root tuple
    _tuple_header(buf, 1 + len(root.items))
    name(buf, "children")
    # Open folders: their entries still to write, what follows their children, their path.
    listing = _listing(tree.root)
    encoder.count += 1
    _tuple_header(buf, len(listing))
    stack: list[tuple[Iterator[tuple[str, Node]], Mapping[str, Any], str]] = [
        (iter(listing), root.items, "")
    ]
    while stack:
        entries, after, base = stack[-1]
        for entry_name, node in entries:
            name(buf, entry_name)
            kind = type(node)
            if kind is File:
                assert isinstance(node, File)
                source = node.source
                if targets or (type(source) is HostFile and source.inode is not None):
                    file(node, keys_of(node, f"{base}/{entry_name}"))
                else:  # the usual file: one name, no hard links (file() without keys)
                    encoder.count += 1
                    index = encoder.count
                    attributes = node.attributes
                    if attributes:
                        _tuple_header(buf, len(attributes))
                        for key, item in attributes.items():
                            name(buf, key)
                            value(buf, item)
                    else:
                        buf.append(0x90)
                    placer.place(index, source, 0)
            elif kind is Directory:
                assert isinstance(node, Directory)
                attributes = node.attributes
                if "children" in attributes:
                    raise InvalidInput(
                        f"{base}/{entry_name}: 'children' holds a folder's entries and "
                        "cannot be one of its attributes"
                    )
                encoder.count += 1
                _tuple_header(buf, 1 + len(attributes))
                name(buf, "children")
                listing = _listing(node)
                encoder.count += 1
                _tuple_header(buf, len(listing))
                stack.append((iter(listing), attributes, f"{base}/{entry_name}"))
                break
            elif kind is Symlink:
                assert isinstance(node, Symlink)
                link: dict[str, Any] = {"linktarget": node.target}
                link.update(node.attributes)
                encoder.count += 1
                _tuple_header(buf, len(link))
                for key, item in link.items():
                    name(buf, key)
                    value(buf, item)
            elif kind is HardLink:
                assert isinstance(node, HardLink)
                target = tree.resolve_hardlink(node)
                file(target, [node.target, *keys_of(target, None)])
            else:  # pragma: no cover - the Node union is closed
                raise TypeError(node)
            out.check()
        else:
            stack.pop()
            for key, item in after.items():
                name(buf, key)
                value(buf, item)


def _file_records(encoder: Encoder, files: Iterable[tuple[int, int, int, int]]) -> Iterator[bytes]:
    """C mkfs's per-file updates: extents = {}, one update per extent, then filelength;
    and for a file of several names, nlink.

    ``files`` gives each file's (tuple index, first sector, size, names or 0).  This is
    :meth:`Encoder.update` unrolled for speed (``test_tfs`` checks it against
    :meth:`Encoder.update` and the spec's examples).  Once a symbol has been written, its
    reference never changes, so after the first file the symbols are constant bytes.
    """
    varint = encode_varint
    refs: dict[str, bytes] = {}

    def name(text: str) -> bytes:
        ref = refs.get(text)
        if ref is None:
            out = bytearray()
            encoder.name(out, text)
            ref = bytes(out)
            if not ref[0] & 0x80:  # a reference now, and forever after
                refs[text] = ref
        return ref

    # For a file of one extent, once its symbols are references: (extents, key "0" to
    # the offset's tag, the length's name and tag, the allocated's, filelength's).
    fixed: tuple[bytes, bytes, bytes, bytes, bytes] | None = None
    for index, start, size, names in files:
        ref = b"\x11" + varint(index)
        nsec = (size + SECTOR - 1) // SECTOR
        if fixed is not None and 0 < nsec <= MAX_EXTENT_SECTORS:
            extents, offset_head, length_head, allocated_head, filelength_head = fixed
            encoder.count += 2
            length = varint(nsec)
            yield ref + extents
            yield (
                b"\x11"
                + varint(encoder.count - 1)
                + offset_head
                + varint(start)
                + length_head
                + length
                + allocated_head
                + length
            )
            yield ref + filelength_head + varint(size)
        else:
            yield ref + name("extents") + b"\x90"
            extents_ref = b"\x11" + varint(encoder.new_index())
            for done in range(0, nsec, MAX_EXTENT_SECTORS):
                key = name(str(done))  # the key's symbol is numbered before the extent tuple
                encoder.new_index()
                length = varint(min(MAX_EXTENT_SECTORS, nsec - done))
                yield b"".join(
                    (
                        extents_ref,
                        key,
                        b"\x93",
                        name("offset"),
                        b"\xb0",
                        varint(start + done),
                        name("length"),
                        b"\xb0",
                        length,
                        name("allocated"),
                        b"\xb0",
                        length,
                    )
                )
            yield ref + name("filelength") + b"\xb0" + varint(size)
            if fixed is None and nsec and all(n in refs for n in _FILE_SYMBOLS):
                fixed = (
                    refs["extents"] + b"\x90",
                    refs["0"] + b"\x93" + refs["offset"] + b"\xb0",
                    refs["length"] + b"\xb0",
                    refs["allocated"] + b"\xb0",
                    refs["filelength"] + b"\xb0",
                )
        if names > 1:
            yield ref + name("nlink") + b"\xb0" + varint(names)


_FILE_SYMBOLS = ("extents", "0", "offset", "length", "allocated", "filelength")

# The first log extension is at sector 1; then C mkfs's two reserved runs; then the data.
FIRST_DATA_SECTOR = 1 + EXTENSION_SECTORS + RESERVED_GAP_SECTORS  # 3,073


def default_volume_size(used_end_sectors: int) -> int:
    """C mkfs's size rule: round up to 512 KiB with at least 512 KiB free at the end."""
    used = used_end_sectors * SECTOR
    return (used + SLACK + SLACK - 1) // SLACK * SLACK


def _uuid_hash(label: bytes, salt: bytes = b"") -> Any:
    """The hash a volume's UUID is derived from: then each log extension, in order.  Same
    tree, names, sizes and layout, same UUID."""
    return hashlib.sha256(b"pyops-tfs-uuid\0" + salt + b"\0" + label + b"\0")


def initial_extension(uuid: bytes, label: bytes) -> bytes:
    """Sector 0 of a volume: magic, version, size 1, UUID, label, link to sector 1."""
    if len(uuid) != 16:
        raise InvalidInput("a volume UUID is 16 bytes")
    sector = bytearray(MAGIC)
    sector.append(VERSION)
    sector += encode_varint(1)
    sector += uuid
    sector += label + b"\0"
    sector.append(LOG_EXTENSION_LINK)
    sector += encode_varint(1)
    sector += encode_varint(EXTENSION_SECTORS)
    sector.append(END_OF_LOG)
    sector += bytes(SECTOR - len(sector))
    return bytes(sector)


def write_volume(
    fd: int,
    offset: int,
    root: Root,
    *,
    label: str = "",
    uuid: bytes | None = None,
    size: int | None = None,
    what: str = "the volume",
    progress: Progress = NULL_PROGRESS,
) -> VolumeInfo:
    """Write a TFS volume whose root tuple is ``root`` at byte ``offset`` of the open file ``fd``.

    ``size`` is the volume size in bytes (rounded up to a sector); by default C mkfs's rule
    leaves 512 KiB to 1 MiB free at the end, besides the 1 MiB reserved gap after the log.
    Only sectors holding data are written, so the rest stays sparse; the caller sets the
    file's final length.

    The log and the data are written as the tree is walked: the writer's memory grows with
    the folders it has open and the distinct names it has met, not with the entries.
    """
    with gc_paused():
        return _write_volume(fd, offset, root, label, uuid, size, what, progress)


def _write_volume(
    fd: int,
    offset: int,
    root: Root,
    label: str,
    uuid: bytes | None,
    size: int | None,
    what: str,
    progress: Progress,
) -> VolumeInfo:
    label_bytes = check_label(label)
    progress.start("tfs", "writing files", None)
    encoder = Encoder()
    snapshot = _Spill()
    copy = DataCopy(fd, progress)
    placer = _Placer(fd, offset, size, copy)
    try:
        try:
            if isinstance(root, RootTuple):
                _encode_tree(root, encoder, snapshot, placer)
            else:
                _encode_dict(root, encoder, snapshot, placer)
            data_end = placer.next
            if size is not None and _sectors(size) < data_end:
                raise _too_small(what, data_end * SECTOR, size)
            log = _write_log(fd, offset, encoder, snapshot, placer, label_bytes, uuid)
        except BaseException:
            copy.cancel()
            raise
        finally:
            snapshot.close()
            placer.placed.close()
        copy.finish()
    finally:
        progress.finish("tfs")
    if size is None:
        volume_size = max(default_volume_size(log.used_end), log.minimum_size)
    else:
        volume_size = _sectors(size) * SECTOR
        if volume_size < log.minimum_size:
            raise _too_small(what, log.minimum_size, size)
    os.pwrite(fd, initial_extension(log.uuid, label_bytes), offset)
    return VolumeInfo(
        log.uuid,
        label,
        volume_size,
        tuple((sector, EXTENSION_SECTORS) for sector in log.sectors),
        FIRST_DATA_SECTOR,
        data_end,
        placer.files,
    )


@dataclass(frozen=True, slots=True)
class _Log:
    """Where a written log is, and what it decided."""

    sectors: tuple[int, ...]  # each extension's first sector
    used_end: int  # sector after the last sector holding log or data
    minimum_size: int  # bytes: every extension and extent inside
    uuid: bytes


def _write_log(
    fd: int,
    offset: int,
    encoder: Encoder,
    snapshot: _Spill,
    placer: _Placer,
    label: bytes,
    uuid: bytes | None,
) -> _Log:
    """Frame the snapshot and the per-file updates into extensions and write them: the
    first at sector 1, the others after the data (as Ops places them)."""
    data_end = placer.next
    digest = _uuid_hash(label)
    sectors: list[int] = []

    def extension_sector(k: int) -> int:
        return 1 if k == 0 else data_end + (k - 1) * EXTENSION_SECTORS

    def emit(k: int, ext: bytearray) -> None:
        sector = extension_sector(k)
        sectors.append(sector)
        digest.update(ext)
        os.pwrite(fd, ext, offset + sector * SECTOR)

    log = _LogWriter(extension_sector, emit)
    log.record_chunks(snapshot.size, snapshot.chunks())
    log.records(_file_records(encoder, placer.records()))
    last, length = log.end()
    last_sector = extension_sector(last)
    used_end = max(last_sector + _sectors(length), data_end if placer.files else 0)
    if data_end == FIRST_DATA_SECTOR and last == 0:
        used_end = 1 + _sectors(length)  # no data: only sector 0 and the log
    minimum = max(used_end, last_sector + EXTENSION_SECTORS) * SECTOR
    if uuid is None:
        uuid = digest.digest()[:16]
    return _Log(tuple(sectors), used_end, minimum, uuid)


def _can_preallocate(fd: int) -> bool:
    """Whether reserving the data region pays: not in memory (tmpfs), where reserving means
    zeroing every page before it is written."""
    return hasattr(os, "posix_fallocate") and _filesystem_type(fd) not in ("tmpfs", "ramfs")


def _preallocate(fd: int, start: int, length: int) -> None:
    """Reserve the data region in one go: the file system then allocates one run of blocks
    instead of growing the file a file at a time (about 7% faster writing on ext4).  Only
    the data region is reserved; free space and the log gap stay sparse.  Skipped in memory
    (tmpfs), where reserving means zeroing every page before it is written."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None or _filesystem_type(fd) in ("tmpfs", "ramfs"):
        return
    try:
        fallocate(fd, start, length)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FilesystemFull(
                f"not enough space on the host disk for {length} bytes of file data"
            ) from exc
        # EINVAL/EOPNOTSUPP: the file system cannot preallocate; the copies still work.


def _filesystem_type(fd: int) -> str | None:
    """The type of the file system holding ``fd`` (Linux: from /proc/self/mountinfo)."""
    dev = os.fstat(fd).st_dev
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split(" - ", 1)
                if len(fields) == 2 and fields[0].split()[2:3] == [wanted]:
                    return fields[1].split()[0]
    except OSError:
        pass
    return None


def _too_small(what: str, needed: int, size: int) -> FilesystemFull:
    error = FilesystemFull(
        f"{what} needs at least {needed} bytes ({_mib(needed)}), "
        f"but its size was set to {size} bytes",
        hint="give a larger size, or leave it out to size it automatically",
    )
    error.needed = needed
    return error


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Volume:
    """A volume read back: its identity, log layout and root tuple."""

    info: VolumeInfo
    version: int
    root: DecodedTuple
    offset: int  # byte offset of the volume in its file
    records: int


def read_volume(f: BinaryIO, offset: int = 0, length: int | None = None) -> Volume:
    """Parse the TFS volume at byte ``offset`` of ``f`` (of ``length`` bytes, default: to EOF).

    Any malformed input raises :class:`ImageFormatError`; the work done is bounded by the
    volume size, so corrupt data cannot make the reader loop.
    """
    if length is None:
        f.seek(0, os.SEEK_END)
        length = f.tell() - offset
    if length < SECTOR:
        raise ImageFormatError("the volume is smaller than one sector")
    log = _LogReader(f, offset, length)
    uuid, label = log.header()
    log.read_frames()
    decoder = log.decoder
    if len(decoder.dictionary) < 2 or not isinstance(decoder.dictionary[1], DecodedTuple):
        raise ImageFormatError("the volume's log has no root tuple")
    root = decoder.dictionary[1]
    # Once a tuple has two parents (a hard link, or hostile input), only the finished
    # structure shows cycles, depth and nested sharing; else the decoder checked the depth.
    if decoder.shared:
        check_structure(root, "the volume's metadata")
    data_start, data_end, nfiles = _data_range(root)
    info = VolumeInfo(uuid, label, length, tuple(log.extensions), data_start, data_end, nfiles)
    return Volume(info, VERSION, root, offset, log.records)


def read_identity(f: BinaryIO, offset: int = 0, length: int | None = None) -> tuple[bytes, str]:
    """The UUID and label of the TFS volume at byte ``offset`` of ``f``, from its first
    sector alone (the log is not read): what Nanos matches a volume by when it mounts it.

    Raises :class:`ImageFormatError` when that sector is not a TFS version 5 header.
    """
    if length is None:
        f.seek(0, os.SEEK_END)
        length = f.tell() - offset
    if length < SECTOR:
        raise ImageFormatError("the volume is smaller than one sector")
    return _LogReader(f, offset, length).header()


class _LogReader:
    """Walks a volume's log: its header, then frame after frame across its extensions."""

    def __init__(self, f: BinaryIO, offset: int, length: int) -> None:
        self.f, self.offset, self.length = f, offset, length
        self.decoder = Decoder()
        self.parser = _LogParser(b"", 0)
        self.pending: bytearray | None = None  # a record split across extensions
        self.pending_total = 0
        self.records = 0
        self.extensions: list[tuple[int, int]] = []
        self.visited: set[int] = {0}

    def sectors(self, sector: int, count: int) -> bytes:
        start = sector * SECTOR
        if count <= 0 or start + count * SECTOR > self.length:
            raise ImageFormatError(
                f"a log extension at sector {sector} ({count} sectors) lies outside the "
                f"volume of {self.length // SECTOR} sectors"
            )
        self.f.seek(self.offset + start)
        data = self.f.read(count * SECTOR)
        if len(data) != count * SECTOR:
            raise ImageFormatError(f"cannot read the log extension at sector {sector}")
        return data

    def header(self) -> tuple[bytes, str]:
        """Check the first sector's magic and version; the volume's UUID and label."""
        first = self.sectors(0, 1)
        if first[:6] != MAGIC:
            raise ImageFormatError("not a TFS volume (no NVMTFS magic)")
        parser = self.parser = _LogParser(first, 6)
        version = parser.varint()
        if version != VERSION:
            raise ImageFormatError(
                f"TFS version {version} is not supported (pyops reads version {VERSION})"
            )
        parser.varint()  # size of the initial extension; readers ignore it
        uuid = parser.take(16)
        label_end = first.find(b"\0", parser.pos, parser.pos + LABEL_MAX + 1)
        if label_end < 0:
            raise ImageFormatError("the volume label has no terminating NUL within 32 bytes")
        try:
            label = first[parser.pos : label_end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImageFormatError("the volume label is not UTF-8") from exc
        parser.pos = label_end + 1
        return uuid, label

    def read_frames(self) -> None:
        while True:
            frame = self.parser.byte()
            if frame == END_OF_LOG:
                break
            if frame == END_OF_SEGMENT:
                continue
            if frame == LOG_EXTENSION_LINK:
                self.follow_link()
            elif frame == TUPLE_AVAILABLE:
                self.record()
            elif frame == TUPLE_EXTENDED:
                self.continuation()
            else:
                raise ImageFormatError(f"unknown log frame type 0x{frame:02x}")
        if self.pending is not None:
            raise ImageFormatError("the log ends in the middle of a record")

    def follow_link(self) -> None:
        parser = self.parser
        sector = parser.varint()
        count = parser.varint()
        if count == 0:
            raise ImageFormatError("a log extension link has zero length")
        if sector in self.visited:
            raise ImageFormatError(f"the log links back to sector {sector}")
        self.visited.add(sector)
        if len(self.visited) > self.length // SECTOR:
            raise ImageFormatError("the log has more extensions than the volume has room for")
        data = self.sectors(sector, count)
        self.extensions.append((sector, count))
        if data[:6] != MAGIC:
            raise ImageFormatError(f"the log extension at sector {sector} has no magic")
        parser = self.parser = _LogParser(data, 6)
        if parser.varint() != VERSION:
            raise ImageFormatError(f"the log extension at sector {sector} is not version 5")
        parser.varint()  # its size; the link's count is what readers use

    def record(self) -> None:
        parser = self.parser
        if self.pending is not None:
            raise ImageFormatError("a new record starts before the previous one ended")
        total = parser.varint()
        seg = parser.varint()
        if seg > total or seg > len(parser.data) - parser.pos:
            raise ImageFormatError("a log record is longer than its extension")
        if seg == total:
            end = parser.pos + seg
            self.decoder.decode(parser.data, parser.pos, end)
            if self.decoder.position != end:
                raise ImageFormatError("a log record's length does not match its contents")
            parser.pos = end
            self.records += 1
        else:
            self.pending = bytearray(parser.take(seg))
            self.pending_total = total

    def continuation(self) -> None:
        pending = self.pending
        if pending is None:
            raise ImageFormatError("a record continuation has no record to continue")
        seg = self.parser.varint()
        if seg > self.pending_total - len(pending):
            raise ImageFormatError("a record continuation is longer than its record")
        pending += self.parser.take(seg)
        if len(pending) == self.pending_total:
            self.decoder.decode(pending)
            if self.decoder.position != self.pending_total:
                raise ImageFormatError("a log record's length does not match its contents")
            self.pending = None
            self.records += 1


class _LogParser:
    """Reads frames from one extension's bytes; running off the end is a format error."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ImageFormatError("a log extension ends without an end-of-log or link frame")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        value = 0
        for _ in range(10):
            c = self.byte()
            value = (value << 7) | (c & 0x7F)
            if not c & 0x80:
                return value
        raise ImageFormatError("a varint in the log is longer than 64 bits")

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise ImageFormatError("a log frame runs past the end of its extension")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


_MAX_NUMBER = 1 << 64


def _number(value: Any, what: str) -> int:
    """An unsigned number below 2^64 stored as an integer or as decimal digits."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str | bytes) and 0 < len(value) <= 20:
        if value.isascii() and value.isdigit():
            number = int(value)
    if number is None or not 0 <= number < _MAX_NUMBER:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise ImageFormatError(f"{what} is not an unsigned 64-bit number: {shown}")
    return number


def _iter_tuples(root: DecodedTuple) -> Iterator[dict[str, Any]]:
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        t = stack.pop()
        if not isinstance(t, dict) or id(t) in seen:
            continue
        seen.add(id(t))
        yield t
        children = t.get("children")
        if isinstance(children, dict):
            stack.extend(children.values())


def _data_range(root: DecodedTuple) -> tuple[int, int, int]:
    lo, hi, n = 0, 0, 0
    for t in _iter_tuples(root):
        extents = t.get("extents")
        if not isinstance(extents, dict) or "children" in t:
            continue
        n += 1
        for ext in extents.values():
            if isinstance(ext, dict) and "offset" in ext and "allocated" in ext:
                try:
                    start = _number(ext["offset"], "an extent offset")
                    end = start + _number(ext["allocated"], "an extent size")
                except ImageFormatError:
                    continue
                lo = start if not lo else min(lo, start)
                hi = max(hi, end)
    return lo, hi, n


def file_extents(
    entry: dict[str, Any], volume_offset: int, volume_length: int, path: str
) -> tuple[tuple[ImageExtent, ...], int]:
    """The extents of a decoded file tuple (absolute byte offsets), and its length."""
    size = _number(entry.get("filelength", 0), f"the length of {path}")
    FILE_BYTES.check(size, f"{path} in the image: its length")
    raw = entry.get("extents", {})
    if not isinstance(raw, dict):
        raise ImageFormatError(f"the extents of {path} are not a tuple")
    out = []
    for key, ext in raw.items():
        if not isinstance(ext, dict):
            raise ImageFormatError(f"an extent of {path} is not a tuple")
        file_sector = _number(key, f"an extent key of {path}")
        offset = _number(ext.get("offset"), f"an extent offset of {path}")
        length = _number(ext.get("length"), f"an extent length of {path}")
        if (offset + length) * SECTOR > volume_length:
            raise ImageFormatError(f"an extent of {path} lies outside the volume")
        if file_sector * SECTOR > FILE_BYTES.value():
            raise FILE_BYTES.exceeded(f"an extent of {path} in the image: its offset")
        out.append(
            ImageExtent(
                file_sector, volume_offset + offset * SECTOR, length * SECTOR, "uninited" in ext
            )
        )
    out.sort(key=lambda e: e.file_sector)
    for a, b in zip(out, out[1:], strict=False):
        if a.file_sector * SECTOR + a.length > b.file_sector * SECTOR:
            raise ImageFormatError(f"two extents of {path} overlap")
    return tuple(out), size


_ZEROS = bytes(_HOLE_CHUNK := 1 << 20)


def _zeros(n: int) -> Iterator[bytes]:
    """``n`` zero bytes in pieces of at most 1 MiB (one shared buffer: holes cost nothing)."""
    while n >= _HOLE_CHUNK:
        yield _ZEROS
        n -= _HOLE_CHUNK
    if n:
        yield _ZEROS[:n]


def iter_file_contents(data: ImageData) -> Iterator[bytes]:
    """A stored file's contents in order, in pieces of at most 1 MiB; holes and unmapped
    tails are zero bytes, produced without reading or allocating."""
    written = 0
    with open(data.image, "rb") as f:
        for pos, piece in iter_image_data(f, data, _HOLE_CHUNK):
            if pos > written:
                yield from _zeros(pos - written)
            yield piece
            written = pos + len(piece)
    if data.size > written:
        yield from _zeros(data.size - written)


def read_file_bytes(data: ImageData) -> bytes:
    """The whole contents of a stored file (holes read as zeros)."""
    return b"".join(iter_file_contents(data))


_TREE_KEYS = frozenset({"children", "extents", "filelength", "linktarget"})


def _short(path: str) -> str:
    return path if len(path) <= 80 else path[:77] + "..."


def volume_tree(volume: Volume, image_path: str) -> Tree:
    """The file tree of a volume read by :func:`read_volume`.

    A tuple met a second time (a hard link) becomes a :class:`HardLink` to the first path
    in byte order of names.  The walk is iterative; folders deeper than
    :data:`~pyops.limits.PATH_DEPTH` are refused.
    """
    tree = Tree()
    first_path: dict[int, str] = {}
    length = volume.info.size
    max_depth = PATH_DEPTH.value()

    def attributes(t: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in t.items() if k not in _TREE_KEYS}

    def listing(t: dict[str, Any], path: str) -> Iterator[tuple[str, Any]]:
        children = t["children"]
        if not isinstance(children, dict):
            raise ImageFormatError(f"the children of {path} are not a tuple")
        if id(t) in first_path:
            raise ImageFormatError(f"directory {path} appears twice in the volume")
        first_path[id(t)] = path
        return ((name, children[name]) for name in sorted(children, key=os.fsencode))

    def leaf(t: dict[str, Any], path: str) -> Node:
        attrs = attributes(t)
        target = t.get("linktarget")
        if isinstance(target, str | bytes):
            if isinstance(target, bytes):
                target = os.fsdecode(target)
            return Symlink(target, attrs)
        if id(t) in first_path:
            return HardLink(first_path[id(t)])
        first_path[id(t)] = path
        extents, size = file_extents(t, volume.offset, length, path)
        return File(ImageData(image_path, extents, size), attrs)

    root = volume.root
    if not isinstance(root, dict) or "children" not in root:
        raise ImageFormatError("the root of the volume is not a directory")
    # Open directories: (the Directory, its remaining (name, tuple) pairs, its path).
    stack = [(tree.root, listing(root, "/"), "")]
    while stack:
        directory, names, base = stack[-1]
        for name, t in names:
            if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                raise ImageFormatError(f"invalid name {name!r} in directory {base or '/'}")
            path = f"{base}/{name}"
            if not isinstance(t, dict):
                raise ImageFormatError(f"{path} is not a tuple in the volume")
            if "children" in t:
                if len(stack) > max_depth:
                    raise PATH_DEPTH.exceeded(f"a folder of the image ({_short(path)})", len(stack))
                sub = Directory(attributes=attributes(t))
                directory.entries[name] = sub
                stack.append((sub, listing(t, path), path))
                break
            directory.entries[name] = leaf(t, path)
        else:
            stack.pop()
    return tree

"""TFS version 5 volumes: writing a tree into one, and reading one back.

The layout follows nanos-image-format.md sections 2 and 7 and reproduces the C ``mkfs``
writer (nanos ``tools/mkfs.c``): one snapshot record of the tree, then per file an
``extents`` update, one update per extent, and a ``filelength`` update.  Given the same entry
order, the metadata bytes are those of C mkfs.  Placement:

* sector 0: the initial extension (magic, version, UUID, label, link to sector 1);
* sectors 1 ... 1 + 1024*n: the n log extensions, contiguous;
* two unrecorded 1,024-sector runs: the kernel reserves the first two free runs of that size
  for its own log before it writes any file data (section 2.6), so this gap is what lets the
  guest write files at all;
* file data, in encoding order, packed, split into extents of at most 32 MiB.

With one log extension this is exactly C mkfs's placement (data at sector 3,073).

Everything is deterministic: entries are encoded in the order of the input dicts (the tree
conversion sorts names by bytes), and the UUID is derived from the metadata unless given.
File data is streamed (``os.copy_file_range`` where the OS has it) and never held in memory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from pyops.errors import (
    FilesystemFull,
    HostFileError,
    ImageFormatError,
    InvalidInput,
    PyopsError,
)
from pyops.progress import NULL_PROGRESS, Progress
from pyops.tree import (
    Contents,
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
)
from pyops.tuples import DecodedTuple, Decoder, Encoder, encode_varint

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
_COPY_CHUNK = 8 * 1024 * 1024


class FileEntry(dict[str, Any]):
    """A regular file's tuple in a tree about to be written: a dict that knows its contents."""

    __slots__ = ("source",)

    def __init__(self, source: Source, attributes: dict[str, Any] | None = None) -> None:
        super().__init__(attributes or {})
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

    @property
    def uuid_text(self) -> str:
        """The UUID as Nanos prints it and ``mounts`` accepts it."""
        return format_uuid(self.uuid)


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


# --- from a Tree to tuples -------------------------------------------------------------------


def _name_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def tree_to_tuple(tree: Tree) -> dict[str, Any]:
    """The ``children`` tuple of the root directory, ready for :func:`write_volume`.

    Names are sorted by their bytes; hard links become the very same :class:`FileEntry`
    object under each name, with ``nlink`` set to the number of names.
    """
    files: dict[str, FileEntry] = {}
    links: list[tuple[dict[str, Any], str, str]] = []

    def convert(directory: Directory, path: str) -> dict[str, Any]:
        children: dict[str, Any] = {}
        base = path.rstrip("/")
        for name in sorted(directory.entries, key=_name_key):
            node = directory.entries[name]
            child_path = f"{base}/{name}"
            if isinstance(node, Directory):
                sub = {"children": convert(node, child_path)}
                sub.update(node.attributes)
                children[name] = sub
            elif isinstance(node, File):
                entry = FileEntry(node.source, dict(node.attributes))
                files[child_path] = entry
                children[name] = entry
            elif isinstance(node, Symlink):
                link: dict[str, Any] = {"linktarget": node.target}
                link.update(node.attributes)
                children[name] = link
            elif isinstance(node, HardLink):
                children[name] = None  # placeholder, filled below in order
                links.append((children, name, node.target))
            else:  # pragma: no cover - the Node union is closed
                raise TypeError(node)
        return children

    root = convert(tree.root, "/")
    counts: dict[int, int] = {}
    for children, name, target in links:
        entry = files.get(target)
        if entry is None:
            raise InvalidInput(f"hard link {name!r} points to {target}, which is not a file")
        children[name] = entry
        counts[id(entry)] = counts.get(id(entry), 1) + 1
    for entry in files.values():
        n = counts.get(id(entry))
        if n is not None:
            entry["nlink"] = n
    return root


def root_tuple(tree: Tree, items: dict[str, Any] | None = None) -> dict[str, Any]:
    """The root tuple of a volume: ``children`` first, then configuration ``items``."""
    root: dict[str, Any] = {"children": tree_to_tuple(tree)}
    if items:
        for key, value in items.items():
            if key == "children":
                raise InvalidInput("'children' is the root directory and cannot be configured")
            root[key] = value
    return root


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


def frame_log(records: list[bytes], extension_sector: Callable[[int], int]) -> list[bytearray]:
    """Split records into log extensions exactly as C mkfs does (section 2.3).

    Each extension but the last ends with a link to the next one, which starts at sector
    ``extension_sector(k)`` for the k-th extension (0-based); the last ends with END_OF_LOG.
    """
    extensions: list[bytearray] = []
    cur = bytearray(_EXTENSION_HEADER)
    limit = EXTENSION_BYTES - (21 + 21 + 32)
    for record in records:
        total = len(record)
        # Most records are small: one 02 frame with one-byte lengths, written at once.
        if total < 128 and len(cur) < limit:
            cur.append(TUPLE_AVAILABLE)
            cur.append(total)
            cur.append(total)
            cur += record
            continue
        written = 0
        while written < total:
            # 21 = longest link frame, 21 = longest 02 header, 32 = least data worth a segment
            if len(cur) >= limit:
                cur.append(LOG_EXTENSION_LINK)
                cur += encode_varint(extension_sector(len(extensions) + 1))
                cur += encode_varint(EXTENSION_SECTORS)
                cur.append(END_OF_LOG)
                extensions.append(cur)
                cur = bytearray(_EXTENSION_HEADER)
            seg = min(EXTENSION_BYTES - (len(cur) + 21 + 21), total - written)
            if written == 0:
                cur.append(TUPLE_AVAILABLE)
                cur += encode_varint(total)
            else:
                cur.append(TUPLE_EXTENDED)
            cur += encode_varint(seg)
            cur += record[written : written + seg]
            written += seg
    cur.append(END_OF_LOG)
    extensions.append(cur)
    return extensions


class _Placement(NamedTuple):
    file: FileEntry
    start: int  # first volume sector (a file's extents are contiguous)
    extents: tuple[tuple[int, int, int], ...]  # (file sector, volume sector, sectors)


def _place(files: list[FileEntry], data_start: int) -> tuple[list[_Placement], int]:
    out: list[_Placement] = []
    sector = data_start
    for entry in files:
        nsec = _sectors(entry.source.size)
        if nsec <= MAX_EXTENT_SECTORS:
            extents: tuple[tuple[int, int, int], ...] = ((0, sector, nsec),) if nsec else ()
        else:
            parts = []
            done = 0
            while done < nsec:
                n = min(MAX_EXTENT_SECTORS, nsec - done)
                parts.append((done, sector + done, n))
                done += n
            extents = tuple(parts)
        out.append(_Placement(entry, sector, extents))
        sector += nsec
    return out, sector


def _file_records(encoder: Encoder, placements: list[_Placement]) -> list[bytes]:
    """C mkfs's per-file updates: extents = {}, one update per extent, then filelength.

    This is :meth:`Encoder.update` unrolled for speed (``test_tfs`` checks its bytes against
    the spec's examples): once a symbol has been written, its reference never changes, so
    the references are computed once.
    """
    records: list[bytes] = []
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

    for placement in placements:
        entry = placement.file
        index = encoder.index_of(entry)
        if index is None:  # pragma: no cover - every file is in the snapshot
            raise ValueError("file not in the snapshot")
        ref = b"\x11" + varint(index)
        records.append(ref + name("extents") + b"\x90")
        extents_ref = b"\x11" + varint(encoder.new_index())
        for file_sector, volume_sector, nsec in placement.extents:
            key = name(str(file_sector))
            encoder.new_index()
            length = varint(nsec)
            records.append(
                b"".join(
                    (
                        extents_ref,
                        key,
                        b"\x93",
                        name("offset"),
                        b"\xb0",
                        varint(volume_sector),
                        name("length"),
                        b"\xb0",
                        length,
                        name("allocated"),
                        b"\xb0",
                        length,
                    )
                )
            )
        records.append(ref + name("filelength") + b"\xb0" + varint(entry.source.size))
    return records


# The first log extension is at sector 1; then C mkfs's two reserved runs; then the data.
FIRST_DATA_SECTOR = 1 + EXTENSION_SECTORS + RESERVED_GAP_SECTORS  # 3,073


@dataclass(frozen=True, slots=True)
class VolumePlan:
    """Where everything goes in a volume, and the encoded log."""

    extensions: tuple[tuple[int, bytearray], ...]  # (sector, framed bytes)
    placements: tuple[_Placement, ...]
    data_start: int
    data_end: int
    used_end: int  # sector after the last sector holding log or data
    minimum_size: int  # bytes: every extension and extent inside


def place_files(root: dict[str, Any]) -> tuple[list[_Placement], int]:
    """Place the data of every file of ``root``, in encoding order, from sector 3,073.

    Log extensions beyond the first go after the data (as Ops places them), so data
    placement never depends on the size of the log and can start before it is encoded.
    """
    if not isinstance(root.get("children", {}), dict):
        raise InvalidInput("the root's 'children' must be a tuple")
    return _place(_distinct_files(root), FIRST_DATA_SECTOR)


def encode_log(root: dict[str, Any], placements: list[_Placement], data_end: int) -> VolumePlan:
    """Encode the snapshot and the file updates, and frame them into extensions."""
    encoder = Encoder()
    snapshot = bytearray()
    encoder.value(snapshot, root)
    records = [bytes(snapshot), *_file_records(encoder, placements)]

    def extension_sector(k: int) -> int:
        return 1 if k == 0 else data_end + (k - 1) * EXTENSION_SECTORS

    framed = frame_log(records, extension_sector)
    extensions = tuple((extension_sector(k), ext) for k, ext in enumerate(framed))
    last_sector, last = extensions[-1]
    used_end = max(last_sector + _sectors(len(last)), data_end if placements else 0)
    if data_end == FIRST_DATA_SECTOR and len(extensions) == 1:
        used_end = 1 + _sectors(len(last))  # no data: only sector 0 and the log
    minimum = max(used_end, last_sector + EXTENSION_SECTORS) * SECTOR
    return VolumePlan(extensions, tuple(placements), FIRST_DATA_SECTOR, data_end, used_end, minimum)


def default_volume_size(used_end_sectors: int) -> int:
    """C mkfs's size rule: round up to 512 KiB with at least 512 KiB free at the end."""
    used = used_end_sectors * SECTOR
    return (used + SLACK + SLACK - 1) // SLACK * SLACK


def derive_uuid(plan: VolumePlan, label: bytes, salt: bytes = b"") -> bytes:
    """A UUID from the volume's metadata: same tree, names, sizes and layout, same UUID."""
    h = hashlib.sha256(b"pyops-tfs-uuid\0" + salt + b"\0" + label + b"\0")
    for _sector, ext in plan.extensions:
        h.update(ext)
    return h.digest()[:16]


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


# Above these, host files are copied by a worker process: spawning it costs about 50 ms,
# but a copying thread would have to win the GIL back from the encoder after every system
# call, which on two cores made copies almost twice as slow as alone.
_PROCESS_MIN_FILES = 512
_PROCESS_MIN_BYTES = 256 * 1024 * 1024


class _DataCopier:
    """Copies file data while the log is being encoded.

    Small volumes are copied by a thread.  Large ones hand their host files to a worker
    process (:func:`copy_worker_main`) that inherits the image's file descriptor and reads
    its jobs from a pipe as they are written, so it copies on the other core at full speed.
    """

    def __init__(self, fd: int, offset: int, placements: list[_Placement], progress: Progress):
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._progress = progress
        self._proc: subprocess.Popen[bytes] | None = None
        host = [p for p in placements if isinstance(p.file.source, HostFile) and p.file.source.size]
        self._host_bytes = sum(p.file.source.size for p in host)
        rest = placements
        if len(host) >= _PROCESS_MIN_FILES or self._host_bytes >= _PROCESS_MIN_BYTES:
            self._proc = _spawn_copy_worker(fd)
            rest = [p for p in placements if not isinstance(p.file.source, HostFile)]
        else:
            host = []
        self._thread = threading.Thread(
            target=self._run, args=(fd, offset, host, rest), daemon=True
        )
        self._thread.start()

    def _run(self, fd: int, offset: int, host: list[_Placement], rest: list[_Placement]) -> None:
        try:
            if self._proc is not None:
                assert self._proc.stdin is not None
                jobs = bytearray()
                for placement in host:
                    source = placement.file.source
                    assert isinstance(source, HostFile)
                    jobs += b"%d\0%d\0" % (offset + placement.start * SECTOR, source.size)
                    jobs += os.fsencode(source.path) + b"\0"
                    if len(jobs) >= 1 << 16:
                        self._proc.stdin.write(jobs)
                        jobs.clear()
                self._proc.stdin.write(jobs)
                self._proc.stdin.close()
            for placement in rest:
                if self._stop.is_set():
                    return
                _write_data(fd, offset, placement)
                self._progress.advance("tfs", placement.file.source.size)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in join()
            self.error = exc

    def join(self, cancel: bool = False) -> None:
        if cancel:
            self._stop.set()
            if self._proc is not None:
                self._proc.kill()
        self._thread.join()
        if self._proc is not None:
            # stdin was closed by the feeding thread; the worker's reports are small.
            assert self._proc.stdout is not None and self._proc.stderr is not None
            out, err = self._proc.stdout.read(), self._proc.stderr.read()
            self._proc.wait()
            if not cancel and self._proc.returncode != 0:
                raise _worker_error(out, err, self._proc.returncode)
            self._progress.advance("tfs", self._host_bytes)
        if self.error is not None and not cancel:
            raise self.error


def _spawn_copy_worker(fd: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYOPS_COPY_FD=str(fd))
    return subprocess.Popen(
        [sys.executable, "-c", "from pyops.tfs import copy_worker_main; copy_worker_main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(fd,),
        env=env,
    )


def _worker_error(out: bytes, err: bytes, status: int) -> PyopsError:
    try:
        report = json.loads(out.decode("utf-8", "replace") or "null")
    except json.JSONDecodeError:
        report = None
    if isinstance(report, dict) and "error" in report:
        return HostFileError(str(report["error"]), hint=report.get("hint"))
    text = err.decode("utf-8", "replace").strip().splitlines()
    return PyopsError(
        f"copying file data failed (worker exit status {status})"
        + (f": {text[-1]}" if text else "")
    )


def copy_worker_main() -> None:
    """Entry point of the copy worker: jobs ``offset NUL size NUL path NUL`` on stdin."""
    fd = int(os.environ["PYOPS_COPY_FD"])
    pending = b""
    fields: list[bytes] = []
    try:
        while chunk := os.read(0, 1 << 16):
            parts = (pending + chunk).split(b"\0")
            pending = parts.pop()
            for part in parts:
                fields.append(part)
                if len(fields) == 3:
                    dst, size, path = int(fields[0]), int(fields[1]), os.fsdecode(fields[2])
                    fields.clear()
                    _copy_host_file(HostFile(path, size), fd, dst)
    except PyopsError as exc:
        sys.stdout.write(json.dumps({"error": exc.message, "hint": exc.hint}))
        sys.exit(1)


def write_volume(
    fd: int,
    offset: int,
    root: dict[str, Any],
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
    """
    label_bytes = check_label(label)
    placements, data_end = place_files(root)
    if size is not None and _sectors(size) < data_end:
        raise _too_small(what, data_end * SECTOR, size)
    total = sum(p.file.source.size for p in placements)
    if data_end > FIRST_DATA_SECTOR:
        _preallocate(
            fd, offset + FIRST_DATA_SECTOR * SECTOR, (data_end - FIRST_DATA_SECTOR) * SECTOR
        )
    progress.start("tfs", "writing files", total)
    copier = _DataCopier(fd, offset, placements, progress)
    try:
        plan = encode_log(root, placements, data_end)
    except BaseException:
        copier.join(cancel=True)
        progress.finish("tfs")
        raise
    try:
        copier.join()
    finally:
        progress.finish("tfs")
    if size is None:
        volume_size = max(default_volume_size(plan.used_end), plan.minimum_size)
    else:
        volume_size = _sectors(size) * SECTOR
        if volume_size < plan.minimum_size:
            raise _too_small(what, plan.minimum_size, size)
    if uuid is None:
        uuid = derive_uuid(plan, label_bytes)
    for sector, ext in plan.extensions:
        os.pwrite(fd, ext, offset + sector * SECTOR)
    os.pwrite(fd, initial_extension(uuid, label_bytes), offset)
    return VolumeInfo(
        uuid,
        label,
        volume_size,
        tuple((sector, EXTENSION_SECTORS) for sector, _ext in plan.extensions),
        plan.data_start,
        plan.data_end,
        len(placements),
    )


def _preallocate(fd: int, start: int, length: int) -> None:
    """Reserve the data region in one go: the file system then allocates one run of blocks
    instead of growing the file a file at a time (about 30% faster copies on ext4).  Only
    the data region is reserved; free space and the log gap stay sparse."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    try:
        fallocate(fd, start, length)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FilesystemFull(
                f"not enough space on the host disk for {length} bytes of file data"
            ) from exc
        # EINVAL/EOPNOTSUPP: the file system cannot preallocate; the copies still work.


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


def _write_data(fd: int, offset: int, placement: _Placement) -> None:
    source = placement.file.source
    if source.size == 0:
        return
    start = offset + placement.start * SECTOR
    if isinstance(source, Contents):
        os.pwrite(fd, source.data, start)
    elif isinstance(source, HostFile):
        _copy_host_file(source, fd, start)
    elif isinstance(source, ImageData):
        _copy_image_data(source, fd, start)
    else:  # pragma: no cover
        raise TypeError(source)


_copy_file_range: Callable[..., int] | None = getattr(os, "copy_file_range", None)


def _copy_host_file(source: HostFile, dst: int, dst_offset: int) -> None:
    global _copy_file_range
    try:
        src = os.open(source.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise HostFileError(
            f"{source.path}: no such file (it was removed during the build)"
        ) from None
    except OSError as exc:
        raise HostFileError(f"{source.path}: cannot read it ({exc.strerror})") from exc
    try:
        remaining = source.size
        pos = 0
        while remaining:
            n = 0
            if _copy_file_range is not None:
                try:
                    n = _copy_file_range(src, dst, remaining, pos, dst_offset + pos)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise HostFileError(f"{source.path}: {exc.strerror}") from exc
                    _copy_file_range = None
                    continue
            else:
                chunk = os.pread(src, min(remaining, _COPY_CHUNK), pos)
                n = len(chunk)
                if n:
                    os.pwrite(dst, chunk, dst_offset + pos)
            if n == 0:
                raise HostFileError(
                    f"{source.path}: the file shrank while the image was written",
                    hint="do not change files while pyops builds an image",
                )
            pos += n
            remaining -= n
    finally:
        os.close(src)


def _copy_image_data(source: ImageData, dst: int, dst_offset: int) -> None:
    with open(source.image, "rb") as f:
        for chunk_offset, chunk in iter_image_data(f, source):
            os.pwrite(dst, chunk, dst_offset + chunk_offset)


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

    def read_sectors(sector: int, count: int) -> bytes:
        start = sector * SECTOR
        if count <= 0 or start + count * SECTOR > length:
            raise ImageFormatError(
                f"a log extension at sector {sector} ({count} sectors) lies outside the "
                f"volume of {length // SECTOR} sectors"
            )
        f.seek(offset + start)
        data = f.read(count * SECTOR)
        if len(data) != count * SECTOR:
            raise ImageFormatError(f"cannot read the log extension at sector {sector}")
        return data

    first = read_sectors(0, 1)
    if first[:6] != MAGIC:
        raise ImageFormatError("not a TFS volume (no NVMTFS magic)")
    parser = _LogParser(first, 6)
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

    decoder = Decoder()
    pending: bytearray | None = None
    pending_total = 0
    records = 0
    extensions: list[tuple[int, int]] = []
    visited: set[int] = {0}
    while True:
        frame = parser.byte()
        if frame == END_OF_LOG:
            break
        if frame == END_OF_SEGMENT:
            continue
        if frame == LOG_EXTENSION_LINK:
            sector = parser.varint()
            count = parser.varint()
            if count == 0:
                raise ImageFormatError("a log extension link has zero length")
            if sector in visited:
                raise ImageFormatError(f"the log links back to sector {sector}")
            visited.add(sector)
            if len(visited) > length // SECTOR:
                raise ImageFormatError("the log has more extensions than the volume has room for")
            data = read_sectors(sector, count)
            extensions.append((sector, count))
            if data[:6] != MAGIC:
                raise ImageFormatError(f"the log extension at sector {sector} has no magic")
            parser = _LogParser(data, 6)
            if parser.varint() != VERSION:
                raise ImageFormatError(f"the log extension at sector {sector} is not version 5")
            parser.varint()  # its size; the link's count is what readers use
            continue
        if frame == TUPLE_AVAILABLE:
            if pending is not None:
                raise ImageFormatError("a new record starts before the previous one ended")
            total = parser.varint()
            seg = parser.varint()
            if seg > total or seg > len(parser.data) - parser.pos:
                raise ImageFormatError("a log record is longer than its extension")
            if seg == total:
                end = parser.pos + seg
                decoder.decode(parser.data, parser.pos, end)
                if decoder.position != end:
                    raise ImageFormatError("a log record's length does not match its contents")
                parser.pos = end
                records += 1
            else:
                pending = bytearray(parser.take(seg))
                pending_total = total
            continue
        if frame == TUPLE_EXTENDED:
            if pending is None:
                raise ImageFormatError("a record continuation has no record to continue")
            seg = parser.varint()
            if seg > pending_total - len(pending):
                raise ImageFormatError("a record continuation is longer than its record")
            pending += parser.take(seg)
            if len(pending) == pending_total:
                decoder.decode(pending)
                if decoder.position != pending_total:
                    raise ImageFormatError("a log record's length does not match its contents")
                pending = None
                records += 1
            continue
        raise ImageFormatError(f"unknown log frame type 0x{frame:02x}")

    if pending is not None:
        raise ImageFormatError("the log ends in the middle of a record")
    if len(decoder.dictionary) < 2 or not isinstance(decoder.dictionary[1], DecodedTuple):
        raise ImageFormatError("the volume's log has no root tuple")
    root = decoder.dictionary[1]
    data_start, data_end, nfiles = _data_range(root)
    info = VolumeInfo(uuid, label, length, tuple(extensions), data_start, data_end, nfiles)
    return Volume(info, version, root, offset, records)


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


def _number(value: Any, what: str) -> int:
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str | bytes) and value.isdigit():
        return int(value)
    raise ImageFormatError(f"{what} is not an unsigned number: {value!r}")


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


def iter_image_data(
    f: BinaryIO, data: ImageData, chunk: int = _COPY_CHUNK
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(file offset, bytes)`` pieces of a stored file; holes are left out."""
    for ext in data.extents:
        if ext.uninited:
            continue
        start = ext.file_sector * SECTOR
        end = min(start + ext.length, data.size)
        pos = start
        while pos < end:
            n = min(chunk, end - pos)
            f.seek(ext.disk_offset + (pos - start))
            piece = f.read(n)
            if len(piece) != n:
                raise ImageFormatError(f"{data.image} is truncated: file data is missing")
            yield pos, piece
            pos += n


def iter_file_contents(data: ImageData) -> Iterator[bytes]:
    """A stored file's contents in order, holes and unmapped tails as zero bytes."""
    written = 0
    with open(data.image, "rb") as f:
        for pos, piece in iter_image_data(f, data):
            if pos > written:
                yield bytes(pos - written)
            yield piece
            written = pos + len(piece)
    if data.size > written:
        yield bytes(data.size - written)


def read_file_bytes(data: ImageData) -> bytes:
    """The whole contents of a stored file (holes read as zeros)."""
    return b"".join(iter_file_contents(data))


_TREE_KEYS = frozenset({"children", "extents", "filelength", "linktarget"})


def volume_tree(volume: Volume, image_path: str) -> Tree:
    """The file tree of a volume read by :func:`read_volume`.

    A tuple met a second time (a hard link) becomes a :class:`HardLink` to the first path
    in byte order of names.
    """
    tree = Tree()
    first_path: dict[int, str] = {}
    length = volume.info.size

    def convert(t: Any, path: str) -> Node:
        if not isinstance(t, dict):
            raise ImageFormatError(f"{path} is not a tuple in the volume")
        attrs = {k: v for k, v in t.items() if k not in _TREE_KEYS}
        if "children" in t:
            children = t["children"]
            if not isinstance(children, dict):
                raise ImageFormatError(f"the children of {path} are not a tuple")
            if id(t) in first_path:
                raise ImageFormatError(f"directory {path} appears twice in the volume")
            first_path[id(t)] = path
            directory = Directory(attributes=attrs)
            base = path.rstrip("/")
            for name in sorted(children, key=os.fsencode):
                if not name or "/" in name or name in (".", ".."):
                    raise ImageFormatError(f"invalid name {name!r} in directory {path}")
                directory.entries[name] = convert(children[name], f"{base}/{name}")
            return directory
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

    root = convert(volume.root, "/")
    if not isinstance(root, Directory):
        raise ImageFormatError("the root of the volume is not a directory")
    tree.root.entries.update(root.entries)
    return tree

"""Applying image layers (tar, tar+gzip) to a directory, or to a root in memory, safely.

The rules are written once (:class:`_Rules`), over a few primitives that two appliers
give: :class:`_Applier` works in a host folder, :class:`_MemoryApplier` in a tree in memory
whose files are where their bytes are in the layers' uncompressed tars (the root's index,
:mod:`pyops.oci.rootindex`). Both make the same root.

Rules from OCI image-spec ``layer.md`` (changesets, whiteouts, opaque whiteouts, hard links),
with the handling recorded in the reference doc section 5:

- members are applied in archive order, layer after layer; a whiteout ``.wh.NAME`` and an
  opaque marker ``.wh..wh..opq`` remove only entries of *lower* layers, never entries the same
  layer added (so a hard link made earlier in a layer survives a later whiteout of its target);
  the NAME of a whiteout must itself be a name (not empty, ``.`` nor ``..``); other
  ``.wh..wh.*`` entries are aufs metadata and are skipped;
- every path is resolved inside the image root by pyops itself, one component at a time,
  following in-image symlinks with chroot semantics (absolute targets restart at the root,
  ``..`` stops at the root, 40 links at most). The host kernel never follows a link that came
  from a layer, so nothing can be written outside the destination;
- names with ``..`` or NUL are refused; a leading ``/`` is stripped (what tar does);
- device nodes and FIFOs are skipped (a 0/0 character device, an overlayfs-style whiteout,
  counts as a whiteout); sparse files and symlinks with an empty target are refused;
  setuid, setgid and sticky bits are cleared; ownership is not applied; a folder made on
  the way to a member, which no member names, has mode 0755 and time 0;
- folder modes and times are applied last, through folder descriptors opened from the root
  without following any link, and only to folders the unpacker itself made or kept (a folder
  later replaced, for instance by a symlink, is forgotten with everything below it);
- in a host folder that folds names (case-insensitive or normalisation-insensitive, as
  macOS's APFS: :mod:`pyops.oci.folding`), names are looked up as the image spells them, and
  an entry whose name differs only in case or normalisation from one already there is left
  out rather than merged with it, the pair recorded (:attr:`Unpacker.collisions`).

Every layer is hostile, so the work it can cost is bounded as the bytes flow (:mod:`pyops.limits`):
the bytes unpacked over all layers (``UNPACKED_BYTES``), the ratio of a layer's unpacked to its
compressed size once past a few MiB (``LAYER_RATIO``), the number of entries (``LAYER_ENTRIES``),
the bytes after the end-of-archive marker (``TRAILING_BYTES``) and how deep a path goes
(``PATH_DEPTH``). Nothing walks a tree recursively.

The resulting tree contains the image's symlinks as they are: callers must not open paths in
it through the host kernel without resolving them inside the root first (:func:`resolve_in_root`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import math
import os
import queue
import stat
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol, cast

from pyops import atomic, limits, rootfs
from pyops.errors import DigestMismatch, HostFileError, LayerError, UnsafeLayerPath
from pyops.oci import folding
from pyops.oci.rootindex import Row
from pyops.oci.store import ArrivingBlob
from pyops.oci.tarstream import ByteSource, TarStream
from pyops.progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_AUFS_META = ".wh..wh."  # .wh..wh.plnk, .wh..wh.aufs: aufs bookkeeping, not whiteouts
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16  # file data copied at a time
_RAW_CHUNK = 1 << 18  # compressed bytes read at a time
_OUT_CHUNK = 1 << 18  # decompressed bytes made at a time (bounds the memory a bomb costs)
_AHEAD = 8  # decompressed chunks read ahead at most
_WRITER_JOBS = 64  # files waiting for the writer thread at most
_WRITER_BYTES = 1 << 18  # larger files are written by the applier itself
_RATIO_FLOOR = 8 * limits.MiB  # LAYER_RATIO applies once a layer unpacks past this
_END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
_MAX_MTIME = 1 << 34  # year 2514: later (or NaN, infinite) times are clamped
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)

Parts = tuple[str, ...]
Modes = list[int | None]
Collision = tuple[str, str]
"""Two in-image paths whose names differ only in case or Unicode normalisation: the one
unpacked, the one left out."""


class _Inflater(Protocol):
    """A gzip decompressor as ``zlib.decompressobj`` makes one."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes: ...


def _inflaters() -> tuple[Callable[[], _Inflater], tuple[type[Exception], ...]]:
    """The gzip decompressor to use, and the errors it raises for a corrupt stream.

    Intel's ISA-L (the ``isal`` package) decompresses the same streams about 1.8 times as
    fast as zlib; decompressing the layers is the floor of from-docker, so it is used where
    it is installed, and zlib everywhere else (the same bytes come out)."""
    try:
        from isal import isal_zlib
    except ImportError:
        return (lambda: zlib.decompressobj(wbits=31)), (zlib.error,)
    isal_error = cast(type[Exception], isal_zlib.error)  # typed as an instance in its stubs
    return (lambda: isal_zlib.decompressobj(wbits=31)), (zlib.error, isal_error)


_new_inflater, _INFLATE_ERRORS = _inflaters()


class _ByteSource(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Budget:
    """The limits of one unpack (read once) and what its layers have used of them."""

    def __init__(self) -> None:
        self.unpacked_limit = limits.UNPACKED_BYTES.value()
        self.ratio = limits.LAYER_RATIO.value()
        self.entries_limit = limits.LAYER_ENTRIES.value()
        self.trailing_limit = limits.TRAILING_BYTES.value()
        self.depth = limits.PATH_DEPTH.value()
        self.unpacked = 0  # bytes of the layers before the current one
        self.entries = 0


class _Counting:
    """Wraps the layer file to report how much of it has been read."""

    def __init__(self, raw: _ByteSource, progress: Progress, key: str) -> None:
        self._raw = raw
        self._progress = progress
        self._key = key

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self._progress.advance(self._key, len(data))
        return data


class _Gunzip:
    """Decompresses a gzip stream (several members too: pigz, estargz) in bounded steps.

    Unlike :class:`gzip.GzipFile`, it makes at most ``_OUT_CHUNK`` bytes per step, reads the
    zero padding gzip allows between and after members in chunks, and bounds that padding
    with ``TRAILING_BYTES``.
    """

    def __init__(self, raw: _ByteSource, label: str, trailing_limit: int) -> None:
        self._raw = raw
        self._label = label
        self._trailing_limit = trailing_limit
        self._zlib: _Inflater | None = _new_inflater()
        self._in = b""
        self._out = b""
        self._pos = 0
        self._padding = 0

    def read(self, size: int = -1, /) -> bytes:
        if self._pos >= len(self._out):
            self._out = self._fill()
            self._pos = 0
        if size < 0 or (self._pos == 0 and size >= len(self._out)):
            data = self._out[self._pos :] if self._pos else self._out
            self._pos = len(self._out)
            return data
        data = self._out[self._pos : self._pos + size]
        self._pos += len(data)
        return data

    def _raw_read(self) -> bytes:
        return self._raw.read(_RAW_CHUNK)

    def _fill(self) -> bytes:
        while self._zlib is not None:
            if not self._in:
                self._in = self._raw_read()
                if not self._in:
                    raise LayerError(f"{self._label} is truncated: its gzip stream ends early.")
            try:
                out = self._zlib.decompress(self._in, _OUT_CHUNK)
            except _INFLATE_ERRORS as exc:
                raise LayerError(f"{self._label} is truncated or corrupt: {exc}") from exc
            if self._zlib.eof:
                self._in = self._zlib.unused_data
                self._zlib = self._next_member()
            else:
                self._in = self._zlib.unconsumed_tail
            if out:
                return out
        return b""

    def _next_member(self) -> _Inflater | None:
        while True:
            rest = self._in.lstrip(b"\0")
            self._padding += len(self._in) - len(rest)
            if self._padding > self._trailing_limit:
                raise limits.TRAILING_BYTES.exceeded(
                    f"{self._label}: the zero padding after its gzip data", self._padding
                )
            if rest:
                if len(rest) < len(_GZIP_MAGIC):
                    rest += self._raw_read()
                if not rest.startswith(_GZIP_MAGIC):  # caught here: ISA-L would wait for more
                    raise LayerError(
                        f"{self._label} is corrupt: what follows its gzip data is not gzip."
                    )
                self._in = rest
                return _new_inflater()
            self._in = self._raw_read()
            if not self._in:
                return None


class _Tee:
    """Where a layer's uncompressed tar is kept as it is read: a new file, closed and
    moved into place by :meth:`keep` once the layer's digest is checked. A write that fails
    (a full disk) only stops the keeping."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self._temp = atomic.temp_path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic.sweep(dest.parent)  # what killed runs left: a tar can be large
        self._file: IO[bytes] | None = open(self._temp, "xb")  # noqa: SIM115 - closed in keep/drop

    def write(self, data: bytes) -> None:
        if self._file is None:
            return
        try:
            self._file.write(data)
        except OSError as exc:
            log.info("cannot keep %s: %s", self.dest, exc)
            self.drop()

    def keep(self) -> bool:
        """Move the tar into place; whether it is there."""
        if self._file is None:
            return False
        try:
            self._file.close()
            self._file = None
            os.replace(self._temp, self.dest)
        except OSError as exc:
            log.info("cannot keep %s: %s", self.dest, exc)
            self.drop()
            return False
        return True

    def drop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._temp.unlink(missing_ok=True)


class _Reader:
    """The uncompressed tar stream: hashed for the diff_id, counted against the limits, and
    written to ``tee`` when one is given."""

    def __init__(
        self, raw: _ByteSource, budget: _Budget, label: str, compressed: int,
        tee: _Tee | None = None,
    ) -> None:  # fmt: skip
        self._raw = raw
        self._tee = tee
        self._budget = budget
        self.label = label
        self.trailing_limit = budget.trailing_limit
        self._compressed = max(compressed, 1)
        self.hasher = hashlib.sha256()
        self.count = 0
        self._room = budget.unpacked_limit - budget.unpacked
        self._ratio_cap = max(_RATIO_FLOOR, budget.ratio * self._compressed)
        self._cap = min(self._room, self._ratio_cap)

    def read(self, size: int = -1, /) -> bytes:
        """The next bytes, counted (but neither hashed nor kept: :meth:`take` does that)."""
        data = self._raw.read(size)
        if data:
            self.count += len(data)
            if self.count > self._cap:
                raise self._over(self.count)
        return data

    def take(self, data: bytes) -> None:
        """Hash and keep ``data``, the next bytes :meth:`read` gave."""
        self.hasher.update(data)
        if self._tee is not None:
            self._tee.write(data)

    def require(self, end: int) -> None:
        """Refuse now if the stream must reach ``end`` bytes (a member's declared size)."""
        if end > self._cap:
            raise self._over(end)

    def _over(self, count: int) -> Exception:
        if count > self._room:
            return limits.UNPACKED_BYTES.exceeded(
                f"{self.label}: the image's layers so far",
                self._budget.unpacked + count,
            )
        return limits.LAYER_RATIO.exceeded(
            f"{self.label} ({self._compressed:,} bytes compressed) unpacks to more than "
            f"{count:,} bytes, a ratio",
            count // self._compressed,
        )


class _Ahead:
    """Reads a :class:`_Reader` ahead in a thread: decompressing and hashing a layer (C code
    that releases the GIL) run while this thread applies what was read before.

    The thread stops at the end of the stream, at the first error (raised here when the
    reading reaches it, so nothing past a refused byte is ever applied) or when
    :meth:`close` is called. At most ``_AHEAD`` chunks wait at a time.
    """

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=_AHEAD)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._done = False
        self.handed = 0  # bytes read from here
        self._thread = threading.Thread(target=self._run, name="pyops-unpack", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self.reader.read(_OUT_CHUNK)
                if not self._put(chunk) or not chunk:
                    return
        except BaseException as exc:  # handed to the reading thread, raised there
            self._put(exc)

    def _next_chunk(self) -> bool:
        """Take the next chunk read ahead; False at the end."""
        if self._done:
            return False
        item = self._chunks.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
            return False
        # Hashed and kept here, while the thread decompresses what follows.
        self.reader.take(item)
        self._buf, self._pos = item, 0
        return True

    def skip(self, size: int, /) -> int:
        """Pass over up to ``size`` bytes without copying them: how many (0 at the end)."""
        if self._pos >= len(self._buf) and not self._next_chunk():
            return 0
        count = min(size, len(self._buf) - self._pos)
        self._pos += count
        self.handed += count
        return count

    def read(self, size: int = -1, /) -> bytes:
        if self._pos >= len(self._buf) and not self._next_chunk():
            return b""
        if size < 0 or (self._pos == 0 and size >= len(self._buf)):
            data = self._buf[self._pos :] if self._pos else self._buf
            self._pos = len(self._buf)
            self.handed += len(data)
            return data
        data = self._buf[self._pos : self._pos + size]
        self._pos += len(data)
        self.handed += len(data)
        return data

    def require(self, end: int) -> None:
        self.reader.require(end)

    def drain(self, end_of_archive: int) -> tuple[int, str]:
        """Read what follows the archive, refusing more than TRAILING_BYTES; the stream's
        length and digest."""
        reader = self.reader
        last = end_of_archive + reader.trailing_limit
        while True:
            if self.handed > last:
                raise limits.TRAILING_BYTES.exceeded(
                    f"{reader.label}: the data after its end-of-archive marker"
                )
            if not self.read(min(_CHUNK, last + 1 - self.handed)):
                break
        self._thread.join()
        return reader.count, f"sha256:{reader.hasher.hexdigest()}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def split_image_path(name: str) -> Parts:
    """Split a member or link name into components, refusing ``..`` and NUL.

    Leading ``/`` and ``./`` and ``.`` components are dropped, as tar does.
    """
    if "\0" in name:
        raise UnsafeLayerPath(f"{name!r} contains a NUL character; refused.")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeLayerPath(f"{name!r} contains '..'; refused.")
    return parts


def _resolve(
    root: str,
    parts: Sequence[str],
    follow_last: bool,
    max_steps: int,
    start: tuple[int, Parts] = (0, ()),
) -> tuple[Parts, Modes]:
    """:func:`resolve_in_root`, also returning the ``lstat`` mode of each resolved component
    (None for those that do not exist), and refusing more than ``max_steps`` lookups.

    ``start`` is ``(k, folders)``: the first ``k`` components of ``parts`` are known to
    resolve to ``folders``, real folders all of them.
    """
    found = rootfs.resolve(
        parts,
        rootfs.host_lstat(root),
        rootfs.host_readlink(root),
        follow_last=follow_last,
        max_steps=max_steps,
        start=start,
    )
    return found.parts, list(found.modes)


def resolve_in_root(root: Path, parts: Sequence[str], *, follow_last: bool = True) -> Parts:
    """Resolve an image path inside ``root`` without letting the host follow any link.

    Symlinks met on the way (all of them, or all but the last component when ``follow_last``
    is false) are read with ``readlink`` and followed inside the image: an absolute target
    restarts at the image root, ``..`` never climbs above it. Components that do not exist are
    kept as they are. Raises :class:`~pyops.errors.UnsafeLayerPath` after 40 links and
    :class:`~pyops.errors.LimitExceeded` after ``PATH_DEPTH`` lookups.
    """
    return _resolve(os.fspath(root), parts, follow_last, limits.PATH_DEPTH.value())[0]


class _Dir:
    """A folder the unpacker made or kept, in a tree mirroring the root's real folders."""

    __slots__ = ("attrs", "children")

    def __init__(self) -> None:
        self.children: dict[str, _Dir] = {}
        self.attrs: tuple[int, int] | None = None  # mode, mtime in ns


def _mtime_ns(info: tarfile.TarInfo) -> int:
    """The member's time in nanoseconds; negative, NaN or far-future times are clamped."""
    mtime = info.mtime
    if isinstance(mtime, int):
        return min(max(mtime, 0), _MAX_MTIME) * 1_000_000_000
    mtime = float(mtime)
    if not math.isfinite(mtime) or mtime < 0:
        return 0
    return int(min(mtime, float(_MAX_MTIME)) * 1_000_000_000)


Record = Callable[[int, tarfile.TarInfo], None]
"""Told of each regular file made: its descriptor and the member it was made from."""


def _fill(
    fd: int, chunks: Iterable[bytes], info: tarfile.TarInfo, record: Record | None = None
) -> None:
    """Write ``chunks`` to the new file ``fd``, give it the member's mode and time, close it."""
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fchmod(fd, info.mode & 0o777)  # no setuid/setgid/sticky on the host
        mtime = _mtime_ns(info)
        os.utime(fd, ns=(mtime, mtime))
        if record is not None:
            record(fd, info)
    finally:
        os.close(fd)


class _Job:
    """A new file for the :class:`_Writer` to create: where, and all of it."""

    __slots__ = ("data", "info", "parts", "path", "target")

    def __init__(
        self, path: str, target: Parts, parts: Parts, info: tarfile.TarInfo, data: bytes
    ) -> None:
        self.path = path
        self.target = target
        self.parts = parts
        self.info = info
        self.data = data


class _Writer:
    """One thread that creates a layer's new small files, in order, while the applier reads
    the members after them: on a disk, creating a file costs the kernel more than reading
    its member costs Python, and the two then run at the same time.

    A job whose path turns out to exist (a lower layer's entry) is not written: it is handed
    back by :meth:`drain`, in order, for the applier to redo in full. The first error stops
    the thread; :meth:`drain` raises it.
    """

    def __init__(self, record: Record | None = None) -> None:
        self._record = record
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=_WRITER_JOBS)
        self._redo: list[_Job] = []
        self._error: tuple[_Job, BaseException] | None = None
        self._thread = threading.Thread(target=self._run, name="pyops-write", daemon=True)
        self._thread.start()
        self.pending = False

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:
                    self._write(job)
            except FileExistsError:
                self._redo.append(job)
            except BaseException as exc:  # raised by drain(); the thread goes on to the end
                self._error = (job, exc)
            finally:
                self._jobs.task_done()
        self._jobs.task_done()

    def _write(self, job: _Job) -> None:
        _fill(os.open(job.path, _NEW_FILE, 0o600), (job.data,), job.info, self._record)

    def submit(self, job: _Job) -> None:
        self.pending = True
        self._jobs.put(job)

    def drain(self) -> list[_Job]:
        """Wait for the jobs given so far; those to redo. Raises the first error."""
        self._jobs.join()
        self.pending = False
        if self._error is not None:
            job, exc = self._error
            self._error = None
            if not isinstance(exc, OSError):
                raise exc
            raise _WriteFailed(job, exc)
        redo, self._redo = self._redo, []
        return redo

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()


class _WriteFailed(Exception):
    """A job of the :class:`_Writer` failed: which, and the error."""

    def __init__(self, job: _Job, error: OSError) -> None:
        super().__init__(job.info.name)
        self.job = job
        self.error = error


class _Rules:
    """The layer rules (module doc): what each member does to the root, whatever holds it.

    Subclasses hold the root: :class:`_Applier` a host folder, :class:`_MemoryApplier` a
    tree in memory. They give the primitives (``_mode_at`` to ``_make_link``), each on
    resolved components with no symlink on the way; everything else is decided here, once.
    """

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        self.layer_label = ""
        self.layer_index = 0  # the current layer, 0-based
        self.added: set[Parts] = set()
        self.added_ancestors: set[Parts] = set()
        # Entries under which no lower entry is left in this layer (whiteouts and opaque
        # markers repeated there have nothing to do: this keeps them linear).
        self.cleaned: set[Parts] = set()
        # The last folder chain resolved: its components as given, and as resolved.
        self._known: tuple[Parts, Parts] = ((), ())
        self._lstat: rootfs.Lstat = self._mode_at
        self._readlink: rootfs.Readlink = self._link_target

    # -- primitives ---------------------------------------------------------------------------

    def host(self, parts: Parts) -> str:
        """Where ``parts`` is, for messages."""
        raise NotImplementedError

    def _mode_at(self, parts: Parts) -> int | None:
        """The ``lstat`` mode of the entry at ``parts``, None if there is none."""
        raise NotImplementedError

    def _link_target(self, parts: Parts) -> str:
        raise NotImplementedError

    def _list_dir(self, parts: Parts) -> list[str]:
        """The names in the folder ``parts``."""
        raise NotImplementedError

    def _delete(self, parts: Parts, mode: int) -> None:
        """Remove the entry at ``parts`` (of ``lstat`` mode ``mode``), all of it."""
        raise NotImplementedError

    def _make_dir(self, parts: Parts) -> None:
        """Make a folder where there is nothing, mode 0755, time 0."""
        raise NotImplementedError

    def _dir_attrs(self, parts: Parts, mode: int, mtime_ns: int) -> None:
        """Give the folder ``parts`` these, once every layer is applied."""
        raise NotImplementedError

    def _make_file(self, parts: Parts, info: tarfile.TarInfo, data: ByteSource) -> None:
        """Make the regular file member ``info`` where there is nothing."""
        raise NotImplementedError

    def _make_symlink(self, parts: Parts, info: tarfile.TarInfo) -> None:
        """Make the symlink member ``info`` where there is nothing."""
        raise NotImplementedError

    def _make_link(self, source: Parts, target: Parts) -> None:
        """Make ``target`` (where there is nothing) another name of the file ``source``."""
        raise NotImplementedError

    def apply_dir_attrs(self) -> None:
        """Apply the folders' modes and times (the last step)."""

    # -- layers -------------------------------------------------------------------------------

    def start_layer(self, label: str) -> None:
        self.layer_label = label
        self.added.clear()
        self.added_ancestors.clear()
        self.cleaned.clear()
        self._invalidate()

    def end_layer(self, *, failed: bool = False) -> None:
        """Finish the layer's writes (unless it ``failed``)."""

    def barrier(self) -> None:
        """What comes next sees the root as if every member before it had been applied."""

    # -- paths --------------------------------------------------------------------------------

    def resolve(self, parts: Parts, follow_last: bool = True) -> tuple[Parts, Modes]:
        # The last folder chain resolved (its input and what it resolved to) is reused when
        # ``parts`` extends it: a tar lists a folder's entries together, and deep paths would
        # otherwise cost a lookup per component per member.
        known_in, known_out = self._known
        start: tuple[int, Parts] = (0, ())
        k = len(known_in)
        if 0 < k < len(parts) and parts[:k] == known_in:  # the last is resolved anew
            start = (k, known_out)
        found = rootfs.resolve(
            parts,
            self._lstat,
            self._readlink,
            follow_last=follow_last,
            max_steps=self.budget.depth,
            start=start,
        )
        return found.parts, list(found.modes)

    def _in_known(self, parts: Parts) -> bool:
        """Whether ``parts`` is in the folder the previous member resolved to (a real
        folder, no link on the way)."""
        known_in = self._known[0]
        return len(parts) == len(known_in) + 1 and parts[:-1] == known_in

    def _remember(self, given: Parts, folders: Parts) -> None:
        """``given`` resolves to ``folders``, which are all real folders now."""
        self._known = (given, folders)
        self._known_changed()

    def _invalidate(self) -> None:
        self._known = ((), ())
        self._known_changed()

    def _known_changed(self) -> None:
        """The folder remembered changed: forget what was derived from it."""

    def _mark(self, parts: Parts) -> None:
        self.added.add(parts)
        for i in range(len(parts) - 1, -1, -1):
            prefix = parts[:i]
            if prefix in self.added_ancestors:
                break  # and so are all shorter ones
            self.added_ancestors.add(prefix)

    def _error(self, member: str, what: str) -> LayerError:
        return LayerError(f"{self.layer_label}: member {member!r} {what}")

    # -- removing -----------------------------------------------------------------------------

    def _remove(self, parts: Parts, mode: int | None) -> None:
        """Remove what is at ``parts`` (its ``lstat`` mode is ``mode``; None: nothing)."""
        if mode is None:
            return
        if not stat.S_ISREG(mode):
            self._invalidate()  # the folder chain remembered may go through it
        self._delete(parts, mode)

    def _remove_lower(self, start: Parts) -> None:
        """Remove what lower layers put at ``start``, keeping this layer's own entries."""
        todo = [start]
        while todo:
            parts = todo.pop()
            mode = self._mode_at(parts)
            if mode is None:
                continue
            if parts in self.added or parts in self.added_ancestors:
                if stat.S_ISDIR(mode) and parts not in self.cleaned:
                    self.cleaned.add(parts)
                    todo.extend((*parts, child) for child in self._list_dir(parts))
                continue
            self._remove(parts, mode)

    def whiteout(self, member: str, directory: Parts, name: str) -> None:
        self.barrier()
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            raise UnsafeLayerPath(
                f"{self.layer_label}: member {member!r} is a whiteout of {name!r}, which is "
                "not a name; refused.",
                hint="The image is malformed or malicious.",
            )
        parent, modes = self.resolve(directory)
        if modes and (modes[-1] is None or not stat.S_ISDIR(modes[-1])):
            return  # no such folder: nothing to remove
        self._remove_lower((*parent, name))

    def opaque(self, directory: Parts) -> None:
        self.barrier()
        parent, modes = self.resolve(directory)
        if modes and (modes[-1] is None or not stat.S_ISDIR(modes[-1])):
            return
        if parent in self.cleaned:
            return
        self.cleaned.add(parent)
        for child in self._list_dir(parent):
            self._remove_lower((*parent, child))

    # -- adding -------------------------------------------------------------------------------

    def _parent_dirs(self, member: str, parent: Parts, modes: Modes) -> None:
        for i, mode in enumerate(modes):
            if mode is None:
                self._mkdir(parent[: i + 1])
            elif not stat.S_ISDIR(mode):
                raise self._error(member, f"needs /{'/'.join(parent[: i + 1])} to be a directory.")

    def _mkdir(self, parts: Parts) -> None:
        """Make the missing folder ``parts`` on the way to a member."""
        self._make_dir(parts)

    def _target(self, member: str, parts: Parts) -> tuple[Parts, int | None]:
        """Where ``parts`` lands (its parents made), and what is there now (lstat mode)."""
        target, modes = self.resolve(parts, follow_last=False)
        # The last component is never followed, so it is parts[-1], resolved or not.
        self._parent_dirs(member, target[:-1], modes[:-1])
        self._remember(parts[:-1], target[:-1])
        return target, modes[-1]

    def directory(self, info: tarfile.TarInfo, parts: Parts) -> None:
        self.barrier()
        target, mode = self._target(info.name, parts)
        if mode is None or not stat.S_ISDIR(mode):
            self._remove(target, mode)
            self._make_dir(target)
        self._remember(parts, target)
        # Modes are applied at the end, so a read-only directory can still be filled.
        self._dir_attrs(target, info.mode & 0o777, _mtime_ns(info))
        self._mark(target)

    def regular(self, info: tarfile.TarInfo, parts: Parts, data: ByteSource) -> None:
        """Write the regular file member ``parts``, replacing what is there."""
        self.barrier()
        target, mode = self._target(info.name, parts)
        self._remove(target, mode)
        self._make_file(target, info, data)
        self._mark(target)

    def symlink(self, info: tarfile.TarInfo, parts: Parts) -> None:
        self.barrier()
        if "\0" in info.linkname:
            raise UnsafeLayerPath(
                f"{self.layer_label}: symlink {info.name!r} has a NUL in its target; refused."
            )
        if not info.linkname:  # which no filesystem can hold (symlink(2): ENOENT)
            raise self._error(info.name, "is a symlink with an empty target; refused.")
        target, mode = self._target(info.name, parts)
        self._remove(target, mode)
        # Stored as is; it is only ever resolved inside the image (resolve_in_root).
        self._invalidate()
        self._make_symlink(target, info)
        self._mark(target)

    def hardlink(self, info: tarfile.TarInfo, parts: Parts) -> None:
        self.barrier()
        try:
            link_parts = split_image_path(info.linkname)
        except UnsafeLayerPath as exc:
            raise UnsafeLayerPath(
                f"{self.layer_label}: hard link {info.name!r} points to {info.linkname!r}, "
                "which contains '..' or NUL; refused."
            ) from exc
        if not link_parts:
            raise self._error(info.name, "is a hard link without a target.")
        source, modes = self.resolve(link_parts, follow_last=False)
        source_mode = modes[-1] if modes else stat.S_IFDIR
        if source_mode is None:
            raise self._error(
                info.name, f"is a hard link to /{'/'.join(link_parts)}, which does not exist."
            )
        if stat.S_ISDIR(source_mode):
            raise self._error(info.name, "is a hard link to a directory; refused.")
        target, mode = self._target(info.name, parts)
        if target == source:
            self._mark(target)
            return
        self._remove(target, mode)
        self._make_link(source, target)
        self._mark(target)


class _Applier(_Rules):
    """Applies layers to the host folder ``root``."""

    def __init__(self, root: Path, budget: _Budget) -> None:
        super().__init__(budget)
        self.root = root
        self._root = os.fspath(root)
        self.dirs = _Dir()
        self._known_host: str | None = None  # host path of the folders remembered
        self._writer: _Writer | None = None
        self._pending: set[str] = set()  # paths given to the writer since it was drained
        self._lstat = rootfs.host_lstat(self._root)
        self._readlink = rootfs.host_readlink(self._root)
        self.threaded = True  # small new files are made by a writer thread
        self.contents: dict[int, tuple[int, int]] | None = None  # see record_contents
        self._record: Record | None = None

    def record_contents(self) -> None:
        """From now on, note in :attr:`contents` where each regular file's bytes are: its
        inode, the layer (0-based) and the offset in the layer's uncompressed tar."""
        self.contents = {}
        self._record = self._note

    def _note(self, fd: int, info: tarfile.TarInfo) -> None:
        assert self.contents is not None
        self.contents[os.fstat(fd).st_ino] = (self.layer_index, info.offset_data)

    def host(self, parts: Parts) -> str:
        # Every component comes from split_image_path/_resolve: no '..', no '/', no NUL, and
        # no symlink in the middle, so the result is inside root.
        return os.path.join(self._root, *parts)

    # -- the writer thread --------------------------------------------------------------------

    def start_layer(self, label: str) -> None:
        self._writer = _Writer(self._record) if self.threaded else None
        super().start_layer(label)

    def end_layer(self, *, failed: bool = False) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            if not failed:
                self._drain(writer)
        finally:
            writer.stop()

    def barrier(self) -> None:
        """Wait for the files given to the writer, redoing those whose path existed."""
        if self._writer is not None and self._writer.pending:
            self._drain(self._writer)

    def _drain(self, writer: _Writer) -> None:
        self._pending.clear()
        try:
            redo = writer.drain()
        except _WriteFailed as failed:
            info, exc = failed.job.info, failed.error
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise atomic.disk_full(failed.job.path, info.size) from exc
            raise self._error(info.name, f"cannot be unpacked: {exc.strerror or exc}") from exc
        for job in redo:  # their own errors, named after them
            self._invalidate()
            try:
                super().regular(job.info, job.parts, io.BytesIO(job.data))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise atomic.disk_full(job.path, job.info.size) from exc
                raise self._error(
                    job.info.name, f"cannot be unpacked: {exc.strerror or exc}"
                ) from exc

    # -- primitives ---------------------------------------------------------------------------

    def _mode_at(self, parts: Parts) -> int | None:
        try:
            return os.lstat(self.host(parts)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _list_dir(self, parts: Parts) -> list[str]:
        return os.listdir(self.host(parts))

    def _delete(self, parts: Parts, mode: int) -> None:
        host = self.host(parts)
        if stat.S_ISDIR(mode):
            self._forget(parts)
            atomic.remove(host)  # iterative; does not follow symlinks inside the tree
        else:
            try:
                os.unlink(host)
            except FileNotFoundError:
                pass

    def _make_dir(self, parts: Parts) -> None:
        os.mkdir(self.host(parts), 0o755)
        self._dir_node(parts).attrs = (0o755, 0)

    def _dir_attrs(self, parts: Parts, mode: int, mtime_ns: int) -> None:
        self._dir_node(parts).attrs = (mode, mtime_ns)

    def _make_file(self, parts: Parts, info: tarfile.TarInfo, data: ByteSource) -> None:
        # O_EXCL together with O_CREAT never follows a symlink at the last component.
        fd = os.open(self.host(parts), _NEW_FILE, 0o600)
        _fill(fd, self._chunks(info, data), info, self._record)

    def _make_symlink(self, parts: Parts, info: tarfile.TarInfo) -> None:
        host = self.host(parts)
        os.symlink(info.linkname, host)
        mtime = _mtime_ns(info)
        os.utime(host, ns=(mtime, mtime), follow_symlinks=False)

    def _make_link(self, source: Parts, target: Parts) -> None:
        os.link(self.host(source), self.host(target), follow_symlinks=False)

    # -- fast ways for the common members -----------------------------------------------------

    def _known_folder(self, parts: Parts) -> str | None:
        """The host path of the folder ``parts`` is in, when :meth:`_in_known`."""
        if not self._in_known(parts):
            return None
        folder = self._known_host
        if folder is None:
            folder = self._known_host = self.host(self._known[1])
        return folder

    def _known_changed(self) -> None:
        self._known_host = None

    def directory(self, info: tarfile.TarInfo, parts: Parts) -> None:
        folder = self._known_folder(parts)
        if folder is not None:
            path = os.path.join(folder, parts[-1])
            if path not in self._pending:
                try:
                    os.mkdir(path, 0o755)
                except FileExistsError:
                    pass
                else:  # a new folder in the folder of the previous member
                    target = (*self._known[1], parts[-1])
                    self._remember(parts, target)
                    self._dir_attrs(target, info.mode & 0o777, _mtime_ns(info))
                    self._mark(target)
                    return
        super().directory(info, parts)

    def regular(self, info: tarfile.TarInfo, parts: Parts, data: ByteSource) -> None:
        folder = self._known_folder(parts)
        if folder is not None and self._writer is not None and info.size <= _WRITER_BYTES:
            path = os.path.join(folder, parts[-1])
            if path not in self._pending:
                # A file in the folder of the previous member, not given to the writer yet:
                # the writer creates it (or hands it back if something is there).
                content = b"".join(self._chunks(info, data))
                target = (*self._known[1], parts[-1])
                self._pending.add(path)
                self._writer.submit(_Job(path, target, parts, info, content))
                self._mark(target)
                return
        elif folder is not None:
            path = os.path.join(folder, parts[-1])
            if path not in self._pending:
                try:  # a large new file there: created here, without walking its path
                    fd = os.open(path, _NEW_FILE, 0o600)
                except FileExistsError:
                    pass  # in full below: what is there is removed first
                else:
                    target = (*self._known[1], parts[-1])
                    _fill(fd, self._chunks(info, data), info, self._record)
                    self._mark(target)
                    return
        super().regular(info, parts, data)

    def _chunks(self, info: tarfile.TarInfo, data: ByteSource) -> Iterator[bytes]:
        left = info.size
        while left:
            chunk = data.read(min(left, _CHUNK))  # a corrupt stream raises its own LayerError
            if not chunk:
                raise self._error(
                    info.name, f"has {info.size - left} of its {info.size} bytes; truncated."
                )
            left -= len(chunk)
            yield chunk

    # -- the folder tree ----------------------------------------------------------------------

    def _dir_node(self, parts: Parts) -> _Dir:
        node = self.dirs
        for name in parts:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Dir()
            node = child
        return node

    def _forget(self, parts: Parts) -> None:
        """Forget the folder at ``parts`` and everything below it (it is being removed)."""
        node: _Dir | None = self.dirs
        for name in parts[:-1]:
            node = node.children.get(name) if node is not None else None
            if node is None:
                return
        if node is not None and parts:
            node.children.pop(parts[-1], None)

    def apply_dir_attrs(self) -> None:
        """Apply folder modes and times, children before parents, through descriptors.

        Each folder is opened from its parent's descriptor with ``O_NOFOLLOW``, starting at
        the root, so only real folders inside the root are reached; one that is no longer a
        folder (or gone) is skipped with everything below it. The way back up is the folder's
        own ``..``, so at most two descriptors are open at a time, however deep the tree.
        """
        fd = os.open(self._root, _DIR_FLAGS)
        stack: list[tuple[_Dir, Iterator[tuple[str, _Dir]]]] = [
            (self.dirs, iter(self.dirs.children.items()))
        ]
        try:
            while True:
                node, children = stack[-1]
                entry = next(children, None)
                if entry is not None:
                    name, child = entry
                    try:
                        child_fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                    except OSError as exc:
                        if exc.errno in _GONE:
                            continue
                        raise
                    os.close(fd)
                    fd = child_fd
                    stack.append((child, iter(child.children.items())))
                    continue
                stack.pop()
                if not stack:
                    return  # the root itself: its mode is the caller's
                parent_fd = os.open("..", _DIR_FLAGS, dir_fd=fd)
                try:
                    if node.attrs is not None:
                        mode, mtime = node.attrs
                        os.fchmod(fd, mode)
                        os.utime(fd, ns=(mtime, mtime))
                finally:
                    os.close(fd)
                    fd = parent_fd
        finally:
            os.close(fd)


class _Node:
    """An entry of a root held in memory. A hard link is one node under two names."""

    __slots__ = ("children", "mode", "mtime_ns", "size", "target", "where")

    def __init__(self, mode: int, mtime_ns: int, children: dict[str, _Node] | None = None) -> None:
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.children = children  # a folder's
        self.size = 0
        self.target = ""  # a symlink's
        self.where = (0, 0)  # a regular file's bytes: the layer (0-based), offset in its tar


class _MemoryApplier(_Rules):
    """Applies layers to a root in memory, writing nothing: each regular file is where its
    bytes are in its layer's uncompressed tar (which the caller keeps). Its result is the
    root's index (:meth:`rows`), exactly what :class:`_Applier` makes on a host that does
    not fold names, but for the root folder's own time."""

    def __init__(self, budget: _Budget) -> None:
        super().__init__(budget)
        self.top = _Node(stat.S_IFDIR | 0o755, 0, {})
        self._known_node: _Node | None = None

    def host(self, parts: Parts) -> str:
        return "/" + "/".join(parts)

    def _node(self, parts: Parts) -> _Node | None:
        node: _Node | None = self.top
        for name in parts:
            if node is None or node.children is None:
                return None
            node = node.children.get(name)
        return node

    def _folder(self, parts: Parts) -> dict[str, _Node]:
        node = self._node(parts)
        assert node is not None and node.children is not None, parts
        return node.children

    def _mode_at(self, parts: Parts) -> int | None:
        node = self._node(parts)
        return None if node is None else node.mode

    def _link_target(self, parts: Parts) -> str:
        node = self._node(parts)
        assert node is not None
        return node.target

    def _list_dir(self, parts: Parts) -> list[str]:
        return list(self._folder(parts))

    def _delete(self, parts: Parts, mode: int) -> None:
        del self._folder(parts[:-1])[parts[-1]]

    def _make_dir(self, parts: Parts) -> None:
        self._folder(parts[:-1])[parts[-1]] = _Node(stat.S_IFDIR | 0o755, 0, {})

    def _dir_attrs(self, parts: Parts, mode: int, mtime_ns: int) -> None:
        node = self._node(parts)
        assert node is not None
        node.mode = stat.S_IFDIR | mode
        node.mtime_ns = mtime_ns

    def _file(self, info: tarfile.TarInfo) -> _Node:
        node = _Node(stat.S_IFREG | (info.mode & 0o777), _mtime_ns(info))
        node.size = info.size
        node.where = (self.layer_index, info.offset_data)
        return node

    def _make_file(self, parts: Parts, info: tarfile.TarInfo, data: ByteSource) -> None:
        self._folder(parts[:-1])[parts[-1]] = self._file(info)  # its bytes are left unread

    def _make_symlink(self, parts: Parts, info: tarfile.TarInfo) -> None:
        node = _Node(stat.S_IFLNK | 0o777, _mtime_ns(info))
        node.target = info.linkname
        node.size = len(os.fsencode(info.linkname))
        self._folder(parts[:-1])[parts[-1]] = node

    def _make_link(self, source: Parts, target: Parts) -> None:
        node = self._node(source)
        assert node is not None
        self._folder(target[:-1])[target[-1]] = node

    # -- fast ways for the common members -----------------------------------------------------

    def _known_folder(self, parts: Parts) -> dict[str, _Node] | None:
        if not self._in_known(parts):
            return None
        if self._known_node is None:
            self._known_node = self._node(self._known[1])
        assert self._known_node is not None and self._known_node.children is not None
        return self._known_node.children

    def _known_changed(self) -> None:
        self._known_node = None

    def directory(self, info: tarfile.TarInfo, parts: Parts) -> None:
        folder = self._known_folder(parts)
        if folder is not None and parts[-1] not in folder:
            mode = stat.S_IFDIR | (info.mode & 0o777)
            node = folder[parts[-1]] = _Node(mode, _mtime_ns(info), {})
            target = (*self._known[1], parts[-1])
            self._remember(parts, target)
            self._known_node = node
            self._mark(target)
            return
        super().directory(info, parts)

    def regular(self, info: tarfile.TarInfo, parts: Parts, data: ByteSource) -> None:
        folder = self._known_folder(parts)
        if folder is not None and parts[-1] not in folder:
            folder[parts[-1]] = self._file(info)
            self._mark((*self._known[1], parts[-1]))
            return
        super().regular(info, parts, data)

    # -- the result ---------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        """The root's index: folders before what they hold, names in order."""
        top = self.top
        rows: list[Row] = [["/", "d", stat.S_IMODE(top.mode), top.mtime_ns, 0, None]]
        names: dict[int, list[list[int]]] = {}  # each file node's extras, by identity
        stack: list[tuple[str, _Node]] = [("", top)]
        while stack:
            inside, folder = stack.pop()
            assert folder.children is not None
            for name in sorted(folder.children):
                node = folder.children[name]
                path = f"{inside}/{name}"
                mode = stat.S_IMODE(node.mode)
                if node.children is not None:
                    rows.append([path, "d", mode, node.mtime_ns, 0, None])
                    stack.append((path, node))
                elif stat.S_ISLNK(node.mode):
                    rows.append([path, "l", mode, node.mtime_ns, 0, node.target])
                else:
                    extra = [node.where[0], node.where[1], 0]
                    names.setdefault(id(node), []).append(extra)
                    rows.append([path, "f", mode, node.mtime_ns, node.size, extra])
        group = 0
        for extras in names.values():
            if len(extras) > 1:
                group += 1
                for extra in extras:
                    extra[2] = group
        return rows


class _Collision(Exception):
    """The member is not applied: it would land on another name's entry (recorded)."""


class _Names:
    """The entries of one host folder: the exact name of each by its folded key
    (:func:`pyops.oci.folding.fold`), and the ``_Names`` of its subfolders looked at.

    Entries are never taken out: a name whose entry was removed since stays until another
    name claims its key, which then checks that it is gone (:meth:`_FoldingApplier._claim`).
    So the one entry on the host under a key, if there is one, has the name kept for it.
    """

    __slots__ = ("exact", "folders")

    def __init__(self, exact: dict[str, str]) -> None:
        self.exact = exact
        self.folders: dict[str, _Names] = {}


class _FoldingApplier(_Applier):
    """An :class:`_Applier` for a host folder that folds names (:mod:`pyops.oci.folding`),
    where two image entries whose names differ only in case or normalisation would be one.

    The names the host holds are looked up through :class:`_Names`, exactly as the image
    spells them: a name whose key another name holds is missing (as it is in the image),
    never the other entry, so whiteouts, opaque markers and replacements only ever touch the
    entry of their own name. A member whose name, or a folder on its way, would land on
    another name's entry is not applied: the pair goes to :attr:`collisions`, and both paths
    to :attr:`ambiguous` (with everything below them, and hard links to the path left out).
    When a later layer removes what was left out (a whiteout, an opaque marker) or a later
    member replaces it, the image no longer has it, and the pair is forgotten.
    """

    def __init__(self, root: Path, budget: _Budget) -> None:
        super().__init__(root, budget)
        self.collisions: list[Collision] = []
        self.ambiguous: dict[Parts, Collision] = {}
        """In-root paths (resolved) that do not hold what the image has there, and why."""
        # The paths left out, each with its collision and the last layer that put something
        # at or below it; and the path unpacked of each collision.
        self._left_out: dict[Parts, tuple[Collision, int]] = {}
        self._kept: dict[Collision, Parts] = {}
        self._layer = 0
        self._names = _Names(self._listing(()))
        self._last: tuple[Parts, _Names] = ((), self._names)
        self._lstat = self._exact_lstat

    def _listing(self, folder: Parts) -> dict[str, str]:
        exact: dict[str, str] = {}
        for name in os.listdir(self.host(folder)):
            exact.setdefault(folding.fold(name), name)
        return exact

    def _folder(self, folder: Parts) -> _Names:
        """The names of the existing host folder ``folder`` (listed the first time)."""
        last, node = self._last
        if folder == last:
            return node
        start = len(last)
        if not (start < len(folder) and folder[:start] == last):
            node, start = self._names, 0
        for i in range(start, len(folder)):
            child = node.folders.get(folder[i])
            if child is None:
                child = node.folders[folder[i]] = _Names(self._listing(folder[: i + 1]))
            node = child
        self._last = (folder, node)
        return node

    def _holds(self, parts: Parts) -> bool:
        """Whether the entry the host finds at ``parts`` (if any) is of that exact name."""
        name = parts[-1]
        return self._folder(parts[:-1]).exact.get(folding.fold(name), name) == name

    def _exact_lstat(self, parts: Parts) -> int | None:
        if not self._holds(parts):
            return None  # another name's entry: in the image, this one is not there
        try:
            return os.lstat(os.path.join(self._root, *parts)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _claim(self, folder: Parts, name: str) -> None:
        """Take ``name``'s key in ``folder`` for an entry about to be made there; raise
        :class:`_Collision` (recorded) if an entry of another name holds it."""
        exact = self._folder(folder).exact
        key = folding.fold(name)
        have = exact.setdefault(key, name)
        if have == name:
            return
        self.barrier()  # the writer may not have made ``have`` yet
        try:
            os.lstat(os.path.join(self.host(folder), have))
        except (FileNotFoundError, NotADirectoryError):
            exact[key] = name  # removed since: the key is free
            return
        self._collide((*folder, have), (*folder, name))
        raise _Collision

    def start_layer(self, label: str) -> None:
        super().start_layer(label)
        self._layer += 1

    def _collide(self, kept: Parts, left_out: Parts) -> None:
        pair = ("/" + "/".join(kept), "/" + "/".join(left_out))
        if pair not in self._kept:
            self.collisions.append(pair)
            self._kept[pair] = kept
            log.info("%s: %s is not unpacked: %s holds its name", self.layer_label, *pair[::-1])
        self.ambiguous.setdefault(kept, pair)
        self._leave_out(left_out, pair)

    def _leave_out(self, parts: Parts, pair: Collision) -> None:
        self.ambiguous[parts] = pair
        self._left_out[parts] = (pair, self._layer)

    def _removed_lower(
        self, start: Parts, *, below_only: bool = False, replaced: bool = False
    ) -> None:
        """This layer removed what lower layers put at ``start`` (or below it only), or
        ``replaced`` everything there: so are the entries left out there, and the collisions
        left without any are forgotten."""
        n = len(start)
        top = self._layer + 1 if replaced else self._layer
        gone = [
            parts
            for parts, (_, layer) in self._left_out.items()
            if layer < top and parts[:n] == start and (len(parts) > n or not below_only)
        ]
        if not gone:
            return
        pairs = set()
        for parts in gone:
            pair, _ = self._left_out.pop(parts)
            pairs.add(pair)
            if self.ambiguous.get(parts) == pair:
                del self.ambiguous[parts]
        pairs -= {pair for pair, _ in self._left_out.values()}
        for pair in pairs:
            self.collisions.remove(pair)
            kept = self._kept.pop(pair)
            if self.ambiguous.get(kept) == pair:
                del self.ambiguous[kept]

    def ambiguity(self, parts: Parts) -> Collision | None:
        """The collision that leaves the in-root path ``parts`` (resolved) or a folder above
        it without what the image has there, if any."""
        ambiguous = self.ambiguous
        for i in range(len(parts), 0, -1):
            pair = ambiguous.get(parts[:i])
            if pair is not None:
                return pair
        return None

    def _mkdir(self, parts: Parts) -> None:
        self._claim(parts[:-1], parts[-1])
        super()._mkdir(parts)

    def _target(self, member: str, parts: Parts) -> tuple[Parts, int | None]:
        target, mode = super()._target(member, parts)
        self._claim(target[:-1], target[-1])
        return target, mode

    def _remove_lower(self, start: Parts) -> None:
        if self._left_out:
            self._removed_lower(start)
        if start and not self._holds(start):
            return  # another name's entry is there: the one named is not on the host
        super()._remove_lower(start)

    def opaque(self, directory: Parts) -> None:
        super().opaque(directory)
        if self._left_out:
            parent, modes = self.resolve(directory)
            if not modes or (modes[-1] is not None and stat.S_ISDIR(modes[-1])):
                self._removed_lower(parent, below_only=True)

    def directory(self, info: tarfile.TarInfo, parts: Parts) -> None:
        try:
            if self._known_folder(parts) is not None:
                self._claim(self._known[1], parts[-1])
            super().directory(info, parts)
        except _Collision:
            pass

    def _replacing(self, parts: Parts) -> None:
        """A member other than a folder was made at ``parts``: in the image, it replaces
        whatever was there, an entry left out too."""
        if self._left_out:
            target, _ = self.resolve(parts, follow_last=False)
            self._removed_lower(target, replaced=True)

    def regular(self, info: tarfile.TarInfo, parts: Parts, data: ByteSource) -> None:
        try:
            if self._known_folder(parts) is not None:
                self._claim(self._known[1], parts[-1])
            super().regular(info, parts, data)
        except _Collision:
            return  # the archive skips the member's data
        self._replacing(parts)

    def symlink(self, info: tarfile.TarInfo, parts: Parts) -> None:
        try:
            super().symlink(info, parts)
        except _Collision:
            return
        self._replacing(parts)

    def hardlink(self, info: tarfile.TarInfo, parts: Parts) -> None:
        try:
            link_parts = split_image_path(info.linkname)
        except UnsafeLayerPath:
            link_parts = ()  # refused below
        if link_parts:
            self.barrier()
            source, modes = self.resolve(link_parts, follow_last=False)
            pair = self.ambiguity(source) if modes[-1] is None else None
            if pair is not None:  # a link to an entry left out: left out too
                target, _ = self.resolve(parts, follow_last=False)
                self._leave_out(target, pair)
                return
        try:
            super().hardlink(info, parts)
        except _Collision:
            return
        self._replacing(parts)


def _make_root(dest_root: Path) -> None:
    """``mkdir -p`` without recursion (Path.mkdir(parents=True) recurses per level)."""
    missing: list[Path] = []
    path = dest_root
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for path in reversed(missing):
        try:
            with atomic.reporting_disk_full(path):
                os.mkdir(path, 0o755)
        except FileExistsError:
            if not path.is_dir():
                raise HostFileError(f"{path} exists and is not a directory.") from None
        except OSError as exc:
            raise HostFileError(f"cannot create {path}: {exc.strerror or exc}") from exc


def unpack_layers(
    layers: Sequence[Path],
    dest_root: Path,
    *,
    diff_ids: Sequence[str] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> None:
    """Apply layer tarballs (plain or gzip) in order to ``dest_root``.

    ``dest_root`` is created if needed; it is the image's ``/``. When ``diff_ids`` (from the
    image config's ``rootfs``) are given, the uncompressed stream of each layer must match
    them. Raises :class:`~pyops.errors.UnsafeLayerPath` for members that would escape the
    root, :class:`~pyops.errors.LayerError` for corrupt, truncated, sparse or zstd layers,
    :class:`~pyops.errors.LimitExceeded` for layers over a limit of :mod:`pyops.limits`,
    :class:`~pyops.errors.DiskFull` when the disk fills up, and
    :class:`~pyops.errors.DigestMismatch` for a diff_id mismatch; the destination is then
    partly written and must be thrown away.

    When ``dest_root`` folds names (:mod:`pyops.oci.folding`), an entry whose name differs
    only in case or Unicode normalisation from one unpacked before is left out, with a
    warning (:attr:`Unpacker.collisions`).
    """
    unpacker = Unpacker(dest_root, len(layers), diff_ids=diff_ids, progress=progress)
    for number, path in enumerate(layers, start=1):
        unpacker.apply(number, path)
    unpacker.finish()
    for kept, left_out in unpacker.collisions:
        log.warning(
            "%s is not unpacked: %s holds its name, as %s does not tell names apart that "
            "differ only in case or Unicode normalisation",
            left_out,
            kept,
            dest_root,
        )


class Unpacker:
    """:func:`unpack_layers` one layer at a time, so that a layer can be applied as soon as
    it is downloaded while later ones still arrive (see :func:`pyops.oci.pull.pull`).

    Layers must be given in order, each once (``apply(1, ...)``, ``apply(2, ...)``, ...),
    then :meth:`finish` applies the folders' modes. Errors are :func:`unpack_layers`'.

    ``folds`` says whether ``dest_root`` folds names (case, Unicode normalisation); None
    (the default) asks the folder itself (:func:`pyops.oci.folding.folds`). In a folder
    that folds, two entries whose names differ only that way are never merged: the later
    one is left out and the pair recorded (:attr:`collisions`, :meth:`ambiguity`).

    With ``dest_root`` None, the root is made in memory and nothing is written (but the
    tars ``keep_tars`` keeps): :meth:`rows` is then the root's index, each regular file
    found where its bytes are in its layer's uncompressed tar.
    """

    def __init__(
        self,
        dest_root: Path | None,
        count: int,
        *,
        diff_ids: Sequence[str] | None = None,
        progress: Progress = NULL_PROGRESS,
        folds: bool | None = None,
        threaded: bool = True,
        keep_tars: Sequence[Path | None] | None = None,
    ) -> None:
        if diff_ids is not None and len(diff_ids) != count:
            raise LayerError(f"the image config lists {len(diff_ids)} diff_ids for {count} layers.")
        self.dest_root = dest_root
        self.count = count
        self.diff_ids = diff_ids
        self.progress = progress
        self.applied = 0
        if keep_tars is not None and (len(keep_tars) != count or diff_ids is None):
            raise ValueError("keep_tars needs a path (or None) and a diff_id for each layer")
        self._applier: _Rules
        if dest_root is None:  # in memory: nothing is written but the tars kept
            self.folds = False
            self._applier = _MemoryApplier(_Budget())
            self._keep_tars = keep_tars
            return
        _make_root(dest_root)
        if folds is None:
            try:
                with atomic.reporting_disk_full(dest_root / "-"):
                    folds = folding.folds(dest_root)
            except OSError as exc:
                raise HostFileError(f"cannot write in {dest_root}: {exc.strerror or exc}") from exc
        self.folds = folds
        root = Path(os.path.realpath(dest_root))
        applier = (_FoldingApplier if folds else _Applier)(root, _Budget())
        applier.threaded = threaded
        # A folder that folds names cannot hold the image's: its index would not be the image's.
        self._keep_tars = keep_tars if not folds else None
        if self._keep_tars is not None:
            applier.record_contents()
        self._applier = applier

    @property
    def contents(self) -> dict[int, tuple[int, int]] | None:
        """With ``keep_tars``: each regular file's inode, and where its bytes are (the layer,
        0-based, and the offset in its uncompressed tar)."""
        applier = self._applier
        return applier.contents if isinstance(applier, _Applier) else None

    def rows(self) -> list[Row]:
        """The index of the root made in memory (``dest_root`` None), once :meth:`finish`
        returned (:data:`~pyops.oci.rootindex.Row`): a file's bytes are in its layer's
        uncompressed tar, which ``keep_tars`` keeps."""
        if not isinstance(self._applier, _MemoryApplier) or self.applied != self.count:
            raise ValueError("rows() is for an unpack in memory, once finished")
        return self._applier.rows()

    @property
    def collisions(self) -> list[Collision]:
        """The entries left out so far, each with the one unpacked that holds its name:
        ``(unpacked, left out)`` in-image paths, folders resolved. Empty unless the folder
        folds names."""
        applier = self._applier
        return list(applier.collisions) if isinstance(applier, _FoldingApplier) else []

    def ambiguity(self, path: str) -> Collision | None:
        """The collision that leaves the in-image ``path`` (folders resolved, as in
        :attr:`collisions`) without what the image has there: ``path`` is one of its pair, or
        below one, or a hard link to the entry left out. None when it is not so."""
        applier = self._applier
        if not isinstance(applier, _FoldingApplier):
            return None
        return applier.ambiguity(split_image_path(path))

    @property
    def entries(self) -> int:
        """Members applied so far, in all layers."""
        return self._applier.budget.entries

    def apply(self, number: int, path: Path, arriving: ArrivingBlob | None = None) -> None:
        """Apply layer ``number`` (1-based), the blob at ``path``, or read from ``arriving``
        while it downloads (to its end: the blob at ``path`` then)."""
        if number != self.applied + 1 or number > self.count:
            raise ValueError(f"layer {number} applied after layer {self.applied} of {self.count}")
        label = f"layer {number} ({path.name[:12]})"
        key = f"unpack:{number}:{path}"
        size = arriving.size if arriving is not None else path.stat().st_size
        self.progress.start(key, f"unpacking {label}", size)
        keep = self._keep_tars[number - 1] if self._keep_tars is not None else None
        tee = _Tee(keep) if keep is not None else None
        self._applier.layer_index = number - 1
        try:
            with arriving.open() if arriving is not None else open(path, "rb") as raw:
                digest = _apply_layer(self._applier, raw, label, size, self.progress, key, tee)
            if self.diff_ids is not None and digest != self.diff_ids[number - 1]:
                raise DigestMismatch(
                    f"{label}: its uncompressed content has digest {digest}, but the image "
                    f"config says {self.diff_ids[number - 1]}."
                )
            if tee is not None:
                tee.keep()
        finally:
            if tee is not None:
                tee.drop()
            self.progress.finish(key)
        self.applied = number

    def finish(self) -> None:
        """Apply the folders' modes and times, once every layer is applied."""
        if self.applied != self.count:
            raise ValueError(f"{self.applied} of {self.count} layers applied")
        applier = self._applier
        try:
            with atomic.reporting_disk_full(applier.host(("-",))):
                applier.apply_dir_attrs()
        except OSError as exc:
            raise LayerError(f"cannot apply folder modes in {self.dest_root}: {exc}") from exc


class _Blob(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...


def _apply_layer(
    applier: _Rules,
    raw: _Blob,
    label: str,
    size: int,
    progress: Progress,
    key: str,
    tee: _Tee | None = None,
) -> str:
    applier.start_layer(label)
    budget = applier.budget
    magic = b""
    while len(magic) < 4 and (more := raw.read(4 - len(magic))):
        magic += more  # a blob still arriving gives what it has
    raw.seek(0)
    if magic.startswith(_ZSTD_MAGIC):
        raise LayerError(
            f"{label} is compressed with zstd (application/vnd.oci.image.layer.v1.tar+zstd), "
            "which pyops cannot decompress.",
            hint="Push the image with gzip layers (skopeo copy --dest-compress-format gzip).",
        )
    counted = _Counting(raw, progress, key)
    stream: _ByteSource = counted
    if magic.startswith(_GZIP_MAGIC):
        stream = _Gunzip(counted, label, budget.trailing_limit)
    ahead = _Ahead(_Reader(stream, budget, label, size, tee))
    failed = True
    try:
        end = _apply_tar(applier, ahead, label)
        count, digest = ahead.drain(end)
        failed = False
    finally:
        ahead.close()
        applier.end_layer(failed=failed)
    budget.unpacked += count
    return digest


def _apply_tar(applier: _Rules, reader: _Ahead, label: str) -> int:
    """Apply the members of one layer; return where its end-of-archive marker ends."""
    budget = applier.budget
    archive = TarStream(reader, label)
    while (info := archive.next()) is not None:
        budget.entries += 1
        if budget.entries > budget.entries_limit:
            raise limits.LAYER_ENTRIES.exceeded(
                f"{label}: the image's layers so far", budget.entries
            )
        _apply_member(applier, archive, reader, info, label)
    return archive.end_of_archive + _END_OF_ARCHIVE


def _apply_member(
    applier: _Rules,
    archive: TarStream,
    reader: _Ahead,
    info: tarfile.TarInfo,
    label: str,
) -> None:
    try:
        parts = split_image_path(info.name)
    except UnsafeLayerPath as exc:
        raise UnsafeLayerPath(
            f"{label}: member {info.name!r} contains '..' or NUL and would escape the image "
            "root; refused.",
            hint="The image is malformed or malicious.",
        ) from exc
    if not parts:
        return  # "./" itself
    if len(parts) > applier.budget.depth:
        raise limits.PATH_DEPTH.exceeded(f"{label}: member {info.name[:200]!r}", len(parts))
    needed: int | None = None
    if info.isreg():
        if info.sparse is not None:  # pragma: no cover - refused while parsing the header
            raise LayerError(f"{label}: member {info.name!r} is a sparse file; refused.")
        if info.size < 0:
            raise LayerError(f"{label}: member {info.name!r} has a negative size.")
        reader.require(info.offset_data + info.size)
        needed = info.size
    try:
        _dispatch(applier, archive, info, parts, label)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise atomic.disk_full(applier.host((*parts[:-1], "-")), needed) from exc
        raise LayerError(
            f"{label}: member {info.name!r} cannot be unpacked: {exc.strerror or exc}"
        ) from exc


def _dispatch(
    applier: _Rules, archive: TarStream, info: tarfile.TarInfo, parts: Parts, label: str
) -> None:
    name = parts[-1]
    if name.startswith(_WHITEOUT):
        if name == _OPAQUE:
            applier.opaque(parts[:-1])
        elif name == _WHITEOUT:
            raise LayerError(f"{label}: member {info.name!r} is an invalid whiteout.")
        elif name.startswith(_AUFS_META):
            log.debug("%s: skipping aufs metadata %s", label, info.name)
        else:
            applier.whiteout(info.name, parts[:-1], name[len(_WHITEOUT) :])
        return
    if info.isdir():
        applier.directory(info, parts)
    elif info.isreg():
        applier.regular(info, parts, archive)
    elif info.issym():
        applier.symlink(info, parts)
    elif info.islnk():
        applier.hardlink(info, parts)
    elif info.ischr() and info.devmajor == 0 and info.devminor == 0:
        # overlayfs-style whiteout exported as is by some broken tools (doc section 5.2).
        applier.whiteout(info.name, parts[:-1], name)
    elif info.isdev():
        log.debug("%s: skipping device or FIFO %s", label, info.name)
    else:
        log.warning("%s: skipping %s of unknown type %r", label, info.name, info.type)

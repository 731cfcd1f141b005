"""The content-addressed cache under ``PYOPS_HOME`` (default ``~/.pyops``).

Blobs live at ``blobs/<algorithm>/<hex>``, the layout of an OCI image layout
(image-spec ``image-layout.md``), so a path in the cache is correct by construction: nothing
gets there without its digest having been checked. Downloads go to
``blobs/tmp/<hex>.partial``, are hashed in the same pass as they are written, and are moved
into place with an atomic rename; a partial file survives a cut connection and the next try
resumes it with an HTTP ``Range`` request.

A partial file is kept only while it is a sound resume point: a prefix of the blob, written
and flushed, after a cut connection, a deadline or a cancel (Ctrl-C). A full disk removes it
(the last write may be torn, and a file the next pull cannot complete only takes room), as
does a digest mismatch. Every other temporary follows :mod:`pyops.atomic`, and the blob
folders are swept of those of dead processes when a process first writes there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from pyops import atomic
from pyops import home as _home
from pyops.errors import (
    Cancelled,
    DigestMismatch,
    DiskFull,
    LimitExceeded,
    NetworkError,
)
from pyops.oci.reference import check_digest
from pyops.progress import NULL_PROGRESS, Progress

try:  # POSIX only; without it two processes may download the same blob twice.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK = 1 << 16
"""Size of the chunks a blob stream yields: the registry client reads the socket in these, and
each is written and hashed while it is still in the CPU cache."""
_HASH_BLOCK = 1 << 20


class Cancel:
    """A cancel signal shared by the threads of one pull.

    Downloads check it for every chunk (an ``Event.is_set``, cheap next to a 64 KiB write),
    and register hooks (:meth:`on_cancel`) that wake a read blocked on a silent server, so a
    cancel takes effect within one read rather than after the layer.
    """

    __slots__ = ("_event", "_hooks", "_lock")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._hooks: dict[int, Callable[[], None]] = {}

    def cancel(self) -> None:
        """Set the signal and run every registered hook."""
        self._event.set()
        with self._lock:
            hooks = list(self._hooks.values())
        for hook in hooks:
            hook()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` once :meth:`cancel` was called."""
        if self._event.is_set():
            raise Cancelled("the download was cancelled.")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on a cancel; whether it was cancelled."""
        return self._event.wait(seconds)

    @contextmanager
    def on_cancel(self, hook: Callable[[], None]) -> Iterator[None]:
        """Run ``hook`` on a cancel while the block runs (at once if already cancelled)."""
        key = id(hook)
        with self._lock:
            self._hooks[key] = hook
        try:
            if self._event.is_set():
                hook()
            yield
        finally:
            with self._lock:
                self._hooks.pop(key, None)


class ArrivingBlob:
    """A blob being downloaded, read while its bytes arrive (:meth:`open`).

    :meth:`Store.ensure_blob` tells it where the bytes go (:meth:`begin`), how many are
    written (:meth:`wrote`), and how the download ended (:meth:`finished`: verified and in
    place; :meth:`failed`). A reader gets the bytes as they are written, waits for more, and
    sees the end only once the whole blob is verified; a failed download raises its error
    in the reader. So the reader may hand out bytes of a blob whose digest turns out wrong:
    what it feeds must be undone by that error (the layer applier checks the uncompressed
    stream against its own digest, the config's diff_id, before it keeps anything).
    """

    _WAIT = 0.1  # seconds a reader waits at a time (so Ctrl-C is seen)

    def __init__(self, size: int) -> None:
        self.size = size
        self._cond = threading.Condition()
        self._where: Path | None = None
        self._have = 0
        self._complete = False
        self._error: BaseException | None = None

    def begin(self, partial: Path, have: int) -> None:
        with self._cond:
            self._where, self._have = partial, have
            self._cond.notify_all()

    def wrote(self, have: int) -> None:
        """The first ``have`` bytes are in the file (fewer than before: it was restarted)."""
        with self._cond:
            self._have = have
            self._cond.notify_all()

    def finished(self, final: Path) -> None:
        with self._cond:
            self._where, self._have, self._complete = final, self.size, True
            self._cond.notify_all()

    def failed(self, error: BaseException) -> None:
        with self._cond:
            if not self._complete:
                self._error = error
            self._cond.notify_all()

    def wait_past(self, position: int) -> tuple[Path, int, bool]:
        """Wait until more than ``position`` bytes are there, or the blob is complete: the
        file, how many bytes it has, whether that is all. Raises the download's error."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._where is not None and (self._have > position or self._complete):
                    return self._where, self._have, self._complete
                self._cond.wait(self._WAIT)

    def open(self) -> ArrivingReader:
        """A new reader, at the blob's first byte."""
        return ArrivingReader(self)


class ArrivingReader:
    """Reads an :class:`ArrivingBlob` from its start, waiting for the bytes to arrive."""

    def __init__(self, blob: ArrivingBlob) -> None:
        self._blob = blob
        self._pos = 0
        self._fd: int | None = None

    def read(self, size: int = -1, /) -> bytes:
        while True:
            where, have, complete = self._blob.wait_past(self._pos)
            if have <= self._pos:
                return b""  # complete
            if self._fd is None:
                try:
                    self._fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # moved into place meanwhile
            count = have - self._pos if size < 0 else min(size, have - self._pos)
            data = os.pread(self._fd, count, self._pos)
            if data:
                self._pos += len(data)
                return data
            if complete:
                raise DigestMismatch(f"{where} is shorter than its {self._blob.size} bytes.")
            # emptied by a restarted download: wait for the bytes again

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        if whence != os.SEEK_SET or offset < 0:
            raise ValueError("an arriving blob is read from a position")
        self._pos = offset
        return offset

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ArrivingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Announcing:
    """A sink that writes through to the file and tells an :class:`ArrivingBlob`."""

    __slots__ = ("_arriving", "_handle", "offset")

    def __init__(self, handle: IO[bytes], arriving: ArrivingBlob, offset: int) -> None:
        self._handle = handle
        self._arriving = arriving
        self.offset = offset

    def write(self, data: bytes, /) -> int | None:
        written = self._handle.write(data)
        self._handle.flush()
        self.offset += len(data)
        self._arriving.wrote(self.offset)
        return written

    def restart_at(self, offset: int) -> None:
        self.offset = offset
        self._arriving.wrote(offset)


_swept: set[Path] = set()
_swept_lock = threading.Lock()


_LEGACY_NEW = re.compile(r"[a-z0-9]+-[0-9a-f]+\.([0-9]{1,10})\.new")
"""``blobs/tmp/<alg>-<hex>.<pid>.new``: what put_blob wrote before it used pyops.atomic."""


def _sweep_once(*folders: Path) -> None:
    """Sweep each folder of dead processes' temporaries, once per process."""
    for folder in folders:
        with _swept_lock:
            if folder in _swept:
                continue
            _swept.add(folder)
        atomic.sweep(folder)
        if folder.name == "tmp":
            _sweep_legacy(folder)


def _sweep_legacy(folder: Path) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _LEGACY_NEW.fullmatch(entry.name)
        if match is None or atomic.pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


class BlobStream(Protocol):
    """An open download of one blob, as given by a :data:`BlobOpener`."""

    @property
    def offset(self) -> int:
        """Byte offset of the first chunk: the one asked for, or 0 if the server ignored it."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The bytes from :attr:`offset` on; raises NetworkError if the connection breaks."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


BlobOpener = Callable[[int], BlobStream]
"""Opens a download of a blob starting at the given byte offset (``Range: bytes=N-``)."""


@dataclass(frozen=True, slots=True)
class Store:
    """A content-addressed blob cache rooted at :attr:`root`."""

    root: Path

    def __post_init__(self) -> None:
        # A str root (Store("/tmp/cache")) works as a Path one does.
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def default(cls, env: Mapping[str, str] | None = None) -> Store:
        """The store at ``$PYOPS_HOME``, else ``~/.pyops``."""
        return cls(_home.root(env=env))

    def blob_path(self, digest: str) -> Path:
        """Where the blob with ``digest`` is (or would be) stored."""
        algorithm, _, encoded = check_digest(digest).partition(":")
        return self.root / "blobs" / algorithm / encoded

    def _partial_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.root / "blobs" / "tmp" / f"{algorithm}-{encoded}.partial"

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        """Whether the blob is cached (with the expected size, when given)."""
        try:
            stat = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or stat.st_size == size

    def read_blob(self, digest: str) -> bytes:
        """The bytes of a cached blob (checked against its digest when it was stored)."""
        return self.blob_path(digest).read_bytes()

    def put_blob(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data`` and return its digest; if ``digest`` is given, it must match."""
        algorithm = digest.partition(":")[0] if digest else "sha256"
        actual = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        if digest is not None and actual != check_digest(digest):
            raise DigestMismatch(f"content has digest {actual}, expected {digest}.")
        final = self.blob_path(actual)
        if not final.exists():
            with atomic.reporting_disk_full(final, len(data)):
                final.parent.mkdir(parents=True, exist_ok=True)
            _sweep_once(final.parent)
            atomic.write_bytes(final, data)
        return actual

    def ensure_blob(
        self,
        digest: str,
        size: int,
        open_blob: BlobOpener,
        *,
        label: str | None = None,
        progress: Progress = NULL_PROGRESS,
        attempts: int = 3,
        cancel: Cancel | None = None,
        arriving: ArrivingBlob | None = None,
    ) -> Path:
        """Return the path of the blob, downloading it with ``open_blob`` if it is not cached.

        The bytes are hashed as they are written; the file enters the cache only if its size
        and digest match, by an atomic rename. A connection that breaks is resumed from the
        partial file, up to ``attempts`` tries in this call; the partial file is kept for a
        later call when the tries run out, the deadline passes or ``cancel`` is set. A
        mismatch or a full disk removes the partial file and raises
        :class:`~pyops.errors.DigestMismatch` or :class:`~pyops.errors.DiskFull`.
        ``arriving`` is told of the bytes as they are written, and of the end.
        """
        try:
            final = self._ensure_blob(
                digest, size, open_blob, label, progress, attempts, cancel, arriving
            )
        except BaseException as exc:
            if arriving is not None:
                arriving.failed(exc)
            raise
        if arriving is not None:
            arriving.finished(final)
        return final

    def _ensure_blob(
        self,
        digest: str,
        size: int,
        open_blob: BlobOpener,
        label: str | None,
        progress: Progress,
        attempts: int,
        cancel: Cancel | None,
        arriving: ArrivingBlob | None,
    ) -> Path:
        final = self.blob_path(digest)
        name = label or digest
        if self.has_blob(digest, size):
            return final
        partial = self._partial_path(digest)
        with atomic.reporting_disk_full(partial):
            partial.parent.mkdir(parents=True, exist_ok=True)
            final.parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(partial.parent, final.parent)
        with locked_partial(partial) as handle:
            # Another process may have finished the blob while we waited for the lock.
            if self.has_blob(digest, size):
                return final
            progress.start(digest, name, size)
            try:
                resume_download(
                    handle,
                    partial,
                    size,
                    open_blob,
                    digest=digest,
                    name=name,
                    progress=progress,
                    attempts=attempts,
                    cancel=cancel,
                    arriving=arriving,
                )
            finally:
                progress.finish(digest)
            try:
                with atomic.reporting_disk_full(final):
                    os.fsync(handle.fileno())
                    os.replace(partial, final)
            except DiskFull:
                _discard(handle)
                raise
        return final


def resume_download(
    handle: IO[bytes],
    path: Path,
    size: int,
    open_blob: BlobOpener,
    *,
    digest: str | None,
    algorithm: str = "sha256",
    name: str,
    progress: Progress = NULL_PROGRESS,
    key: str | None = None,
    attempts: int = 3,
    cancel: Cancel | None = None,
    arriving: ArrivingBlob | None = None,
) -> str:
    """Complete the download in ``handle`` (the partial file at ``path``) to ``size`` bytes.

    The one download loop of pyops (blobs and Nanos releases): the bytes already in the file
    are the resume point, asked for with ``open_blob(offset)``; each chunk is written and
    hashed in one pass by a :class:`BlobWriter`; a cut connection is resumed up to
    ``attempts`` times; a ``digest`` (``algorithm:hex``) is verified at the end, or when it is
    ``None`` only the size is. On return the file holds the whole verified content, flushed;
    the digest of it (``algorithm:hex``) is returned.
    """
    key = key or digest or name
    hash_name = digest.partition(":")[0] if digest else algorithm
    have = handle.seek(0, os.SEEK_END)
    if have > size:
        handle.truncate(0)
        have = 0
    # hashlib state cannot be saved, so a resumed download re-hashes what it has.
    sink: _Sink = handle
    announcing = None
    if arriving is not None:
        sink = announcing = _Announcing(handle, arriving, have)
        arriving.begin(path, have)
    writer = BlobWriter(
        digest,
        size,
        sink,
        name=name,
        have=have,
        hasher=_hash_prefix(handle, hash_name, have),
        progress=progress,
        key=key,
        algorithm=algorithm,
    )
    progress.advance(key, have)
    try:
        with atomic.reporting_disk_full(path, size - have):
            for attempt in range(1, attempts + 1):
                if writer.have == size:
                    break
                if cancel is not None:
                    cancel.check()
                if writer.have:
                    log.info("%s: resuming at byte %d of %d", name, writer.have, size)
                stream = open_blob(writer.have)
                try:
                    if stream.offset != writer.have:
                        # 200 instead of 206: the server ignored Range; start again.
                        handle.seek(0)
                        handle.truncate(0)
                        progress.advance(key, -writer.have)
                        writer.restart()
                    handle.seek(writer.have)
                    if announcing is not None:
                        announcing.restart_at(writer.have)
                    writer.write_all(stream.chunks(), cancel)
                except NetworkError:
                    handle.flush()
                    if cancel is not None:
                        cancel.check()
                    if attempt == attempts:
                        raise
                    log.info("%s: download cut at byte %d, retrying", name, writer.have)
                    continue
                except (Cancelled, LimitExceeded, KeyboardInterrupt):
                    # A sound resume point: what was written is a prefix of the blob.
                    handle.flush()
                    raise
                finally:
                    stream.close()
                if writer.have < size:
                    handle.flush()
                    if attempt == attempts:
                        raise NetworkError(
                            f"{name}: the download ended after {writer.have} of {size} bytes.",
                            hint="Run the command again to resume it.",
                        )
            handle.flush()
        writer.verify()
        return writer.actual
    except (DigestMismatch, DiskFull):
        # A full disk may have torn the last write: the file is no resume point.
        _discard(handle)
        raise


def _discard(handle: IO[bytes]) -> None:
    """Empty a partial file (:func:`locked_partial` then removes it)."""
    try:
        handle.seek(0)
        handle.truncate(0)
        handle.flush()
    except OSError:  # pragma: no cover - truncating to 0 needs no room
        log.warning("cannot empty the partial download %s", getattr(handle, "name", "?"))


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class BlobWriter:
    """Writes a blob's bytes to ``sink`` and hashes them in the same pass.

    This is the inner loop of :meth:`Store.ensure_blob`: each chunk from the network is
    written and fed to the hash at once, while it is still in the CPU cache, so the blob is
    never read back to be checked. :attr:`have` counts the bytes taken so far, also when the
    stream breaks (a resumed download starts from the prefix it has already hashed, given as
    ``have`` and ``hasher``). ``benchmarks/bench_hash.py`` drives this class with a sink that
    discards the bytes, to time the digest checking without the disk.
    """

    __slots__ = (
        "_algorithm",
        "_hasher",
        "_key",
        "_progress",
        "_sink",
        "digest",
        "have",
        "name",
        "size",
    )

    def __init__(
        self,
        digest: str | None,
        size: int,
        sink: _Sink,
        *,
        name: str | None = None,
        have: int = 0,
        hasher: hashlib._Hash | None = None,
        progress: Progress = NULL_PROGRESS,
        key: str | None = None,
        algorithm: str = "sha256",
    ) -> None:
        self.digest = digest
        """The expected ``algorithm:hex``; ``None`` when only the size can be checked."""
        self.size = size
        self.name = name or digest or "download"
        self.have = have
        self._algorithm = digest.partition(":")[0] if digest else algorithm
        self._hasher = hasher if hasher is not None else hashlib.new(self._algorithm)
        self._sink = sink
        self._progress = progress
        self._key = key or digest or self.name

    def restart(self) -> None:
        """Forget what was taken (the caller truncates the sink)."""
        self.have = 0
        self._hasher = hashlib.new(self._algorithm)

    def write_all(self, chunks: Iterable[bytes], cancel: Cancel | None = None) -> None:
        """Write and hash every chunk; more bytes than :attr:`size` raise DigestMismatch.

        ``cancel`` is checked before each chunk is written.
        """
        write, update, advance = self._sink.write, self._hasher.update, self._progress.advance
        key, size = self._key, self.size
        have = self.have
        cancelled = cancel.is_set if cancel is not None else None
        try:
            for chunk in chunks:
                if cancelled is not None and cancelled():
                    raise Cancelled("the download was cancelled.")
                length = len(chunk)
                if have + length > size:
                    raise DigestMismatch(
                        f"{self.name}: the registry sent more than the {size} bytes "
                        "its descriptor announces.",
                    )
                write(chunk)
                update(chunk)
                have += length
                advance(key, length)
        finally:
            self.have = have

    @property
    def actual(self) -> str:
        """The digest of the bytes taken so far, ``algorithm:hex``."""
        return f"{self._algorithm}:{self._hasher.hexdigest()}"

    def verify(self) -> None:
        """Raise DigestMismatch unless the bytes taken have the expected digest (if any)."""
        if self.digest is None:
            return
        actual = self.actual
        if actual != self.digest:
            raise DigestMismatch(
                f"{self.name}: the downloaded content has digest {actual}, expected "
                f"{self.digest}; it was discarded.",
                hint="The registry or a proxy served corrupt data; try again.",
            )


def _hash_prefix(handle: IO[bytes], algorithm: str, length: int) -> hashlib._Hash:
    hasher = hashlib.new(algorithm)
    handle.seek(0)
    remaining = length
    while remaining:
        block = handle.read(min(_HASH_BLOCK, remaining))
        if not block:
            break
        hasher.update(block)
        remaining -= len(block)
    return hasher


@contextmanager
def locked_partial(path: Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading and appending, holding an exclusive lock on it.

    An empty partial file is removed on the way out, so a failed download leaves nothing that
    looks like progress.
    """
    with atomic.reporting_disk_full(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    handle = os.fdopen(fd, "r+b")
    try:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield handle
    finally:
        try:
            if path.exists() and os.path.getsize(path) == 0:
                path.unlink()
        finally:
            handle.close()

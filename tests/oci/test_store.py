"""The content-addressed store: verified writes, atomic renames, resumed downloads."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from pyops import atomic
from pyops.errors import DigestMismatch, DiskFull, NetworkError
from pyops.oci import store as store_module
from pyops.oci.store import BlobWriter, Store

BLOB = os.urandom(300_000)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class Stream:
    def __init__(self, data: bytes, offset: int, cut_at: int | None) -> None:
        self._data = data
        self._offset = offset
        self._cut_at = cut_at
        self.closed = False

    @property
    def offset(self) -> int:
        return self._offset

    def chunks(self) -> Iterator[bytes]:
        position = self._offset
        while position < len(self._data):
            if self._cut_at is not None and position >= self._cut_at:
                raise NetworkError("connection reset (test)")
            end = min(position + 10_000, len(self._data))
            if self._cut_at is not None:
                end = min(end, max(self._cut_at, position + 1))
            yield self._data[position:end]
            position = end

    def close(self) -> None:
        self.closed = True


class Opener:
    """A fake blob source; ``cuts`` lists where successive downloads break."""

    def __init__(
        self, data: bytes = BLOB, cuts: list[int] | None = None, honour_range: bool = True
    ) -> None:
        self.data = data
        self.cuts = list(cuts or [])
        self.honour_range = honour_range
        self.offsets: list[int] = []
        self.streams: list[Stream] = []

    def __call__(self, offset: int) -> Stream:
        self.offsets.append(offset)
        cut = self.cuts.pop(0) if self.cuts else None
        stream = Stream(self.data, offset if self.honour_range else 0, cut)
        self.streams.append(stream)
        return stream


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None]] = []

    def start(self, key: str, label: str, total: int | None) -> None:
        self.events.append(("start", key, total))

    def advance(self, key: str, amount: int) -> None:
        self.events.append(("advance", key, amount))

    def finish(self, key: str) -> None:
        self.events.append(("finish", key, None))

    def advanced(self) -> int:
        return sum(n or 0 for kind, _, n in self.events if kind == "advance")


def _leftovers(store: Store) -> list[str]:
    tmp = store.root / "blobs" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def test_default_store_honours_pyops_home(tmp_path: Path) -> None:
    assert Store.default({"PYOPS_HOME": str(tmp_path)}).root == tmp_path
    assert Store.default({}).root == Path.home() / ".pyops"


def test_download_then_cache_hit(tmp_path: Path) -> None:
    store = Store(tmp_path)
    opener = Opener()
    progress = Recorder()
    path = store.ensure_blob(DIGEST, len(BLOB), opener, label="blob", progress=progress)
    assert path == tmp_path / "blobs" / "sha256" / DIGEST[7:]
    assert path.read_bytes() == BLOB
    assert progress.events[0] == ("start", DIGEST, len(BLOB))
    assert progress.events[-1] == ("finish", DIGEST, None)
    assert progress.advanced() == len(BLOB)
    assert all(s.closed for s in opener.streams)
    again = Opener()
    assert store.ensure_blob(DIGEST, len(BLOB), again) == path
    assert again.offsets == []
    assert _leftovers(store) == []


def test_cut_download_resumes_with_range_in_the_same_call(tmp_path: Path) -> None:
    store = Store(tmp_path)
    opener = Opener(cuts=[120_000])
    progress = Recorder()
    path = store.ensure_blob(DIGEST, len(BLOB), opener, progress=progress)
    assert opener.offsets == [0, 120_000]
    assert path.read_bytes() == BLOB
    assert progress.advanced() == len(BLOB)


def test_cut_download_resumes_in_a_later_call(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(NetworkError):
        store.ensure_blob(DIGEST, len(BLOB), Opener(cuts=[150_000]), attempts=1)
    assert not store.has_blob(DIGEST)
    assert len(_leftovers(store)) == 1  # the partial file, kept for resuming
    opener = Opener()
    assert store.ensure_blob(DIGEST, len(BLOB), opener).read_bytes() == BLOB
    assert opener.offsets == [150_000]
    assert _leftovers(store) == []


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path) -> None:
    store = Store(tmp_path)
    opener = Opener(cuts=[100_000], honour_range=False)
    progress = Recorder()
    assert store.ensure_blob(DIGEST, len(BLOB), opener, progress=progress).read_bytes() == BLOB
    assert opener.offsets == [0, 100_000]
    assert progress.advanced() == len(BLOB)


def test_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    corrupt = bytearray(BLOB)
    corrupt[1000] ^= 1
    with pytest.raises(DigestMismatch, match="the-label.*expected " + DIGEST):
        store.ensure_blob(DIGEST, len(BLOB), Opener(bytes(corrupt)), label="the-label")
    assert not store.has_blob(DIGEST)
    assert _leftovers(store) == []


def test_resumed_partial_with_bad_prefix_is_discarded(tmp_path: Path) -> None:
    store = Store(tmp_path)
    corrupt = b"X" * 1000 + BLOB[1000:]
    with pytest.raises(NetworkError):
        store.ensure_blob(DIGEST, len(BLOB), Opener(corrupt, cuts=[5000]), attempts=1)
    with pytest.raises(DigestMismatch):
        store.ensure_blob(DIGEST, len(BLOB), Opener())
    assert _leftovers(store) == [] and not store.has_blob(DIGEST)
    assert store.ensure_blob(DIGEST, len(BLOB), Opener()).read_bytes() == BLOB


def test_too_many_bytes_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(DigestMismatch, match="more than"):
        store.ensure_blob(DIGEST, len(BLOB) - 1, Opener())
    assert _leftovers(store) == []


def test_short_body_is_a_network_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(NetworkError, match="ended after"):
        store.ensure_blob(DIGEST, len(BLOB), Opener(BLOB[:1000]))
    assert not store.has_blob(DIGEST)


def test_wrong_size_in_cache_is_downloaded_again(tmp_path: Path) -> None:
    store = Store(tmp_path)
    path = store.blob_path(DIGEST)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stale")
    opener = Opener()
    assert store.ensure_blob(DIGEST, len(BLOB), opener).read_bytes() == BLOB
    assert opener.offsets == [0]


def test_put_blob_checks_digest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = store.put_blob(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert store.read_blob(digest) == b"hello"
    with pytest.raises(DigestMismatch):
        store.put_blob(b"other", digest)


def test_concurrent_fetches_of_one_blob_download_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    calls: list[int] = []

    def slow(offset: int) -> Stream:
        calls.append(offset)
        time.sleep(0.2)
        return Stream(BLOB, offset, None)

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.ensure_blob(DIGEST, len(BLOB), slow)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert calls == [0]


class IoCounts:
    """What a download did with its files: paths opened, bytes read back, bytes hashed."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.opened: list[str] = []
        self.read = 0
        self.hashed = 0

    def note_open(self, path: Any) -> None:
        if isinstance(path, str | os.PathLike) and os.fspath(path).startswith(self.root):
            self.opened.append(os.fspath(path))


class CountingHandle:
    """The partial file's handle, counting the bytes read through it."""

    def __init__(self, handle: IO[bytes], counts: IoCounts) -> None:
        self._handle = handle
        self._counts = counts

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._counts.read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = self._handle.readinto(buffer)  # type: ignore[attr-defined]
        self._counts.read += n or 0
        return int(n or 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class CountingHash:
    def __init__(self, hasher: Any, counts: IoCounts) -> None:
        self._hasher = hasher
        self._counts = counts

    def update(self, data: bytes) -> None:
        self._counts.hashed += len(data)
        self._hasher.update(data)

    def hexdigest(self) -> str:
        return str(self._hasher.hexdigest())


def _count_io(monkeypatch: pytest.MonkeyPatch, root: Path) -> IoCounts:
    """Watch every open of a file under ``root``, reads of the partial file, and hashing."""
    counts = IoCounts(root)
    real_locked, real_new = store_module.locked_partial, hashlib.new
    real_os_open, real_io_open = os.open, io.open

    @contextmanager
    def locked(path: Path) -> Iterator[Any]:
        with real_locked(path) as handle:
            yield CountingHandle(handle, counts)

    def os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        counts.note_open(path)
        return real_os_open(path, *args, **kwargs)

    def io_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        counts.note_open(path)
        return real_io_open(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "locked_partial", locked)
    monkeypatch.setattr(
        hashlib, "new", lambda name, *a, **k: CountingHash(real_new(name, *a, **k), counts)
    )
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    return counts


def test_download_hashes_each_byte_once_and_never_reads_the_blob_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    counts = _count_io(monkeypatch, tmp_path)
    path = store.ensure_blob(DIGEST, len(BLOB), Opener())
    assert counts.hashed == len(BLOB)  # every byte hashed once, as it was written
    assert counts.read == 0  # nothing read back to be checked
    assert counts.opened == [str(store._partial_path(DIGEST))]  # the stored file never opened
    monkeypatch.undo()
    assert path.read_bytes() == BLOB


def test_resumed_download_reads_back_only_the_prefix_it_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    with pytest.raises(NetworkError):
        store.ensure_blob(DIGEST, len(BLOB), Opener(cuts=[150_000]), attempts=1)
    counts = _count_io(monkeypatch, tmp_path)
    store.ensure_blob(DIGEST, len(BLOB), Opener())
    # hashlib state cannot be saved, so the prefix on disk is hashed again, once.
    assert counts.read == 150_000
    assert counts.hashed == len(BLOB)
    assert counts.opened == [str(store._partial_path(DIGEST))]


def test_blob_writer_writes_hashes_and_verifies_in_one_pass() -> None:
    sink = io.BytesIO()
    writer = BlobWriter(DIGEST, len(BLOB), sink)
    chunks = [BLOB[i : i + 65_536] for i in range(0, len(BLOB), 65_536)]
    writer.write_all(chunks[:2])
    assert writer.have == 2 * 65_536
    writer.write_all(chunks[2:])
    assert writer.have == len(BLOB) and sink.getvalue() == BLOB
    assert writer.actual == DIGEST
    writer.verify()
    with pytest.raises(DigestMismatch, match="more than"):
        writer.write_all([b"x"])
    assert writer.have == len(BLOB)
    wrong = BlobWriter("sha256:" + "0" * 64, len(BLOB), io.BytesIO(), name="the-label")
    wrong.write_all([BLOB])
    with pytest.raises(DigestMismatch, match="the-label.*expected sha256:0000"):
        wrong.verify()


class FullDisk:
    """The partial file's handle on a disk that fills up after ``room`` bytes."""

    def __init__(self, handle: IO[bytes], room: int) -> None:
        self._handle = handle
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            # As a real full disk may: part of the chunk lands, then ENOSPC.
            self._handle.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def test_full_disk_leaves_no_partial_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    real_locked = store_module.locked_partial

    @contextmanager
    def locked(path: Path) -> Iterator[Any]:
        with real_locked(path) as handle:
            yield FullDisk(handle, 123_456)

    monkeypatch.setattr(store_module, "locked_partial", locked)
    with pytest.raises(DiskFull, match=r"disk full at .*blobs.tmp, needs [0-9,]+ (more )?bytes"):
        store.ensure_blob(DIGEST, len(BLOB), Opener())
    # The torn partial file is gone, so it cannot make the next pull fail.
    assert _leftovers(store) == []
    assert not store.has_blob(DIGEST)
    monkeypatch.setattr(store_module, "locked_partial", real_locked)
    opener = Opener()
    assert store.ensure_blob(DIGEST, len(BLOB), opener).read_bytes() == BLOB
    assert opener.offsets == [0]


def test_full_disk_in_put_blob_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    real_open = builtins.open

    def full(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, mode, *args, **kwargs)
        if "x" in mode or "w" in mode:
            return FullDisk(handle, 10)
        return handle

    monkeypatch.setattr(atomic, "open", full, raising=False)
    with pytest.raises(DiskFull, match="disk full at"):
        store.put_blob(b"x" * 1000)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_cut_download_keeps_its_resume_point_and_orphans_are_swept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(NetworkError):
        store.ensure_blob(DIGEST, len(BLOB), Opener(cuts=[100_000]), attempts=1)
    assert _leftovers(store) == [DIGEST.replace(":", "-") + ".partial"]
    # A temporary of a process that died is swept when a process first writes there.
    orphan = tmp_path / "blobs" / "sha256" / ".x.pyops-999999999-0123abcd.tmp"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"torn")
    legacy = tmp_path / "blobs" / "tmp" / f"sha256-{'ab' * 32}.999999999.new"
    legacy.write_bytes(b"")
    store_module._swept.clear()
    opener = Opener()
    assert store.ensure_blob(DIGEST, len(BLOB), opener).read_bytes() == BLOB
    assert opener.offsets == [100_000]
    assert not orphan.exists()
    assert not legacy.exists()


def test_cancel_stops_the_writer_within_a_chunk() -> None:
    cancel = store_module.Cancel()
    seen: list[int] = []

    def chunks() -> Iterator[bytes]:
        for n in range(100):
            seen.append(n)
            if n == 3:
                cancel.cancel()
            yield b"x" * 10

    writer = BlobWriter(DIGEST, 1000, io.BytesIO())
    with pytest.raises(store_module.Cancelled):
        writer.write_all(chunks(), cancel)
    assert seen == [0, 1, 2, 3]
    assert writer.have == 30


def test_a_store_rooted_at_a_string_path(tmp_path: Path) -> None:
    store = Store(str(tmp_path))  # type: ignore[arg-type]  # as untyped callers write it
    digest = store.put_blob(b"hello")
    assert store.root == tmp_path
    assert store.read_blob(digest) == b"hello"


# -- a blob read while it arrives -------------------------------------------------------------


class GatedOpener(Opener):
    """An :class:`Opener` whose stream waits, after ``gate_at`` bytes, for ``gate``."""

    def __init__(self, gate_at: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate_at = gate_at
        self.gate = threading.Event()

    def __call__(self, offset: int) -> Stream:
        stream = super().__call__(offset)
        chunks = stream.chunks

        def gated() -> Iterator[bytes]:
            sent = stream.offset
            for chunk in chunks():
                if sent >= self.gate_at:
                    assert self.gate.wait(10), "the reader never let the download on"
                sent += len(chunk)
                yield chunk

        stream.chunks = gated  # type: ignore[method-assign]
        return stream


def _download(
    store: Store, opener: Opener, arriving: store_module.ArrivingBlob
) -> threading.Thread:
    def run() -> None:
        try:
            store.ensure_blob(DIGEST, len(BLOB), opener, arriving=arriving)
        except Exception:
            pass  # the reader sees it

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_arriving_blob_is_read_before_its_download_ends(tmp_path: Path) -> None:
    store = Store(tmp_path)
    opener = GatedOpener(gate_at=100_000)
    arriving = store_module.ArrivingBlob(len(BLOB))
    thread = _download(store, opener, arriving)
    with arriving.open() as reader:
        first = b""
        while len(first) < 100_000:
            first += reader.read(100_000 - len(first))
        assert first == BLOB[:100_000]
        assert not store.has_blob(DIGEST)  # the download waits at the gate
        opener.gate.set()
        rest = b"".join(iter(lambda: reader.read(65_536), b""))
    thread.join()
    assert first + rest == BLOB
    assert store.has_blob(DIGEST)  # the end is seen only once the blob is in place
    with arriving.open() as again:  # and read again from the start
        assert b"".join(iter(lambda: again.read(1 << 20), b"")) == BLOB


def test_an_arriving_blob_whose_digest_is_wrong_raises_in_the_reader(tmp_path: Path) -> None:
    store = Store(tmp_path)
    bad = bytearray(BLOB)
    bad[-1] ^= 1
    arriving = store_module.ArrivingBlob(len(BLOB))
    thread = _download(store, Opener(data=bytes(bad)), arriving)
    with arriving.open() as reader, pytest.raises(DigestMismatch):
        while reader.read(65_536):
            pass
    thread.join()
    assert not store.has_blob(DIGEST)


def test_an_arriving_blob_restarted_by_the_server_reads_on(tmp_path: Path) -> None:
    """A server that ignores Range sends the blob again from its start: the file is
    rewritten, and the reader goes on where it was."""
    store = Store(tmp_path)
    opener = Opener(cuts=[150_000], honour_range=False)
    arriving = store_module.ArrivingBlob(len(BLOB))
    thread = _download(store, opener, arriving)
    with arriving.open() as reader:
        got = b"".join(iter(lambda: reader.read(30_000), b""))
    thread.join()
    assert got == BLOB
    assert opener.offsets == [0, 150_000]

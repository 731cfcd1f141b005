"""The content-addressed store: verified writes, atomic renames, resumed downloads."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyops.errors import DigestMismatch, NetworkError
from pyops.store import Store

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

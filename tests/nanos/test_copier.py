"""Copying file contents into an image: runs, the worker process, and how jobs reach it
while they are made (pyops/nanos/copier.py and pyops/nanos/copyfile.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pyops.errors import HostFileError
from pyops.nanos.copier import WORKER_MIN_FILES, DataCopy
from pyops.nanos.copyfile import (
    JOB,
    NOTE,
    RUN_BYTES,
    RUN_FILES,
    SECTOR,
    SMALL_FILE,
    CopyFailed,
    copy_run,
    decode_jobs,
    encode_job,
    iter_runs,
    work,
)
from pyops.nanos.tree import Contents, HostFile, Source
from pyops.progress import NULL_PROGRESS, Progress


def padded(n: int) -> int:
    return -(-n // SECTOR) * SECTOR


_PATTERN = bytes(range(251))


def make_files(folder: Path, sizes: list[int]) -> list[HostFile]:
    folder.mkdir(exist_ok=True)
    out = []
    for i, size in enumerate(sizes):
        path = folder / f"f{i:04d}"
        # distinct bytes per file, so a file copied to the wrong place is seen
        shift = i % 251
        path.write_bytes((_PATTERN * (size // 251 + 2))[shift : shift + size])
        out.append(HostFile(str(path), size))
    return out


def packed(files: list[HostFile], start: int = 0) -> list[int]:
    offsets, pos = [], start
    for f in files:
        offsets.append(pos)
        pos += padded(f.size)
    return offsets


def copying(
    fd: int,
    offsets: list[int],
    sources: list[HostFile] | list[Source],
    progress: Progress = NULL_PROGRESS,
    *,
    worker: bool | None = None,
) -> DataCopy:
    """A copy given every source, not finished."""
    copy = DataCopy(fd, progress, worker=worker)
    for offset, source in zip(offsets, sources, strict=True):
        copy.add(offset, source)
    return copy


def expected_image(files: list[HostFile], offsets: list[int]) -> bytes:
    end = max(o + padded(f.size) for f, o in zip(files, offsets, strict=True))
    image = bytearray(end)
    for f, o in zip(files, offsets, strict=True):
        image[o : o + f.size] = Path(f.path).read_bytes()
    return bytes(image)


def test_runs_group_small_neighbours_and_isolate_large_files() -> None:
    sizes = [10, 600, 0, SMALL_FILE + 1, 5, 7]
    offsets = [0, 512, 1536, 1536, 1536 + padded(SMALL_FILE + 1), 0]  # the last is not adjacent
    assert list(iter_runs(offsets, sizes)) == [(0, 3), (3, 4), (4, 5), (5, 6)]
    many = [1] * (RUN_FILES + 3)
    offsets = [i * SECTOR for i in range(len(many))]
    assert list(iter_runs(offsets, many)) == [(0, RUN_FILES), (RUN_FILES, len(many))]
    fill = [60 * 1024] * 20  # a run ends before it passes RUN_BYTES
    per_run = RUN_BYTES // (60 * 1024)
    offsets = [i * 60 * 1024 for i in range(20)]
    assert list(iter_runs(offsets, fill)) == [(0, per_run), (per_run, 20)]
    assert list(iter_runs([], [])) == []


@pytest.mark.parametrize("worker", [False, True])
def test_every_file_lands_at_its_offset(tmp_path: Path, worker: bool) -> None:
    sizes = [0, 1, 511, 512, 513, 4096, SMALL_FILE, SMALL_FILE + 1] * 70 + [3 * 1024 * 1024 + 7]
    files = make_files(tmp_path / "src", sizes)
    offsets = packed(files, start=4096)
    sources: list[Source] = list(files)
    sources.append(Contents(b"bytes given in memory"))
    offsets.append(offsets[-1] + padded(files[-1].size))
    out = tmp_path / "image"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copy = copying(fd, offsets, sources, worker=worker)
        assert (copy._proc is not None) == worker
        copy.finish()
    finally:
        os.close(fd)
    data = out.read_bytes()
    want = expected_image(files, offsets[:-1])
    assert data[: len(want)] == want
    assert data[offsets[-1] :] == b"bytes given in memory"


def test_the_worker_copies_jobs_as_they_are_published(tmp_path: Path) -> None:
    """The job file grows while the worker copies; the notes say how much of it is whole,
    the end of the notes is the end of the jobs, and the progress pipe adds up to it all."""
    files = make_files(tmp_path / "src", [SMALL_FILE + 1, 10, 20, 3 * RUN_BYTES, 30])
    offsets = packed(files)
    records = [encode_job(o, f.size, f.path) for o, f in zip(offsets, files, strict=True)]
    jobs_path = tmp_path / "jobs"
    jobs_path.write_bytes(b"")
    notes_r, notes_w = os.pipe()
    told_r, told_w = os.pipe()
    image = tmp_path / "image"
    fd = os.open(image, os.O_RDWR | os.O_CREAT, 0o644)
    jobs = os.open(jobs_path, os.O_RDWR)
    try:
        worker = threading.Thread(target=work, args=(fd, jobs, notes_r, told_w))
        worker.start()
        published = 0
        for batch in (records[:1], records[1:4], records[4:]):
            data = b"".join(batch)
            os.pwrite(jobs, data, published)
            published += len(data)
            os.write(notes_w, published.to_bytes(NOTE, "little"))
        os.close(notes_w)
        worker.join()
        os.close(told_w)
        told = b""
        while chunk := os.read(told_r, 4096):
            told += chunk
    finally:
        for f in (fd, jobs, notes_r, told_r):
            os.close(f)
    assert image.read_bytes()[: sum(padded(f.size) for f in files)] == expected_image(
        files, offsets
    )
    counts = [int.from_bytes(told[i : i + NOTE], "little") for i in range(0, len(told), NOTE)]
    assert sum(counts) == sum(f.size for f in files)


def test_job_records_round_trip_with_odd_names(tmp_path: Path) -> None:
    names = ["plain", "with space", "ünïcødé", os.fsdecode(b"bad-\xff-byte")]
    paths = [str(tmp_path / n) for n in names]
    data = b"".join(encode_job(i * 512, i + 1, p) for i, p in enumerate(paths))
    assert decode_jobs(data) == ([0, 512, 1024, 1536], [1, 2, 3, 4], paths, len(data))
    # a record cut short is left for later, whole
    cut = data[:-3]
    offsets, _sizes, got, used = decode_jobs(cut)
    assert got == paths[:3] and used == len(data) - JOB.size - len(os.fsencode(paths[3]))


def test_jobs_added_while_the_worker_copies_all_land(tmp_path: Path) -> None:
    """Jobs of every kind, added one by one while the worker already copies: every byte
    arrives, and the worker starts by itself once there are enough files."""
    sizes = [SMALL_FILE + 1 + i for i in range(300)] + [100] * 600
    files = make_files(tmp_path / "src", sizes)
    offsets = packed(files)
    want = expected_image(files, offsets)
    out = tmp_path / "image"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copy = DataCopy(fd)
        for i, (offset, f) in enumerate(zip(offsets, files, strict=True)):
            copy.add(offset, f)
            assert (copy._proc is not None) == (i + 1 >= WORKER_MIN_FILES)
        copy.finish()
    finally:
        os.close(fd)
    assert out.read_bytes()[: len(want)] == want


def test_a_file_that_shrank_or_vanished_is_named(tmp_path: Path) -> None:
    files = make_files(tmp_path / "src", [100, 200])
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(CopyFailed, match="f0001: the file shrank"):
            copy_run([f.path for f in files], [100, 300], fd, 0)
        os.unlink(files[0].path)
        with pytest.raises(CopyFailed, match="f0000: no such file"):
            copy_run([f.path for f in files], [100, 200], fd, 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize("missing", [0, 699])
def test_worker_error_reaches_the_caller(tmp_path: Path, missing: int) -> None:
    """Wherever the worker meets the missing file, the caller gets its one-line error."""
    files = make_files(tmp_path / "src", [10] * 700)
    os.unlink(files[missing].path)
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copy = copying(fd, packed(files), files, worker=True)
        with pytest.raises(HostFileError, match=f"f{missing:04d}: no such file"):
            copy.finish()
    finally:
        os.close(fd)


class Tally:
    """A progress sink that adds up what it is told."""

    def __init__(self) -> None:
        self.total = 0

    def start(self, key: str, label: str, total: int | None) -> None:
        pass

    def advance(self, key: str, amount: int) -> None:
        self.total += amount

    def finish(self, key: str) -> None:
        pass


@pytest.mark.parametrize("worker", [False, True])
def test_progress_counts_every_byte_once(tmp_path: Path, worker: bool) -> None:
    files = make_files(tmp_path / "src", [100, SMALL_FILE + 5, 3000] * 200)
    tally = Tally()
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copying(fd, packed(files), files, tally, worker=worker).finish()
    finally:
        os.close(fd)
    assert tally.total == sum(f.size for f in files)


@pytest.mark.parametrize("worker", [False, True])
@pytest.mark.parametrize("sizes", [[10] * 700, [3 * 1024 * 1024]])
def test_a_full_output_is_a_full_disk_not_a_host_file_error(
    tmp_path: Path, worker: bool, sizes: list[int]
) -> None:
    """ENOSPC from either process is the output's: the writer reports it as a full disk."""
    import errno

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    files = make_files(tmp_path / "src", sizes)
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        copy = copying(fd, packed(files), files, worker=worker)
        with pytest.raises(OSError) as caught:
            copy.finish()
        assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _copy_image(tmp_path: Path, name: str, files: list[HostFile], offsets: list[int]) -> bytes:
    out = tmp_path / name
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copying(fd, offsets, files, worker=False).finish()
    finally:
        os.close(fd)
    return out.read_bytes()


def test_without_copy_file_range_nor_pwritev_the_image_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS has neither: large files are copied in pieces, runs joined and written once."""
    import pyops.nanos.copyfile as copyfile

    sizes = [0, 1, 513, 4096, SMALL_FILE, SMALL_FILE + 1, 9 * 1024 * 1024 + 3] * 3
    files = make_files(tmp_path / "src", sizes)
    offsets = packed(files, start=4096)
    calls: list[int] = []
    real_copy_file_range = copyfile._copy_file_range
    if real_copy_file_range is not None:

        def counting(*args: int) -> int:
            calls.append(args[2])
            return real_copy_file_range(*args)

        monkeypatch.setattr(copyfile, "_copy_file_range", counting)
    normal = _copy_image(tmp_path, "normal", files, offsets)
    assert calls or real_copy_file_range is None  # the large files went through it

    for name in ("copy_file_range", "pwritev"):
        monkeypatch.delattr(os, name, raising=False)
        monkeypatch.setattr(copyfile, f"_{name}", getattr(os, name, None))
    preads: list[int] = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, pos: preads.append(n) or real_pread(fd, n, pos))
    calls.clear()
    fallback = _copy_image(tmp_path, "fallback", files, offsets)
    assert not calls and preads  # copied through this process
    assert fallback == normal
    want = expected_image(files, offsets)  # its last sector padded, which no run writes
    assert normal == want[: len(normal)] and not want[len(normal) :].strip(b"\0")

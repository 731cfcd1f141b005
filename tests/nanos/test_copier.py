"""Copying file contents into an image: runs, the worker process, and how the two processes
share the work (pyops/copier.py and pyops/copyfile.py)."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from pyops.errors import HostFileError
from pyops.nanos.copier import DataCopy
from pyops.nanos.copyfile import (
    RUN_BYTES,
    RUN_FILES,
    SECTOR,
    SMALL_FILE,
    CopyFailed,
    JobTable,
    copy_run,
    iter_runs,
    work,
)
from pyops.nanos.tree import Contents, HostFile, Source


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
        copy = DataCopy(fd, offsets, sources, worker=worker)
        assert (copy._proc is not None) == worker
        copy.finish()
    finally:
        os.close(fd)
    data = out.read_bytes()
    want = expected_image(files, offsets[:-1])
    assert data[: len(want)] == want
    assert data[offsets[-1] :] == b"bytes given in memory"


def table_for(tmp_path: Path, count: int) -> tuple[JobTable, list[HostFile], list[int]]:
    files = make_files(tmp_path / "src", [SMALL_FILE + 1] * count)  # one file per run
    offsets = packed(files)
    jobs = JobTable(offsets, [f.size for f in files], [f.path for f in files])
    assert len(list(jobs.runs())) == count
    return jobs, files, offsets


def copied_runs(image: Path, files: list[HostFile], offsets: list[int]) -> list[int]:
    data = image.read_bytes()
    done = []
    for i, (f, o) in enumerate(zip(files, offsets, strict=True)):
        if data[o : o + f.size] == Path(f.path).read_bytes():
            done.append(i)
    return done


@pytest.mark.parametrize(
    ("taken_from", "copied"),
    [(None, [0, 1, 2, 3, 4, 5]), (3, [0, 1, 2, 3]), (0, [0])],
)
def test_worker_stops_at_the_first_run_the_other_process_took(
    tmp_path: Path, taken_from: int | None, copied: list[int]
) -> None:
    """The worker copies every run it takes, up to and including the first one the other
    process has taken too (the other process has copied everything above it)."""
    jobs, files, offsets = table_for(tmp_path, 6)
    mine, theirs = jobs.flags()
    encoded = bytearray(jobs.encode())
    if taken_from is not None:
        for run in range(taken_from, 6):
            encoded[theirs + run] = 1
    (tmp_path / "table").write_bytes(encoded)
    image = tmp_path / "image"
    fd = os.open(image, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with open(tmp_path / "table", "r+b") as f, mmap.mmap(f.fileno(), 0) as table:
            work(fd, table)
            assert [table[mine + run] for run in range(6)] == [
                int(run in copied) for run in range(6)
            ]
    finally:
        os.close(fd)
    assert copied_runs(image, files, offsets) == copied


@pytest.mark.parametrize(("worker_took", "copied"), [(0, [0, 1, 2, 3, 4]), (3, [3, 4]), (5, [])])
def test_main_process_copies_down_to_the_workers_share(
    tmp_path: Path, worker_took: int, copied: list[int]
) -> None:
    """Coming down from the last run, this process stops at the first run the worker took
    (the worker copies it, and everything below)."""
    jobs, files, offsets = table_for(tmp_path, 5)
    mine, _theirs = jobs.flags()
    image = tmp_path / "image"
    fd = os.open(image, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copy = DataCopy(fd, [], [], worker=False)
        copy._jobs = jobs
        with mmap.mmap(-1, len(jobs.encode())) as table:
            table[:] = jobs.encode()
            for run in range(worker_took):
                table[mine + run] = 1
            copy._table = table
            copy._copy_down()
            copy._table = None
    finally:
        os.close(fd)
    assert copied_runs(image, files, offsets) == copied


def test_job_table_round_trip_with_odd_names(tmp_path: Path) -> None:
    names = ["plain", "with space", "ünïcødé", os.fsdecode(b"bad-\xff-byte")]
    jobs = JobTable([0, 512, 1024, 1536], [1, 2, 3, 4], [str(tmp_path / n) for n in names])
    with mmap.mmap(-1, len(jobs.encode())) as table:
        table[:] = jobs.encode()
        back = JobTable.decode(table)
    assert (back.offsets, back.sizes, back.paths) == (jobs.offsets, jobs.sizes, jobs.paths)


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
    """Whichever process meets the missing file, the caller gets its one-line error."""
    files = make_files(tmp_path / "src", [10] * 700)
    os.unlink(files[missing].path)
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copy = DataCopy(fd, packed(files), files, worker=True)
        with pytest.raises(HostFileError, match=f"f{missing:04d}: no such file"):
            copy.finish()
    finally:
        os.close(fd)


def test_both_processes_racing_leave_no_run_out(tmp_path: Path) -> None:
    """Many runs (more than 256, so any claim written byte by byte could be read torn), the
    worker and this process meeting somewhere in the middle: every byte arrives."""
    sizes = [SMALL_FILE + 1 + i for i in range(300)] + [100] * 600
    files = make_files(tmp_path / "src", sizes)
    offsets = packed(files)
    want = expected_image(files, offsets)
    for attempt in range(3):
        out = tmp_path / f"image{attempt}"
        fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            DataCopy(fd, offsets, files, worker=True).finish()
        finally:
            os.close(fd)
        assert out.read_bytes()[: len(want)] == want


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
        DataCopy(fd, packed(files), files, tally, worker=worker).finish()
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
        copy = DataCopy(fd, packed(files), files, worker=worker)
        with pytest.raises(OSError) as caught:
            copy.finish()
        assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _copy_image(tmp_path: Path, name: str, files: list[HostFile], offsets: list[int]) -> bytes:
    out = tmp_path / name
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        DataCopy(fd, offsets, list(files), worker=False).finish()
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

"""Copying host files into an image file, and the copy worker process.

Large files are copied with ``os.copy_file_range`` (inside the kernel, Linux), else in
8 MiB pieces.  Small files placed back to back are read and written as one run, sector
padding included, so that a run of hundreds of them costs one write instead of one copy
each: most files of a program's tree are a few kilobytes.

This module uses the standard library only: the worker runs it as a script with
``python -I -S``, which starts in a fraction of the time an interpreter with site-packages
and pyops takes.  :mod:`pyops.copier` explains how the worker shares the work.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
import sys
from array import array
from collections.abc import Callable, Sequence

CHUNK = 8 * 1024 * 1024
SECTOR = 512
SMALL_FILE = 64 * 1024  # at most this: copied as part of a run
RUN_BYTES = 1024 * 1024  # a run ends after this many bytes ...
RUN_FILES = 256  # ... or this many files

# The job table: a header, then columns of unsigned 64-bit integers: n output offsets, n
# sizes and m + 1 run boundaries (run k is jobs bounds[k] to bounds[k + 1]), then the n
# paths separated by NUL bytes.
HEADER = struct.Struct("<QQQQ")  # claimed_up, claimed_down (runs), jobs, runs
UP, DOWN = 0, 8

_ZEROS = memoryview(bytes(SECTOR))


class CopyFailed(Exception):
    """A host file could not be copied; ``message`` and ``hint`` are for the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CopyFailed(f"{path}: no such file (it was removed during the build)") from None
    except OSError as exc:
        raise CopyFailed(f"{path}: cannot read it ({exc.strerror})") from exc


def _shrank(path: str) -> CopyFailed:
    return CopyFailed(
        f"{path}: the file shrank while the image was written",
        hint="do not change files while pyops builds an image",
    )


_copy_file_range: Callable[..., int] | None = getattr(os, "copy_file_range", None)


def copy_file(path: str, size: int, dst: int, dst_offset: int) -> None:
    """Copy the first ``size`` bytes of the host file ``path`` to ``dst`` at ``dst_offset``."""
    global _copy_file_range
    src = _open(path)
    try:
        remaining = size
        pos = 0
        while remaining:
            n = 0
            if _copy_file_range is not None:
                try:
                    n = _copy_file_range(src, dst, remaining, pos, dst_offset + pos)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise CopyFailed(f"{path}: {exc.strerror}") from exc
                    _copy_file_range = None  # not here: copy through this process
                    continue
            else:
                chunk = os.pread(src, min(remaining, CHUNK), pos)
                n = len(chunk)
                if n:
                    os.pwrite(dst, chunk, dst_offset + pos)
            if n == 0:
                raise _shrank(path)
            pos += n
            remaining -= n
    finally:
        os.close(src)


def _read_small(path: str, size: int) -> bytes:
    src = _open(path)
    try:
        data = os.read(src, size)
        while len(data) < size:
            more = os.read(src, size - len(data))
            if not more:
                raise _shrank(path)
            data += more
        return data
    finally:
        os.close(src)


_pwritev: Callable[[int, Sequence[bytes | memoryview], int], int] | None = getattr(
    os, "pwritev", None
)


def copy_run(paths: Sequence[str], sizes: Sequence[int], dst: int, dst_offset: int) -> None:
    """Copy one file, or a run of small files placed back to back from ``dst_offset``."""
    if len(paths) == 1 and sizes[0] > SMALL_FILE:
        copy_file(paths[0], sizes[0], dst, dst_offset)
        return
    pieces: list[bytes | memoryview] = []
    for path, size in zip(paths, sizes, strict=True):
        pieces.append(_read_small(path, size))
        if size % SECTOR:
            pieces.append(_ZEROS[size % SECTOR :])
    if _pwritev is not None:
        expected = sum(map(len, pieces))
        if _pwritev(dst, pieces, dst_offset) == expected:
            return
    os.pwrite(dst, b"".join(pieces), dst_offset)


def plan_runs(offsets: Sequence[int], sizes: Sequence[int]) -> list[int]:
    """Cut jobs into runs: a large file alone, else small files placed back to back.

    Returns the run boundaries, ``[0, ..., len(offsets)]``.
    """
    bounds = [0]
    run_end = -1  # where the open run's next file would have to start
    run_bytes = run_files = 0
    for i, (offset, size) in enumerate(zip(offsets, sizes, strict=True)):
        padded = -(-size // SECTOR) * SECTOR
        small = size <= SMALL_FILE
        if (
            not small
            or offset != run_end
            or run_bytes + padded > RUN_BYTES
            or run_files == RUN_FILES
        ):
            if i:
                bounds.append(i)
            run_bytes = run_files = 0
        if small:
            run_end = offset + padded
            run_bytes += padded
            run_files += 1
        else:
            run_end = -1
    if offsets:
        bounds.append(len(offsets))
    return bounds


class JobTable:
    """Jobs (each file's path, size and output offset) cut into runs, and their encoding."""

    def __init__(
        self,
        offsets: Sequence[int],
        sizes: Sequence[int],
        paths: Sequence[str],
        bounds: Sequence[int] | None = None,
    ) -> None:
        self.offsets = offsets
        self.sizes = sizes
        self.paths = paths
        self.bounds = plan_runs(offsets, sizes) if bounds is None else bounds

    @classmethod
    def decode(cls, table: mmap.mmap) -> JobTable:
        """Read a table written by :meth:`encode`."""
        _up, _down, jobs, runs = HEADER.unpack_from(table, 0)
        start = HEADER.size + 8 * (2 * jobs + runs + 1)
        with memoryview(table)[HEADER.size : start] as raw, raw.cast("Q") as columns:
            numbers = columns.tolist()
        paths = table[start:].decode("utf-8", "surrogateescape").split("\0")
        return cls(numbers[:jobs], numbers[jobs : 2 * jobs], paths, numbers[2 * jobs :])

    def encode(self) -> bytes:
        """The table's bytes, with both claims at their start (nothing taken)."""
        columns = array("Q", self.offsets)
        columns.extend(self.sizes)
        columns.extend(self.bounds)
        paths = "\0".join(self.paths).encode("utf-8", "surrogateescape")
        return HEADER.pack(0, self.runs, len(self.offsets), self.runs) + columns.tobytes() + paths

    @property
    def runs(self) -> int:
        return len(self.bounds) - 1

    def copy(self, run: int, dst: int) -> int:
        """Copy run number ``run`` to ``dst``; returns the bytes it held."""
        a, b = self.bounds[run], self.bounds[run + 1]
        copy_run(self.paths[a:b], self.sizes[a:b], dst, self.offsets[a])
        return sum(self.sizes[a:b])


def work(dst: int, table: mmap.mmap) -> None:
    """Copy runs from the first one up, until the other process has copied the rest.

    Before copying run i, announce it (``claimed_up = i + 1``), then read how far down the
    other process has come: if it announced a run below i, it has copied run i.
    """
    jobs = JobTable.decode(table)
    pack, unpack = struct.pack_into, struct.unpack_from
    for i in range(jobs.runs):
        pack("<Q", table, UP, i + 1)
        if unpack("<Q", table, DOWN)[0] < i:
            break
        jobs.copy(i, dst)


def main() -> int:
    """``copyfile.py OUTPUT_FD TABLE_FD``: the worker; errors as JSON on standard output."""
    dst, table_fd = int(sys.argv[1]), int(sys.argv[2])
    with mmap.mmap(table_fd, 0) as table:
        try:
            work(dst, table)
        except CopyFailed as exc:
            sys.stdout.write(json.dumps({"error": exc.message, "hint": exc.hint}))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

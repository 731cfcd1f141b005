"""Copying host files into an image file, and the copy worker process.

Large files are copied with ``os.copy_file_range`` (inside the kernel, Linux), else in
8 MiB pieces.  Small files placed back to back are read and written as one run, sector
padding included, so that a run of hundreds of them costs one write instead of one copy
each: most files of a program's tree are a few kilobytes.

This module uses the standard library only: the worker runs it as a script with
``python -I -S``, which starts in a fraction of the time an interpreter with site-packages
and pyops takes.  :mod:`pyops.nanos.copier` explains how the worker shares the work.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence

CHUNK = 8 * 1024 * 1024
SECTOR = 512
SMALL_FILE = 64 * 1024  # at most this: copied as part of a run
RUN_BYTES = 1024 * 1024  # a run ends after this many bytes ...
RUN_FILES = 256  # ... or this many files

# The job table: the number of jobs n (an unsigned 64-bit integer), two columns of n such
# integers (output offsets, sizes), two rows of n claim flags (one byte per run: taken by
# the worker, taken by the other process), then the n paths separated by NUL bytes.  A run
# has at least one job, so n flags are enough.  A flag is one byte, written once from 0 to
# 1: the other process reads it whole (a number of several bytes could be read half old,
# half new).
HEADER = struct.Struct("<Q")

_ZEROS = memoryview(bytes(SECTOR))


class CopyFailed(Exception):
    """A host file could not be copied; ``message`` and ``hint`` are for the user."""

    def __init__(self, message: str, hint: str | None = None, errno: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.errno = errno  # of the OSError behind it: ENOSPC is the output's, not the file's


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
                        raise CopyFailed(f"{path}: {exc.strerror}", errno=exc.errno or 0) from exc
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
    try:
        if _pwritev is not None and _pwritev(dst, pieces, dst_offset) == sum(map(len, pieces)):
            return
        os.pwrite(dst, b"".join(pieces), dst_offset)
    except OSError as exc:
        raise CopyFailed(f"cannot write the image ({exc.strerror})", errno=exc.errno or 0) from exc


def iter_runs(offsets: Sequence[int], sizes: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Cut jobs into runs: a large file alone, else small files placed back to back.

    Yields each run as ``(first job, job after the last)``.  Both processes cut the same
    jobs the same way, so run numbers mean the same to both; the worker cuts as it goes.
    """
    start = 0
    run_end = -1  # where the open run's next file would have to start
    run_bytes = 0
    for i, (offset, size) in enumerate(zip(offsets, sizes, strict=True)):
        padded = -(-size // SECTOR) * SECTOR
        small = size <= SMALL_FILE
        if i and (
            not small
            or offset != run_end
            or run_bytes + padded > RUN_BYTES
            or i - start == RUN_FILES
        ):
            yield start, i
            start, run_bytes = i, 0
        if small:
            run_end = offset + padded
            run_bytes += padded
        else:
            run_end = -1
    if offsets:
        yield start, len(offsets)


class JobTable:
    """Jobs (each file's path, size and output offset), and their encoding for the worker."""

    def __init__(self, offsets: Sequence[int], sizes: Sequence[int], paths: Sequence[str]):
        self.offsets = offsets
        self.sizes = sizes
        self.paths = paths

    @classmethod
    def decode(cls, table: mmap.mmap) -> JobTable:
        """Read a table written by :meth:`encode`."""
        jobs = HEADER.unpack_from(table, 0)[0]
        start = HEADER.size + 16 * jobs
        with memoryview(table)[HEADER.size : start] as raw, raw.cast("Q") as columns:
            numbers = columns.tolist()
        paths = table[start + 2 * jobs :].decode("utf-8", "surrogateescape").split("\0")
        return cls(numbers[:jobs], numbers[jobs:], paths)

    def encode(self) -> bytes:
        """The table's bytes, with no run taken."""
        jobs = len(self.offsets)
        columns = array("Q", self.offsets)
        columns.extend(self.sizes)
        paths = "\0".join(self.paths).encode("utf-8", "surrogateescape")
        return HEADER.pack(jobs) + columns.tobytes() + bytes(2 * jobs) + paths

    def flags(self) -> tuple[int, int]:
        """Where the worker's and the other process's claim flags start in the table."""
        worker = HEADER.size + 16 * len(self.offsets)
        return worker, worker + len(self.offsets)

    def runs(self) -> Iterator[tuple[int, int]]:
        """The runs, as :func:`iter_runs` cuts them."""
        return iter_runs(self.offsets, self.sizes)

    def copy(self, start: int, end: int, dst: int) -> int:
        """Copy the run of jobs ``start`` to ``end`` (excluded) to ``dst``; the bytes it held."""
        copy_run(self.paths[start:end], self.sizes[start:end], dst, self.offsets[start])
        return sum(self.sizes[start:end])


def work(dst: int, table: mmap.mmap) -> None:
    """Copy runs from the first one up, until the other process has copied the rest.

    The worker copies every run it takes.  It takes run i (sets its flag), then looks
    whether the other process, coming down from the last run, has taken it too: if so, that
    process has copied everything above it, and run i is the last one left to copy here.
    """
    jobs = JobTable.decode(table)
    mine, theirs = jobs.flags()
    for i, (start, end) in enumerate(jobs.runs()):
        table[mine + i] = 1
        met = table[theirs + i]
        jobs.copy(start, end, dst)
        if met:
            break


def main() -> int:
    """``copyfile.py OUTPUT_FD TABLE_FD``: the worker; errors as JSON on standard output."""
    dst, table_fd = int(sys.argv[1]), int(sys.argv[2])
    with mmap.mmap(table_fd, 0) as table:
        try:
            work(dst, table)
        except CopyFailed as exc:
            sys.stdout.write(
                json.dumps({"error": exc.message, "hint": exc.hint, "errno": exc.errno})
            )
            return 1
        except OSError as exc:  # a write to the output failed (a full disk)
            sys.stdout.write(json.dumps({"error": str(exc), "hint": None, "errno": exc.errno}))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence

CHUNK = 8 * 1024 * 1024
SECTOR = 512
SMALL_FILE = 64 * 1024  # at most this: copied as part of a run
RUN_BYTES = 1024 * 1024  # a run ends after this many bytes ...
RUN_FILES = 256  # ... or this many files

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

    Yields each run as ``(first job, job after the last)``.
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


# A job in the worker's job file: the output offset, the size, the length of the path's
# bytes; then the path.  The job file grows while the worker copies: the other process
# appends jobs, then writes on the notes pipe how many bytes of the file are complete (an
# unsigned 64-bit little-endian number: a pipe write of 8 bytes is atomic).  The end of the
# pipe is the end of the jobs.  The worker writes on the progress pipe how many bytes it
# copied, in the same form, after each batch.
JOB = struct.Struct("<QQI")
NOTE = 8
_BATCH = 8 * 1024 * 1024  # at most this much of the job file is read at once


def encode_job(offset: int, size: int, path: str) -> bytes:
    """One job's record in the job file."""
    raw = path.encode("utf-8", "surrogateescape")
    return JOB.pack(offset, size, len(raw)) + raw


def decode_jobs(data: bytes) -> tuple[list[int], list[int], list[str], int]:
    """The whole job records at the start of ``data``, and how many bytes they took."""
    offsets: list[int] = []
    sizes: list[int] = []
    paths: list[str] = []
    pos, end, head = 0, len(data), JOB.size
    unpack = JOB.unpack_from
    while pos + head <= end:
        offset, size, n = unpack(data, pos)
        if pos + head + n > end:
            break
        offsets.append(offset)
        sizes.append(size)
        paths.append(data[pos + head : pos + head + n].decode("utf-8", "surrogateescape"))
        pos += head + n
    return offsets, sizes, paths, pos


def copy_jobs(
    offsets: Sequence[int],
    sizes: Sequence[int],
    paths: Sequence[str],
    dst: int,
    copied: Callable[[int], None],
) -> None:
    """Copy jobs to ``dst`` run by run, telling ``copied`` the bytes of each run."""
    for start, end in iter_runs(offsets, sizes):
        copy_run(paths[start:end], sizes[start:end], dst, offsets[start])
        copied(sum(sizes[start:end]))


def work(dst: int, jobs: int, notes: int, progress: int) -> None:
    """Copy the jobs of the job file ``jobs`` as the notes pipe says they are complete,
    until the pipe ends; tell the progress pipe the bytes copied."""
    done = 0  # bytes of the job file copied
    published = 0
    pending = 0  # bytes copied and not told yet

    def copied(n: int) -> None:
        nonlocal pending
        pending += n
        if pending >= RUN_BYTES:
            os.write(progress, pending.to_bytes(NOTE, "little"))
            pending = 0

    while True:
        note = os.read(notes, 512 * NOTE)
        if len(note) >= NOTE:
            whole = len(note) // NOTE * NOTE
            published = int.from_bytes(note[whole - NOTE : whole], "little")
        while done < published:
            data = os.pread(jobs, min(published - done, _BATCH), done)
            if not data:
                raise CopyFailed("the job file ended early", errno=errno.EIO)
            offsets, sizes, paths, used = decode_jobs(data)
            if not used:  # one record longer than a batch: a path cannot be that long
                raise CopyFailed("a job in the job file is too long", errno=errno.EIO)
            copy_jobs(offsets, sizes, paths, dst, copied)
            done += used
        if not note:
            break
    if pending:
        os.write(progress, pending.to_bytes(NOTE, "little"))


def main() -> int:
    """``copyfile.py OUTPUT_FD JOBS_FD NOTES_FD PROGRESS_FD``: the worker; errors as JSON on
    standard output."""
    dst, jobs, notes, progress = (int(arg) for arg in sys.argv[1:5])
    try:
        work(dst, jobs, notes, progress)
    except CopyFailed as exc:
        sys.stdout.write(json.dumps({"error": exc.message, "hint": exc.hint, "errno": exc.errno}))
        return 1
    except OSError as exc:  # a write to the output failed (a full disk)
        sys.stdout.write(json.dumps({"error": str(exc), "hint": None, "errno": exc.errno}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

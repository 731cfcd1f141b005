"""Copying file contents into an image file: streamed, zero-copy where the OS can, on two cores.

:func:`pyops.nanos.tfs.write_volume` places every file's data, then starts a :class:`DataCopy`
before it encodes the log.  Host files are cut into runs (:mod:`pyops.nanos.copyfile`: a large
file alone, or up to 1 MiB of small files placed back to back).  When a volume holds many
host files, a worker process starts copying runs at once, from the first one up, while this
process encodes the log; when the log is done, this process copies too, from the last run
down, until the two meet.  No thread shares this process's interpreter with the encoder,
and neither process waits for the other.

The two processes share the job table, a temporary file both map into memory, with one
claim flag per run for each process.  Each side sets its flag for a run before it copies
it, then reads the other's flag for that run; a run both have taken goes to the worker, and
is where they stop.  A stale read can only make both copy the same run, which writes the
same bytes to the same place, never make both skip one.  Flags are single bytes: a counter
of several bytes could be read half written and send both processes past each other.

Contents are never held in memory beyond one run: ``os.copy_file_range`` copies large files
inside the kernel (Linux), otherwise data goes through in 8 MiB pieces.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from pyops.errors import HostFileError, ImageFormatError, PyopsError
from pyops.nanos import copyfile
from pyops.nanos.copyfile import CHUNK, CopyFailed, JobTable
from pyops.nanos.tree import Contents, HostFile, ImageData, Source
from pyops.progress import NULL_PROGRESS, Progress

# From these on, host files are copied by a worker process as well: starting one costs
# about 50 ms of the other core, and saves most of the copying time of a large volume.
WORKER_MIN_FILES = 512
WORKER_MIN_BYTES = 256 * 1024 * 1024


class DataCopy:
    """Copies of file contents into the open file ``fd``: started when it is made, ended by
    :meth:`finish` (or abandoned by :meth:`cancel`)."""

    def __init__(
        self,
        fd: int,
        offsets: Sequence[int],
        sources: Sequence[Source],
        progress: Progress = NULL_PROGRESS,
        *,
        worker: bool | None = None,
    ) -> None:
        """Start writing each ``sources[i]`` at byte ``offsets[i]`` of ``fd``.

        ``worker`` forces the worker process on or off; by default it copies when there
        are at least ``WORKER_MIN_FILES`` host files or ``WORKER_MIN_BYTES`` of them.
        """
        self._fd = fd
        self._progress = progress
        self._rest: list[tuple[int, Source]] = []
        host_offsets: list[int] = []
        host_sizes: list[int] = []
        host_paths: list[str] = []
        for offset, source in zip(offsets, sources, strict=True):  # one pass: 250k on 4 GB
            if type(source) is HostFile:
                if source.size:
                    host_offsets.append(offset)
                    host_sizes.append(source.size)
                    host_paths.append(source.path)
            elif source.size:
                self._rest.append((offset, source))
        self._jobs = JobTable(host_offsets, host_sizes, host_paths)
        self._proc: subprocess.Popen[bytes] | None = None
        self._table: mmap.mmap | None = None
        self._copied_here = 0  # host bytes this process copied
        if worker is None:
            worker = len(host_sizes) >= WORKER_MIN_FILES or sum(host_sizes) >= WORKER_MIN_BYTES
        if worker and host_sizes:
            self._start_worker()

    def _start_worker(self) -> None:
        with tempfile.TemporaryFile() as f:
            f.write(self._jobs.encode())
            f.flush()
            self._table = mmap.mmap(f.fileno(), 0)
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", copyfile.__file__, str(self._fd), str(f.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(self._fd, f.fileno()),
            )

    def finish(self) -> None:
        """Copy what is left here, wait for the worker, and raise its error if it had one."""
        try:
            for offset, source in self._rest:
                copy_source(source, self._fd, offset)
                self._progress.advance("tfs", source.size)
            self._copy_down()
        except BaseException:
            self.cancel()
            raise
        if self._proc is not None:
            self._wait()

    def _copy_down(self) -> None:
        """Copy runs from the last one down, until the worker's share is reached.

        This process takes run i (sets its flag), then looks whether the worker has taken
        it: if so, the worker copies it (it copies every run it takes) and all below it.
        """
        table, jobs = self._table, self._jobs
        runs = list(jobs.runs())
        worker_flags, own_flags = jobs.flags()
        for i in range(len(runs) - 1, -1, -1):
            if table is not None:
                table[own_flags + i] = 1
                if table[worker_flags + i]:
                    return
            try:
                copied = jobs.copy(*runs[i], self._fd)
            except CopyFailed as exc:
                raise _copy_error(exc.message, exc.hint, exc.errno) from exc
            self._copied_here += copied
            self._progress.advance("tfs", copied)

    def _wait(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait()
        self._close()
        if proc.returncode != 0:
            raise _worker_error(out, err, proc.returncode)
        # the worker's share, reported once it is known to be written
        self._progress.advance("tfs", sum(self._jobs.sizes) - self._copied_here)

    def cancel(self) -> None:
        """Stop copying; the output is being abandoned."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.communicate()
        self._close()

    def _close(self) -> None:
        if self._table is not None:
            self._table.close()
            self._table = None


def _copy_error(message: str, hint: str | None, code: int) -> Exception:
    """A failed copy: the output's disk full (an OSError, which the writer's temporary turns
    into DiskFull), or a problem with the host file."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OSError(code, os.strerror(code))
    return HostFileError(message, hint=hint)


def _worker_error(out: bytes, err: bytes, status: int) -> Exception:
    try:
        report = json.loads(out.decode("utf-8", "replace") or "null")
    except json.JSONDecodeError:
        report = None
    if isinstance(report, dict) and "error" in report:
        code = report.get("errno")
        return _copy_error(
            str(report["error"]), report.get("hint"), code if isinstance(code, int) else 0
        )
    text = err.decode("utf-8", "replace").strip().splitlines()
    return PyopsError(
        f"copying file data failed (worker exit status {status})"
        + (f": {text[-1]}" if text else "")
    )


def copy_source(source: Source, fd: int, offset: int) -> None:
    """Write the contents of ``source`` at byte ``offset`` of ``fd``."""
    if isinstance(source, HostFile):
        try:
            copyfile.copy_file(source.path, source.size, fd, offset)
        except CopyFailed as exc:
            raise _copy_error(exc.message, exc.hint, exc.errno) from exc
    elif isinstance(source, Contents):
        os.pwrite(fd, source.data, offset)
    elif isinstance(source, ImageData):
        with open(source.image, "rb") as f:
            for pos, piece in iter_image_data(f, source):
                os.pwrite(fd, piece, offset + pos)
    else:  # pragma: no cover - the Source union is closed
        raise TypeError(source)


def iter_image_data(
    f: BinaryIO, data: ImageData, chunk: int = CHUNK
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(file offset, bytes)`` pieces of a stored file; holes are left out."""
    for ext in data.extents:
        if ext.uninited:
            continue
        start = ext.file_offset
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

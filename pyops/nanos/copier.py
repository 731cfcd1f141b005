"""Copying file contents into an image file: streamed, zero-copy where the OS can, on two cores.

:func:`pyops.nanos.tfs.write_volume` hands each file to a :class:`DataCopy` as soon as it
has placed its data, while it is still walking the tree and encoding the log.  Host files
are cut into runs (:mod:`pyops.nanos.copyfile`: a large file alone, or up to 1 MiB of small
files placed back to back).  Once a volume has many host files, a worker process copies
them from then on, while this process walks and encodes: the jobs go to a temporary job
file, which the worker reads as this process tells it, on a pipe, how much of the file is
complete; the worker tells on another pipe how many bytes it copied.  Neither process holds
more than a batch of jobs, so the memory does not grow with the number of files.

Contents are never held in memory beyond one run: ``os.copy_file_range`` copies large files
inside the kernel (Linux), otherwise data goes through in 8 MiB pieces.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from pyops.errors import HostFileError, ImageFormatError, PyopsError
from pyops.nanos import copyfile
from pyops.nanos.copyfile import CHUNK, JOB, NOTE, CopyFailed, encode_job
from pyops.nanos.tree import Contents, HostFile, ImageData, Source
from pyops.progress import NULL_PROGRESS, Progress

# From these on, host files are copied by a worker process: starting one costs about 50 ms
# of the other core, and saves most of the copying time of a large volume.
WORKER_MIN_FILES = 512
WORKER_MIN_BYTES = 256 * 1024 * 1024
_FLUSH = 256 * 1024  # bytes of job records handed to the worker at a time
_JOB_HEAD = JOB.pack


class DataCopy:
    """Copies of file contents into the open file ``fd``, given one by one (:meth:`add`),
    ended by :meth:`finish` (or abandoned by :meth:`cancel`)."""

    def __init__(
        self, fd: int, progress: Progress = NULL_PROGRESS, *, worker: bool | None = None
    ) -> None:
        """``worker`` forces the worker process on or off; by default it starts once there
        are ``WORKER_MIN_FILES`` host files or ``WORKER_MIN_BYTES`` of them."""
        self._fd = fd
        self._progress = progress
        self._allow = worker is not False
        self._rest: list[tuple[int, Source]] = []
        # host files not handed to a worker (yet): offsets, sizes, paths
        self._offsets: list[int] = []
        self._sizes: list[int] = []
        self._paths: list[str] = []
        self._bytes = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._jobs: BinaryIO | None = None
        self._notes = -1  # the pipe to the worker
        self._told = -1  # the pipe from it
        self._buffer = bytearray()
        self._published = 0
        if worker:
            self._start_worker()

    def add(self, offset: int, source: Source) -> None:
        """Write ``source`` at byte ``offset`` of the file (now, or by :meth:`finish`)."""
        if not source.size:
            return
        if type(source) is not HostFile:
            self._rest.append((offset, source))
            return
        if self._proc is not None:  # encode_job, inline: once per file of a large tree
            raw = source.path.encode("utf-8", "surrogateescape")
            buffer = self._buffer
            buffer += _JOB_HEAD(offset, source.size, len(raw))
            buffer += raw
            if len(buffer) >= _FLUSH:
                self._publish()
            return
        self._offsets.append(offset)
        self._sizes.append(source.size)
        self._paths.append(source.path)
        self._bytes += source.size
        if self._allow and (
            len(self._sizes) >= WORKER_MIN_FILES or self._bytes >= WORKER_MIN_BYTES
        ):
            self._start_worker()

    def _start_worker(self) -> None:
        self._jobs = tempfile.TemporaryFile()
        notes_r, self._notes = os.pipe()
        self._told, told_w = os.pipe()
        jobs_fd = self._jobs.fileno()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", copyfile.__file__]
                + [str(n) for n in (self._fd, jobs_fd, notes_r, told_w)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(self._fd, jobs_fd, notes_r, told_w),
            )
        finally:
            os.close(notes_r)
            os.close(told_w)
        os.set_blocking(self._told, False)
        for job in zip(self._offsets, self._sizes, self._paths, strict=True):
            self._buffer += encode_job(*job)
        self._offsets, self._sizes, self._paths = [], [], []
        self._publish()

    def _publish(self) -> None:
        """Hand the buffered jobs to the worker, and take in what it copied so far."""
        assert self._jobs is not None
        if self._buffer:
            os.write(self._jobs.fileno(), self._buffer)
            self._published += len(self._buffer)
            self._buffer.clear()
            try:
                os.write(self._notes, self._published.to_bytes(NOTE, "little"))
            except BrokenPipeError:
                pass  # the worker stopped: finish() reports why
        self._take_progress()

    def _take_progress(self) -> None:
        try:
            told = os.read(self._told, 64 * NOTE)
        except BlockingIOError:
            return
        for i in range(0, len(told) - NOTE + 1, NOTE):
            self._progress.advance("tfs", int.from_bytes(told[i : i + NOTE], "little"))

    def finish(self) -> None:
        """Copy what is left here, wait for the worker, and raise its error if it had one."""
        try:
            if self._proc is not None:
                self._publish()
                os.close(self._notes)
                self._notes = -1
            else:
                copyfile.copy_jobs(self._offsets, self._sizes, self._paths, self._fd, self._copied)
            for offset, source in self._rest:
                copy_source(source, self._fd, offset)
                self._progress.advance("tfs", source.size)
        except CopyFailed as exc:
            self.cancel()
            raise _copy_error(exc.message, exc.hint, exc.errno) from exc
        except BaseException:
            self.cancel()
            raise
        if self._proc is not None:
            self._wait()

    def _copied(self, n: int) -> None:
        self._progress.advance("tfs", n)

    def _wait(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        os.set_blocking(self._told, True)
        while True:  # what it copied, until it ends
            told = os.read(self._told, 64 * NOTE)
            if not told:
                break
            for i in range(0, len(told) - NOTE + 1, NOTE):
                self._progress.advance("tfs", int.from_bytes(told[i : i + NOTE], "little"))
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait()
        self._close()
        if proc.returncode != 0:
            raise _worker_error(out, err, proc.returncode)

    def cancel(self) -> None:
        """Stop copying; the output is being abandoned."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.communicate()
        self._close()

    def _close(self) -> None:
        for fd in (self._notes, self._told):
            if fd >= 0:
                os.close(fd)
        self._notes = self._told = -1
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None


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

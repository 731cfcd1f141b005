"""Every temporary file and folder pyops makes, and the one policy that cleans them up.

Whatever pyops writes (a disk image, a blob, a package folder, a release, a state file) is
first written to a temporary beside its destination and renamed into place when complete, so
a reader never sees half of it. A temporary is named ``.NAME.pyops-PID-RANDOM.tmp``: NAME is
the destination's name, PID the process that writes it.

The policy, for every temporary:

- an error or Ctrl-C in the writing process removes its temporary before the error goes on;
- a process that died without cleaning up (SIGKILL, a crash, power loss) leaves it behind,
  and :func:`sweep` removes it the next time pyops works in that folder, because the process
  named in it is no longer running;
- a full disk is reported as :class:`DiskFull`, naming the folder and how much more room the
  write needed, when that is known.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pyops.errors import DiskFull

_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\..*\.pyops-(\d+)-[0-9a-f]{8}\.tmp")


def temp_path(dest: str | os.PathLike[str]) -> Path:
    """A fresh temporary path beside ``dest`` (not created)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.pyops-{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}")


def is_temp(name: str) -> bool:
    """Whether a file name is one of pyops's temporaries."""
    return _TEMP_NAME.fullmatch(name) is not None


def pid_alive(pid: int) -> bool:
    """Whether the process ``pid`` (this one included) is running, as far as this user can
    tell (a process of another user counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user
    except (OverflowError, ValueError):
        return False
    return True


def remove(path: str | os.PathLike[str]) -> None:
    """Remove a file, a symlink or a whole folder, whatever is there; nothing if nothing is."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            _remove_tree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _remove_tree(path: Path) -> None:
    # shutil.rmtree and os.walk recurse once per level on Python 3.11, and a hostile layer
    # can nest thousands of folders: walk with an explicit stack, never following links.
    stack = [(os.fspath(path), False)]
    while stack:
        folder, emptied = stack.pop()
        if emptied:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(folder)
            continue
        stack.append((folder, True))
        # A folder of mode 0555 from a layer blocks removing its entries when not root.
        _writable(folder)
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, False))
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


def _writable(folder: str) -> None:
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        with contextlib.suppress(OSError):
            os.chmod(folder, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


def sweep(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries in ``folder`` (not below it) left by processes that are gone.

    Returns what was removed. A temporary of a running process is left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            remove(entry.path)
            removed.append(Path(entry.path))
    return removed


def disk_full(path: str | os.PathLike[str], needed: int | None = None) -> DiskFull:
    """The error for a write that ran out of room in the folder of ``path``."""
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    more = ""
    if needed is not None and free is not None and needed > free:
        more = f", needs {needed - free:,} more bytes"
    elif needed is not None:
        more = f", needs {needed:,} bytes"
    return DiskFull(
        f"disk full at {folder}{more}",
        hint="free some room there, or point PYOPS_HOME at a disk with more",
    )


@contextlib.contextmanager
def reporting_disk_full(path: str | os.PathLike[str], needed: int | None = None) -> Iterator[None]:
    """Turn ENOSPC and EDQUOT raised inside the block into :class:`DiskFull`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, needed) from exc
        raise


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], needed: int | None = None) -> Iterator[Path]:
    """A temporary path to fill (a file or a folder), renamed to ``dest`` when the block ends
    without an error, and removed otherwise. An existing ``dest`` is replaced."""
    dest = Path(dest)
    tmp = temp_path(dest)
    try:
        with reporting_disk_full(dest, needed):
            yield tmp
            if tmp.is_dir() and not tmp.is_symlink() and dest.is_dir():
                # A folder cannot be renamed over a non-empty one: move the old one aside.
                old = temp_path(dest)
                os.rename(dest, old)
                os.rename(tmp, dest)
                remove(old)
            else:
                os.replace(tmp, dest)
    except BaseException:
        remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike[str], needed: int | None = None) -> Iterator[BinaryIO]:
    """A file open for writing whose content replaces ``dest`` when the block ends well."""
    with atomic_path(dest, needed) as tmp, open(tmp, "xb") as out:
        yield out


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``dest`` with ``data`` atomically."""
    with atomic_file(dest, len(data)) as out:
        out.write(data)

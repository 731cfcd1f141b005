"""Paths inside an image's root filesystem, resolved without ever leaving it.

An image's symlinks are the image's: ``/lib -> usr/lib`` or ``/etc/ssl -> /some/host/dir``
must be followed as the guest's kernel would follow them, with the image root as ``/``, and
never by the host's kernel, which would follow an absolute target to the host's own files.
:func:`resolve` is the one implementation of that rule (chroot semantics: an absolute target
restarts at the root, ``..`` stops there, 40 links at most as Linux's ``MAXSYMLINKS``). What
it reads is pluggable: the layer applier and the package builder read the host folder as it
is now, the resolver reads through a cache (:class:`CachedRoot`), and the image tree reader
reads its own in-memory tree.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pyops import limits
from pyops.errors import UnsafeLayerPath

MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS (ELOOP)

Parts = tuple[str, ...]
Lstat = Callable[[Parts], "int | None"]
"""The mode of the entry at these (resolved, link-free) components, None if there is none."""
Readlink = Callable[[Parts], str]
"""The target of the symlink at these components."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a path leads inside the root."""

    parts: Parts
    """The components of the resolved path; none of them is a symlink, except the last one
    when it was not followed."""
    modes: tuple[int | None, ...]
    """The mode of each component (None: it does not exist, nor anything below it)."""
    links: tuple[str, ...]
    """The in-root paths of the symlinks followed, in order."""

    @property
    def path(self) -> str:
        return "/" + "/".join(self.parts)

    @property
    def mode(self) -> int | None:
        """The mode of what the path names (the root is a folder), None if missing."""
        return self.modes[-1] if self.modes else stat.S_IFDIR

    @property
    def chain(self) -> tuple[str, ...]:
        """The symlinks followed, then the resolved path: what an image needs to hold for
        the path to work, each entry recreatable as it is."""
        return (*self.links, self.path)


class FileStat(Protocol):
    """What the readers of a root use of an entry's ``lstat`` (``os.stat_result`` is one)."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_size(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_dev(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_nlink(self) -> int: ...


Window = tuple[str, int, int]
"""Where a regular file's bytes are on the host: a host file, the offset in it, the length."""


class RootFiles(Protocol):
    """An image's root filesystem, read by resolved in-root paths (``/usr/lib/x.so``, no
    symlink among the components but maybe the last; the root is ``/``)."""

    def lstat(self, real: str) -> FileStat | None:
        """The entry's attributes, None if there is none."""
        ...

    def readlink(self, real: str) -> str:
        """A symlink's target; OSError if the entry is not a symlink."""
        ...

    def listdir(self, real: str) -> list[str]:
        """A folder's names, in no order; OSError if it is not a folder."""
        ...

    def window(self, real: str) -> Window:
        """Where a regular file's bytes are; OSError if it is not a regular file."""
        ...

    def host(self, real: str) -> str:
        """A host path naming the entry in messages and results (for a host folder, the
        entry itself)."""
        ...


class HostFiles:
    """:class:`RootFiles` of a host folder, as it is now."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)

    def host(self, real: str) -> str:
        return os.path.join(self.root, real.lstrip("/"))

    def lstat(self, real: str) -> FileStat | None:
        try:
            return os.lstat(self.host(real))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def readlink(self, real: str) -> str:
        return os.readlink(self.host(real))

    def listdir(self, real: str) -> list[str]:
        return os.listdir(self.host(real))

    def window(self, real: str) -> Window:
        path = self.host(real)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return path, 0, st.st_size


def read_window(window: Window, limit: int) -> bytes:
    """The first ``limit`` bytes (at most) of the file at ``window``."""
    path, offset, length = window
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, min(limit, length), offset)
    finally:
        os.close(fd)


def resolve_in(
    files: RootFiles, path: str | Sequence[str], *, follow_last: bool = True
) -> Resolved:
    """:func:`resolve` inside ``files``."""

    def mode(parts: Parts) -> int | None:
        st = files.lstat("/" + "/".join(parts))
        return st.st_mode if st is not None else None

    return resolve(
        path, mode, lambda parts: files.readlink("/" + "/".join(parts)), follow_last=follow_last
    )


def host_lstat(root: str) -> Lstat:
    """``lstat`` of components inside the host folder ``root``, as it is now."""

    def mode(parts: Parts) -> int | None:
        try:
            return os.lstat(os.path.join(root, *parts)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None

    return mode


def host_readlink(root: str) -> Readlink:
    return lambda parts: os.readlink(os.path.join(root, *parts))


def resolve(
    path: str | Sequence[str],
    lstat: Lstat,
    readlink: Readlink,
    *,
    follow_last: bool = True,
    max_steps: int | None = None,
    start: tuple[int, Parts] = (0, ()),
    what: str = "inside the image",
) -> Resolved:
    """Resolve ``path`` (a string or its components) with chroot semantics.

    Components that do not exist are kept as they are (their mode is None). Raises
    :class:`UnsafeLayerPath` after :data:`MAX_SYMLINKS` links, and :class:`LimitExceeded`
    after ``max_steps`` lookups (default :data:`pyops.limits.PATH_DEPTH`).

    ``start`` is ``(k, folders)``: the first ``k`` components of ``path`` are known to
    resolve to ``folders``, real folders all of them, without a link (a caller's cache).
    """
    parts = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
    shown = "/" + "/".join(parts).lstrip("/")
    shown = shown if len(shown) <= 100 else shown[:97] + "..."
    if max_steps is None:
        max_steps = limits.PATH_DEPTH.value()
    skip, known = start
    result: list[str] = list(known)
    modes: list[int | None] = [stat.S_IFDIR] * len(known)
    links: list[str] = []
    todo = deque(parts[skip:] if skip else parts)
    steps = len(known)
    while todo:
        name = todo.popleft()
        if name in ("", "."):
            continue
        steps += 1
        if steps > max_steps:
            raise limits.PATH_DEPTH.exceeded(
                f"{shown}, resolved {what} with its symbolic links,", steps
            )
        if name == "..":
            if result:
                result.pop()
                modes.pop()
            continue
        if modes and (modes[-1] is None or not stat.S_ISDIR(modes[-1])):
            result.append(name)  # below something missing (or not a folder): missing too
            modes.append(None)
            continue
        here = (*result, name)
        mode = lstat(here)
        if mode is None:
            result.append(name)
            modes.append(None)
            continue
        if stat.S_ISLNK(mode) and (todo or follow_last):
            if len(links) >= MAX_SYMLINKS:
                raise UnsafeLayerPath(f"{shown}: too many levels of symbolic links {what}.")
            links.append("/" + "/".join(here))
            target = readlink(here)
            if target.startswith("/"):
                result = []
                modes = []
            todo.extendleft(reversed(target.split("/")))
            continue
        result.append(name)
        modes.append(mode)
    return Resolved(tuple(result), tuple(modes), tuple(links))


def resolve_on_host(
    root: str | os.PathLike[str], path: str | Sequence[str], *, follow_last: bool = True
) -> Resolved:
    """:func:`resolve` inside the host folder ``root`` as it is now."""
    top = os.fspath(root)
    return resolve(path, host_lstat(top), host_readlink(top), follow_last=follow_last)

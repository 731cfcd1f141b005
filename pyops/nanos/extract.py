"""Copying files and folders out of a Nanos image's tree onto the host, safely.

Everything a tree read from an image holds is hostile: its names, its link targets, its
sizes. The copy therefore never writes outside its destination:

- every file, link and folder is made relative to an open descriptor of the folder it goes
  in (``dir_fd``), and folders are opened with ``O_NOFOLLOW``: a link the copy made, or one
  that was there before, is never written through, and an entry whose name clashes with one
  on a file system that folds case or normalises names cannot redirect it either;
- names are checked again here (no ``/``, NUL, ``.`` or ``..``; the reader refuses those
  too) and link targets are stored verbatim, never followed on the host;
- each file is written to a temporary beside it and renamed into place, so a failed copy
  leaves no half-written file under its name; holes in the image stay holes;
- Nanos stores no owners or permission bits, so files are made with mode 0666 and folders
  0755, less the umask: never a set-id bit.

Links inside a copied folder are copied as links; with ``dereference`` a link that resolves
(inside the image) to a regular file is copied as that file, and any other link stays a
link. A source named on the command line is always followed, as Ops's ``image cp`` does.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from pyops import atomic
from pyops.errors import HostFileError, ImageFormatError, InvalidInput, PyopsError
from pyops.nanos.copier import iter_image_data
from pyops.nanos.tree import (
    Contents,
    Directory,
    File,
    HardLink,
    HostFile,
    ImageData,
    Node,
    Symlink,
    Tree,
    split_path,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What :func:`copy_out` copied, and what it could not."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0
    """Bytes of file contents (holes included)."""
    omitted: tuple[str, ...] = ()
    """Folders named as sources while ``recursive`` was off."""
    errors: tuple[PyopsError, ...] = field(default=())
    """One per source that failed; each stops the copy of that source only."""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.omitted


class _Counts:
    __slots__ = ("files", "directories", "symlinks", "bytes")

    def __init__(self) -> None:
        self.files = self.directories = self.symlinks = self.bytes = 0


def copy_out(
    tree: Tree,
    sources: Sequence[str],
    dest: str | os.PathLike[str],
    *,
    recursive: bool = False,
    dereference: bool = False,
) -> CopyResult:
    """Copy ``sources`` (paths in ``tree``) to the host path ``dest``, as ``cp`` does.

    When ``dest`` is a folder, each source goes into it under its own name (the contents
    of ``/`` go into it directly); otherwise there must be one source, and it is copied to
    ``dest`` itself. A folder is copied only with ``recursive``. An existing file or link
    in the way is replaced; an existing folder is merged into.
    """
    target = os.fspath(dest)
    if not target:
        raise InvalidInput("the destination is empty")
    if "\0" in target:
        raise InvalidInput(f"invalid destination {target!r}: paths cannot contain NUL")
    try:
        into = stat.S_ISDIR(os.stat(target).st_mode)
    except FileNotFoundError:
        into = False
    except OSError as exc:
        raise HostFileError(f"cannot use {target} as the destination: {exc.strerror}") from exc
    if len(sources) > 1 and not into:
        raise InvalidInput(
            f"the destination {target} is not a folder",
            hint="copying several sources needs an existing folder to copy them into",
        )
    copier = _Copier(tree, dereference)
    omitted: list[str] = []
    errors: list[PyopsError] = []
    try:
        for source in sources:
            try:
                if not copier.copy_source(source, target, into, recursive):
                    omitted.append(source)
            except PyopsError as exc:
                errors.append(exc)
    finally:
        copier.close()
    counts = copier.counts
    return CopyResult(
        counts.files,
        counts.directories,
        counts.symlinks,
        counts.bytes,
        tuple(omitted),
        tuple(errors),
    )


class _Frame:
    """A folder being copied: its descriptor, the entries left, and where it is."""

    __slots__ = ("fd", "names", "directory", "image_path", "host_path", "ident")

    def __init__(
        self, fd: int, directory: Directory, image_path: str, host_path: str, ident: tuple[int, int]
    ) -> None:
        self.fd = fd
        self.directory = directory
        self.names: Iterator[str] = iter(sorted(directory.entries, key=os.fsencode))
        self.image_path = image_path
        self.host_path = host_path
        self.ident = ident


class _Copier:
    def __init__(self, tree: Tree, dereference: bool) -> None:
        self.tree = tree
        self.dereference = dereference
        self.counts = _Counts()
        self._images: dict[str, BinaryIO] = {}

    def close(self) -> None:
        for f in self._images.values():
            f.close()
        self._images.clear()

    # --- one source ---------------------------------------------------------------------

    def copy_source(self, source: str, target: str, into: bool, recursive: bool) -> bool:
        """Copy one source; False when it is a folder and ``recursive`` is off."""
        parts = split_path(source)
        _real, node = self.tree.lookup(source)  # a source given by name is followed
        if isinstance(node, Directory) and not recursive:
            return False
        if into:
            if not parts:  # "/": its contents go into the destination folder itself
                assert isinstance(node, Directory)
                fd = _open_dest_folder(target)
                try:
                    self._copy_folder_into(fd, node, "", target)
                finally:
                    os.close(fd)
                return True
            parent, name, host = target, parts[-1], os.path.join(target, parts[-1])
        else:
            stripped = target.rstrip("/") or "/"
            parent = os.path.dirname(stripped) or "."
            name = os.path.basename(stripped)
            host = target
        _check_host_name(name, host)
        fd = _open_dest_folder(parent)
        try:
            image_path = "/" + "/".join(parts)
            if isinstance(node, Directory):
                child = self._make_folder(fd, name, host)
                try:
                    self._copy_folder_into(child, node, image_path, host)
                finally:
                    os.close(child)
            else:
                self._copy_leaf(fd, name, node, image_path, host, top=True)
        finally:
            os.close(fd)
        return True

    def _copy_folder_into(self, fd: int, directory: Directory, image_path: str, host: str) -> None:
        """Copy the entries of ``directory`` into the open folder ``fd``, depth first.

        Only the folder being filled and the starting one are open at any time: going back
        up reopens the parent through ``..`` and checks it is the folder it left.
        """
        root = _Frame(fd, directory, image_path, host, _ident(fd, host))
        stack = [root]
        try:
            while stack:
                frame = stack[-1]
                name = next(frame.names, None)
                if name is None:
                    stack.pop()
                    if frame is not root:
                        try:
                            if stack[-1] is not root:
                                stack[-1].fd = _reopen_parent(frame.fd, stack[-1])
                        finally:
                            os.close(frame.fd)
                            frame.fd = -1
                    continue
                node = frame.directory.entries[name]
                child_image = f"{frame.image_path}/{name}"
                child_host = os.path.join(frame.host_path, name)
                _check_host_name(name, child_host)
                if isinstance(node, Directory):
                    child_fd = self._make_folder(frame.fd, name, child_host)
                    if frame is not root:
                        os.close(frame.fd)  # reopened through ".." when the child is done
                        frame.fd = -1
                    stack.append(
                        _Frame(
                            child_fd, node, child_image, child_host, _ident(child_fd, child_host)
                        )
                    )
                else:
                    self._copy_leaf(frame.fd, name, node, child_image, child_host, top=False)
        finally:
            for frame in stack:
                if frame is not root and frame.fd >= 0:
                    os.close(frame.fd)

    # --- entries ------------------------------------------------------------------------

    def _copy_leaf(
        self, fd: int, name: str, node: Node, image_path: str, host: str, *, top: bool
    ) -> None:
        if isinstance(node, HardLink):
            node = self.tree.resolve_hardlink(node)
        if isinstance(node, Symlink) and self.dereference and not top:
            followed = self._followed(image_path)
            if followed is not None:
                node = followed
        if isinstance(node, Symlink):
            self._write_symlink(fd, name, node.target, host)
        elif isinstance(node, File):
            self._write_file(fd, name, node, image_path, host)
        else:  # pragma: no cover - folders are copied by the caller
            raise TypeError(node)

    def _followed(self, image_path: str) -> File | None:
        """The regular file a link at ``image_path`` resolves to in the image, if any."""
        try:
            _real, node = self.tree.lookup(image_path)
        except InvalidInput:
            return None
        return node if isinstance(node, File) else None

    def _make_folder(self, fd: int, name: str, host: str) -> int:
        try:
            os.mkdir(name, 0o755, dir_fd=fd)
            self.counts.directories += 1
        except FileExistsError:
            pass
        except OSError as exc:
            raise _host_error(f"cannot create the folder {host}", exc, host) from exc
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise HostFileError(
                    f"cannot copy a folder to {host}: something other than a folder is there "
                    "(a symbolic link is never written through)",
                    hint="remove it, or copy to another destination",
                ) from exc
            raise _host_error(f"cannot open the folder {host}", exc, host) from exc

    def _write_symlink(self, fd: int, name: str, target: str, host: str) -> None:
        if "\0" in target or not target:
            raise ImageFormatError(f"the symbolic link for {host} has an invalid target")
        tmp = _temp_name(name)
        try:
            os.symlink(target, tmp, dir_fd=fd)
        except OSError as exc:
            raise _host_error(f"cannot create the symbolic link {host}", exc, host) from exc
        self._commit(fd, tmp, name, host)
        self.counts.symlinks += 1

    def _write_file(self, fd: int, name: str, node: File, image_path: str, host: str) -> None:
        tmp = _temp_name(name)
        try:
            out = os.open(tmp, _FILE_FLAGS, 0o666, dir_fd=fd)
        except OSError as exc:
            raise _host_error(f"cannot create {host}", exc, host) from exc
        try:
            try:
                self._fill(out, node, image_path)
            finally:
                os.close(out)
        except OSError as exc:
            _discard(fd, tmp)
            raise _host_error(f"cannot write {host}", exc, host, node.size) from exc
        except BaseException:
            _discard(fd, tmp)
            raise
        self._commit(fd, tmp, name, host)
        self.counts.files += 1
        self.counts.bytes += node.size

    def _fill(self, out: int, node: File, image_path: str) -> None:
        """Write the contents of ``node`` to ``out``: data where the image has data, holes
        where it has none."""
        source = node.source
        os.ftruncate(out, source.size)
        if isinstance(source, Contents):
            _pwrite_all(out, source.data, 0)
        elif isinstance(source, ImageData):
            image = self._image(source.image)
            try:
                for pos, piece in iter_image_data(image, source, _CHUNK):
                    _pwrite_all(out, piece, pos)
            except ImageFormatError as exc:
                raise ImageFormatError(f"cannot copy {image_path}: {exc}") from exc
        else:
            assert isinstance(source, HostFile)
            with open(source.path, "rb") as f:
                pos = 0
                while pos < source.size and (piece := f.read(min(_CHUNK, source.size - pos))):
                    _pwrite_all(out, piece, pos)
                    pos += len(piece)

    def _image(self, path: str) -> BinaryIO:
        f = self._images.get(path)
        if f is None:
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise HostFileError(f"{path}: cannot read it ({exc.strerror})") from exc
            self._images[path] = f
        return f

    def _commit(self, fd: int, tmp: str, name: str, host: str) -> None:
        """Rename the temporary ``tmp`` to ``name`` in the folder ``fd``, replacing a file or
        link there (never what a link points to)."""
        try:
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            _discard(fd, tmp)
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise HostFileError(
                    f"cannot copy to {host}: a folder is in the way",
                    hint="remove it, or copy to another destination",
                ) from exc
            raise _host_error(f"cannot create {host}", exc, host) from exc


# --- host helpers ---------------------------------------------------------------------------


def _open_dest_folder(path: str) -> int:
    """The destination folder given by the user (links in its path are the user's own)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostFileError(f"cannot copy into {path}: {exc.strerror}") from exc


def _ident(fd: int, host: str) -> tuple[int, int]:
    try:
        st = os.fstat(fd)
    except OSError as exc:  # pragma: no cover - an open descriptor can be stat'ed
        raise _host_error(f"cannot read the folder {host}", exc, host) from exc
    return st.st_dev, st.st_ino


def _reopen_parent(child_fd: int, parent: _Frame) -> int:
    """The folder ``parent`` again, opened as ``..`` of its child, if it is still that one."""
    try:
        fd = os.open("..", _DIR_FLAGS, dir_fd=child_fd)
    except OSError as exc:
        raise _host_error(f"cannot reopen {parent.host_path}", exc, parent.host_path) from exc
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != parent.ident:
        os.close(fd)
        raise HostFileError(f"{parent.host_path} was moved while it was being copied into")
    return fd


def _check_host_name(name: str, host: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ImageFormatError(f"refusing to create {host!r}: {name!r} is not a file name")


def _temp_name(name: str) -> str:
    """A temporary name beside ``name``, in pyops's pattern (:mod:`pyops.atomic`), short
    enough for any file system whatever the length of ``name``."""
    stem = name if len(os.fsencode(name)) <= 100 else "long-name"
    return f".{stem}.pyops-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _discard(fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except OSError:
        pass


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _host_error(what: str, exc: OSError, host: str, needed: int | None = None) -> PyopsError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return atomic.disk_full(host, needed)
    return HostFileError(f"{what}: {exc.strerror or exc}")


__all__ = ["CopyResult", "copy_out"]

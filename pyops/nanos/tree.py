"""The file tree that goes into a Nanos volume: directories, files, symlinks and hard links.

A :class:`Tree` is built by path (``tree.add_file("/etc/hosts", HostFile(...))``) and is
turned into TFS tuples by :mod:`pyops.nanos.tfs`.  Nodes are small frozen dataclasses; a
directory's entries are the only mutable part, and only :class:`Tree` changes them.

Nanos stores no owners or permission bits (nanos-image-format.md section 2.4), so none are
modelled here.  File names are ``str`` holding the file system's bytes through
``os.fsdecode`` (surrogateescape), so any byte string except ``/`` and NUL can be a name.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from pyops import rootfs
from pyops.errors import HostFileError, InvalidInput, UnsafeLayerPath


@dataclass(frozen=True, slots=True)
class HostFile:
    """File contents read from a file on the host when the image is written."""

    path: str
    size: int
    mtime_ns: int = 0
    """When it was last changed, as seen when it was added (0: unknown)."""
    inode: tuple[int, int] | None = None
    """The host's (device, inode) when the file has other names on the host: the names of
    one inode in a tree become hard links of one file in the image."""

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> HostFile:
        """Check that ``path`` is a readable regular file (links followed) and record its size."""
        p = os.fspath(path)
        st = host_stat(p, follow_symlinks=True)
        if not stat.S_ISREG(st.st_mode):
            raise HostFileError(f"{p}: not a regular file")
        if not os.access(p, os.R_OK):
            raise HostFileError(
                f"{p}: permission denied", hint="make the file readable by the current user"
            )
        return cls(p, st.st_size, st.st_mtime_ns)


def host_stat(path: str, *, follow_symlinks: bool) -> os.stat_result:
    """``stat``/``lstat`` of a host path, failures turned into :class:`HostFileError`."""
    try:
        return os.stat(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise HostFileError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise HostFileError(f"{path}: cannot read it ({exc.strerror})") from exc


@dataclass(frozen=True, slots=True)
class Contents:
    """File contents given as bytes."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class ImageExtent:
    """One extent of a file stored in an existing volume (see :mod:`pyops.nanos.tfs`)."""

    file_sector: int
    disk_offset: int  # absolute byte offset in the image file
    length: int  # bytes (whole sectors)
    uninited: bool = False

    @property
    def file_offset(self) -> int:
        """Where the extent starts in the file, in bytes (TFS sectors are 512 bytes)."""
        return self.file_sector * 512


@dataclass(frozen=True, slots=True)
class ImageData:
    """File contents stored in an image file, as read back by :mod:`pyops.nanos.tfs`."""

    image: str
    extents: tuple[ImageExtent, ...]
    size: int


Source: TypeAlias = HostFile | Contents | ImageData

# Attribute values are TFS values: str, int, None (a flag), bytes, and nested dicts/lists.
Attributes: TypeAlias = Mapping[str, Any]

_NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, eq=False)
class File:
    """A regular file.  ``attributes`` are extra TFS keys such as ``readonly`` or ``mtime``."""

    source: Source
    attributes: Attributes = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.source.size


@dataclass(frozen=True, slots=True)
class Symlink:
    """A symbolic link; ``target`` is stored verbatim (relative or absolute)."""

    target: str
    attributes: Attributes = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HardLink:
    """Another name for the regular file at absolute path ``target`` in the same tree."""

    target: str


class Directory:
    """A directory.  Its entries are changed only through :class:`Tree`.

    A directory made from a host folder (``host``) reads the folder when its entries are
    first asked for, one level at a time: until then it holds nothing but the folder's path,
    and an image writer that meets it reads the folder itself (:func:`host_entries`) without
    keeping what it read.  So writing a large host tree costs memory per folder being
    written, not per entry.
    """

    __slots__ = ("_entries", "attributes", "host")

    def __init__(
        self,
        entries: dict[str, Node] | None = None,
        attributes: Attributes | None = None,
        *,
        host: str | None = None,
    ) -> None:
        self._entries = entries if entries is not None or host is not None else {}
        self.attributes: Attributes = attributes if attributes is not None else {}
        self.host = host
        """The host folder whose content this directory is, or None."""

    @property
    def entries(self) -> dict[str, Node]:
        """The entries, by name (a host folder's are read now if they were not yet)."""
        entries = self._entries
        if entries is None:
            assert self.host is not None
            entries = self._entries = dict(host_entries(self.host))
        return entries

    @property
    def loaded(self) -> bool:
        """Whether the entries are in memory (else they are a host folder's, unread)."""
        return self._entries is not None

    def __repr__(self) -> str:
        if self._entries is None:
            return f"Directory(host={self.host!r})"
        return f"Directory({self._entries!r}, {dict(self.attributes)!r})"


Node: TypeAlias = File | Symlink | HardLink | Directory


def check_name(name: str, path: str) -> None:
    """Refuse names Nanos cannot store: empty, ``.``, ``..``, or containing ``/`` or NUL."""
    if not name or name in (".", ".."):
        raise InvalidInput(f"invalid file name {name!r} in {path!r}")
    if "/" in name or "\0" in name:
        raise InvalidInput(
            f"invalid file name {name!r} in {path!r}: names cannot contain '/' or NUL"
        )


def split_path(path: str) -> list[str]:
    """Split an absolute or relative image path into names, refusing NUL, ``.`` and ``..``."""
    if "\0" in path:
        raise InvalidInput(f"invalid path {path!r}: paths cannot contain NUL")
    parts = [p for p in path.split("/") if p]
    for part in parts:
        check_name(part, path)
    return parts


def name_key(name: str) -> bytes:
    """The sort key of a file name: its bytes, as Nanos and ``ls`` order them."""
    return name.encode("utf-8", "surrogateescape")


def sorted_names(names: Iterable[str]) -> list[str]:
    """Names in byte order, as Nanos's own tools and ``ls`` under the C locale order them.

    UTF-8 keeps code point order, so plain string order is byte order unless a name holds
    undecodable bytes (surrogate escapes); only then is each name encoded to sort it.
    """
    out = list(names)
    joined = "".join(out)
    if joined.isascii() or not _SURROGATES.search(joined):
        out.sort()
    else:
        out.sort(key=name_key)
    return out


_SURROGATES = re.compile("[\udc80-\udcff]")


def _host_symlink(host: str) -> Symlink:
    try:
        return Symlink(os.readlink(host))
    except OSError as exc:
        raise HostFileError(f"{host}: cannot read the link ({exc.strerror})") from exc


def _host_source(host: str, st: os.stat_result) -> HostFile:
    inode = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
    return HostFile(host, st.st_size, st.st_mtime_ns, inode)


def host_entries(host: str) -> list[tuple[str, Node]]:
    """The entries of the host folder ``host``, in byte order of their names.

    Files are ``stat``-ed for their size, symlinks read, folders become unread
    :class:`Directory` nodes; sockets, fifos and devices are left out (Nanos cannot store
    them).  The entry's type comes from the listing, so only regular files cost a ``stat``.
    """
    try:
        with os.scandir(host) as it:
            listing = {entry.name: entry for entry in it}
    except OSError as exc:
        raise HostFileError(f"{host}: cannot list it ({exc.strerror})") from exc
    out: list[tuple[str, Node]] = []
    append = out.append
    for name in sorted_names(listing):
        entry = listing[name]
        try:
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                if st.st_nlink == 1:
                    source = HostFile(entry.path, st.st_size, st.st_mtime_ns)
                else:
                    source = _host_source(entry.path, st)
                append((name, File(source, _NO_ATTRIBUTES)))
            elif entry.is_dir(follow_symlinks=False):
                append((name, Directory(host=entry.path)))
            elif entry.is_symlink():
                append((name, _host_symlink(entry.path)))
        except OSError as exc:
            raise HostFileError(f"{entry.path}: cannot read it ({exc.strerror})") from exc
    return out


def _merge_host_dir(directory: Directory, host: str) -> None:
    """Put the entries of the host folder ``host`` into ``directory``: they replace entries
    of the same name, and folders that meet folders are merged (as far down as they meet)."""
    todo = [(directory, host)]
    while todo:
        into, folder = todo.pop()
        entries = into.entries
        for name, node in host_entries(folder):
            existing = entries.get(name)
            if isinstance(node, Directory) and isinstance(existing, Directory):
                assert node.host is not None
                if existing.loaded and not existing.entries:
                    entries[name] = Directory(attributes=existing.attributes, host=node.host)
                else:
                    todo.append((existing, node.host))
            else:
                entries[name] = node


class Tree:
    """A mutable file tree rooted at ``/``, built by absolute paths."""

    def __init__(self) -> None:
        self.root = Directory()

    # --- building ---------------------------------------------------------------------------

    def add(self, path: str, node: Node, *, replace: bool = True) -> None:
        """Put ``node`` at ``path``, creating parent directories as needed."""
        parts = split_path(path)
        if not parts:
            if isinstance(node, Directory):
                self.root.entries.update(node.entries)
                return
            raise InvalidInput("the root of an image can only be a directory")
        parent = self._directory(parts[:-1], create=True, path=path)
        name = parts[-1]
        existing = parent.entries.get(name)
        if existing is not None and not replace:
            raise InvalidInput(f"{path} is already in the image")
        if isinstance(existing, Directory) and isinstance(node, Directory):
            existing.entries.update(node.entries)
            if node.attributes:
                parent.entries[name] = Directory(existing.entries, node.attributes)
            return
        parent.entries[name] = node

    def add_directory(self, path: str) -> None:
        """Create the directory ``path`` (and its parents) if it does not exist."""
        self._directory(split_path(path), create=True, path=path)

    def add_file(self, path: str, source: Source | bytes | str, **attributes: Any) -> None:
        """Add a regular file from a :class:`HostFile`, bytes, or a host path string."""
        if isinstance(source, bytes):
            source = Contents(source)
        elif isinstance(source, str):
            source = HostFile.from_path(source)
        self.add(path, File(source, attributes or _NO_ATTRIBUTES))

    def add_symlink(self, path: str, target: str) -> None:
        """Add a symbolic link at ``path`` pointing to ``target``."""
        if not target or "\0" in target:
            raise InvalidInput(f"invalid symlink target {target!r} for {path}")
        self.add(path, Symlink(target))

    def add_hardlink(self, path: str, target: str) -> None:
        """Make ``path`` another name of the regular file at ``target`` (already in the tree)."""
        node = self.get(target)
        if isinstance(node, HardLink):
            target = node.target
            node = self.get(target)
        if not isinstance(node, File):
            raise InvalidInput(f"cannot hard-link {path} to {target}: not a regular file")
        self.add(path, HardLink("/" + "/".join(split_path(target))))

    def add_host_path(self, host_path: str | os.PathLike[str], path: str) -> None:
        """Copy a host file, symlink or directory tree to ``path``.

        Symlinks stay symlinks (their text is kept), names of one host inode become hard
        links of one file when the image is written, and sockets, fifos and devices are
        skipped: Nanos cannot store them.  A folder is read when its entries are first
        needed (see :class:`Directory`), and file contents when the image is written.
        """
        top = os.fspath(host_path)
        st = host_stat(top, follow_symlinks=False)
        parts = split_path(path)
        if stat.S_ISDIR(st.st_mode):
            self._add_host_dir(top, parts, path)
            return
        if stat.S_ISREG(st.st_mode):
            self.add("/" + "/".join(parts), File(_host_source(top, st), _NO_ATTRIBUTES))
        elif stat.S_ISLNK(st.st_mode):
            self.add("/" + "/".join(parts), _host_symlink(top))
        # sockets, fifos, devices: nothing

    def _add_host_dir(self, host: str, parts: list[str], path: str) -> None:
        if not parts:
            if self.root.loaded and not self.root.entries:
                self.root = Directory(attributes=self.root.attributes, host=host)
            else:
                _merge_host_dir(self.root, host)
            return
        parent = self._directory(parts[:-1], create=True, path=path)
        existing = parent.entries.get(parts[-1])
        if existing is None:
            parent.entries[parts[-1]] = Directory(host=host)
        elif isinstance(existing, Directory):
            if existing.loaded and not existing.entries:
                parent.entries[parts[-1]] = Directory(attributes=existing.attributes, host=host)
            else:
                _merge_host_dir(existing, host)
        else:
            self._directory(parts, create=True, path=path)  # raises: not a directory

    # --- reading ----------------------------------------------------------------------------

    def get(self, path: str) -> Node:
        """The node at ``path`` (symlinks are not followed)."""
        parts = split_path(path)
        node: Node = self.root
        for part in parts:
            if not isinstance(node, Directory) or part not in node.entries:
                raise InvalidInput(f"{path}: not in the image")
            node = node.entries[part]
        return node

    def lookup(self, path: str) -> tuple[str, Node]:
        """The node at ``path`` with symlinks and hard links followed, and its real path.

        Symlinks resolve inside the tree as the guest's kernel resolves them
        (:func:`pyops.rootfs.resolve`): absolute targets start at the tree's root, ``..``
        is taken in the real parent and stops at the root.
        """
        # The last directory reached: the resolver asks for its entries one after another.
        last: list[tuple[tuple[str, ...], Directory]] = [((), self.root)]

        def node_at(parts: tuple[str, ...]) -> Node | None:
            where, directory = last[0]
            if parts[:-1] != where:
                found: Node = self.root
                for name in parts[:-1]:
                    if not isinstance(found, Directory) or name not in found.entries:
                        return None
                    found = found.entries[name]
                if not isinstance(found, Directory):
                    return None
                directory = found
                last[0] = (parts[:-1], directory)
            child = directory.entries.get(parts[-1])
            if isinstance(child, Directory):
                last[0] = (parts, child)
            return child

        def mode(parts: tuple[str, ...]) -> int | None:
            node = node_at(parts)
            if node is None:
                return None
            if isinstance(node, Directory):
                return stat.S_IFDIR
            return stat.S_IFLNK if isinstance(node, Symlink) else stat.S_IFREG

        def readlink(parts: tuple[str, ...]) -> str:
            node = node_at(parts)
            assert isinstance(node, Symlink)
            return node.target

        try:
            found = rootfs.resolve(split_path(path), mode, readlink)
        except UnsafeLayerPath:
            raise InvalidInput(f"{path}: too many levels of symbolic links") from None
        if found.mode is None:
            raise InvalidInput(f"{path}: not in the image")
        node = node_at(found.parts) if found.parts else self.root
        assert node is not None
        if isinstance(node, HardLink):
            node = self.resolve_hardlink(node)
        return found.path, node

    def exists(self, path: str) -> bool:
        """Whether ``path`` is in the tree."""
        try:
            self.get(path)
        except InvalidInput:
            return False
        return True

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every node with its absolute path, depth first, names in byte order."""
        stack: list[tuple[str, Node]] = [("/", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if isinstance(node, Directory):
                base = path.rstrip("/")
                for name in reversed(sorted_names(node.entries)):
                    stack.append((f"{base}/{name}", node.entries[name]))

    def resolve_hardlink(self, link: HardLink) -> File:
        """The file a hard link names."""
        node = self.get(link.target)
        if not isinstance(node, File):
            raise InvalidInput(f"hard link target {link.target} is not a regular file")
        return node

    def _directory(self, parts: list[str], *, create: bool, path: str) -> Directory:
        node = self.root
        for i, part in enumerate(parts):
            child = node.entries.get(part)
            if child is None:
                if not create:
                    raise InvalidInput(f"{path}: not in the image")
                child = Directory()
                node.entries[part] = child
            elif not isinstance(child, Directory):
                where = "/" + "/".join(parts[: i + 1])
                raise InvalidInput(f"cannot create {path}: {where} is not a directory")
            node = child
        return node

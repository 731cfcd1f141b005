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
from pyops.nanos.gcpause import gc_paused


@dataclass(frozen=True, slots=True)
class HostFile:
    """File contents read from a file on the host when the image is written."""

    path: str
    size: int
    mtime_ns: int = 0
    """When it was last changed, as seen when it was added (0: unknown)."""

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


@dataclass(frozen=True, slots=True, eq=False)
class Directory:
    """A directory.  Its entries are changed only through :class:`Tree`."""

    entries: dict[str, Node] = field(default_factory=dict)
    attributes: Attributes = field(default_factory=dict)


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

        Symlinks stay symlinks (their text is kept), files that share an inode become hard
        links, and sockets, fifos and devices are skipped: Nanos cannot store them.
        File contents are read only when the image is written.
        """
        top = os.fspath(host_path)
        st = host_stat(top, follow_symlinks=False)
        parts = split_path(path)
        dest = "/" + "/".join(parts)
        inodes: dict[tuple[int, int], str] = {}
        if stat.S_ISDIR(st.st_mode):
            directory = self._directory(parts, create=True, path=path)
            with gc_paused():
                self._add_host_dir(top, directory, dest, inodes)
            return
        node = self._host_node(top, st, dest, inodes)
        if node is not None:
            self.add(dest, node)

    def _host_node(
        self, host: str, st: os.stat_result, path: str, inodes: dict[tuple[int, int], str]
    ) -> Node | None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return self._host_file(host, st, path, inodes)
        if stat.S_ISLNK(mode):
            return _host_symlink(host)
        return None  # sockets, fifos, devices

    @staticmethod
    def _host_file(
        host: str, st: os.stat_result, path: str, inodes: dict[tuple[int, int], str]
    ) -> Node:
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = inodes.get(key)
            if first is not None:
                return HardLink(first)
            inodes[key] = path
        return File(HostFile(host, st.st_size, st.st_mtime_ns), _NO_ATTRIBUTES)

    def _add_host_dir(
        self, host: str, directory: Directory, path: str, inodes: dict[tuple[int, int], str]
    ) -> None:
        # The hot loop of building a tree from a large folder: the entry's type comes from
        # the directory listing, so only regular files cost a stat (for their size).  The
        # walk is iterative (depth first, names in byte order), so any depth of folders works.
        stack = [self._host_listing(host, directory, path)]
        while stack:
            listing, names, children, base = stack[-1]
            for name in names:
                entry = listing[name]
                try:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if st.st_nlink == 1:
                            source = HostFile(entry.path, st.st_size, st.st_mtime_ns)
                            children[name] = File(source, _NO_ATTRIBUTES)
                        else:  # perhaps a hard link to a file met before
                            image_path = f"{base}/{name}"
                            children[name] = self._host_file(entry.path, st, image_path, inodes)
                    elif entry.is_dir(follow_symlinks=False):
                        sub = children.get(name)
                        if not isinstance(sub, Directory):
                            sub = Directory()
                            children[name] = sub
                        stack.append(self._host_listing(entry.path, sub, f"{base}/{name}"))
                        break
                    elif entry.is_symlink():
                        children[name] = _host_symlink(entry.path)
                    # sockets, fifos and devices are skipped: Nanos cannot store them
                except OSError as exc:
                    raise HostFileError(f"{entry.path}: cannot read it ({exc.strerror})") from exc
            else:
                stack.pop()

    @staticmethod
    def _host_listing(
        host: str, directory: Directory, path: str
    ) -> tuple[dict[str, os.DirEntry[str]], Iterator[str], dict[str, Node], str]:
        try:
            with os.scandir(host) as it:
                listing = {entry.name: entry for entry in it}
        except OSError as exc:
            raise HostFileError(f"{host}: cannot list it ({exc.strerror})") from exc
        return listing, iter(sorted_names(listing)), directory.entries, path.rstrip("/")

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

"""The index of an image's root: every entry its layers make, and where each regular
file's bytes are in the layers' uncompressed tars.

A package keeps a few hundred files of an image of thousands, so from-docker does not
unpack the image: it applies the layers to a root in memory (:class:`~pyops.oci.layers.Unpacker`
without a folder), which is this index, and writes only what the package keeps, copied out
of the tars. So it keeps, in the store:

- each layer's uncompressed tar, ``layers/sha256/<diff_id>`` (written in the same pass as
  the layer is applied, and moved into place once its digest matched the config's diff_id);
- the index, ``roots/<key>.json``: each entry's path, type, mode, time and size, a
  symlink's target, and for a regular file the layer and offset of its bytes (:data:`Row`).
  The key is a digest of the diff_ids in order and of the pyops version (whose rules made
  the root).

A later from-docker of an image made of the same layers reads the index instead of
applying them (:class:`IndexFiles`, a :class:`~pyops.rootfs.RootFiles`). Where the layers
are unpacked in a folder instead (:class:`pyops.ops.package._Unpacking` says when), the
folder is indexed once unpacked (:func:`write_index`): the two give the same index.

Both are pyops' own files, yet read as if they were not: a name with ``/``, NUL, ``.`` or
``..``, an entry whose folder is missing, a window past its tar's end, a tar whose size is
not the one recorded, an unknown type: the index is not used (and the layers are applied
again, which writes a new one). Deleting ``layers/`` and ``roots/`` loses nothing but time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyops import atomic, limits
from pyops.oci.store import Store
from pyops.rootfs import FileStat, Window
from pyops.version import __version__

log = logging.getLogger(__name__)

FORMAT = 1

Row = list[Any]
"""One entry of a root's index: ``[path, kind, mode, mtime_ns, size, extra]``, kind ``d``,
``f`` or ``l``; extra None for a folder, a link's target, or a file's ``[layer, offset,
group]`` (group: the same number for the names of one file, else 0). The first row is the
root, ``/``; a folder's row comes before those of what it holds."""

Contents = Mapping[int, tuple[int, int]]
"""Each unpacked regular file's inode: the layer (0-based) and the offset in that layer's
uncompressed tar where its bytes start."""


def layer_tar_path(store: Store, diff_id: str) -> Path:
    """Where the uncompressed tar of the layer ``diff_id`` is kept."""
    algorithm, _, encoded = diff_id.partition(":")
    return store.root / "layers" / algorithm / encoded


def index_path(store: Store, diff_ids: Sequence[str]) -> Path:
    """Where the index of the root the layers ``diff_ids`` make is kept."""
    material = json.dumps({"format": FORMAT, "pyops": __version__, "diff_ids": list(diff_ids)})
    return store.root / "roots" / (hashlib.sha256(material.encode()).hexdigest() + ".json")


class _Entry:
    """One entry of the root, as ``lstat`` would report it (:class:`~pyops.rootfs.FileStat`)."""

    __slots__ = ("st_ino", "st_mode", "st_mtime_ns", "st_nlink", "st_size", "target", "where")

    st_dev = 0

    def __init__(self, mode: int, mtime_ns: int, size: int, ino: int) -> None:
        self.st_mode = mode
        self.st_mtime_ns = mtime_ns
        self.st_size = size
        self.st_ino = ino
        self.st_nlink = 1
        self.target = ""  # a symlink's
        self.where: tuple[int, int] | None = None  # a regular file's (layer, offset)


class IndexFiles:
    """An image's root read from its index (:class:`~pyops.rootfs.RootFiles`); file bytes are
    read from the layers' uncompressed tars."""

    def __init__(self, entries: dict[str, _Entry], children: dict[str, list[str]],
                 tars: Sequence[Path]) -> None:  # fmt: skip
        self._entries = entries
        self._children = children
        self._tars = [os.fspath(t) for t in tars]

    def __len__(self) -> int:
        return len(self._entries)

    def paths(self) -> list[str]:
        """Every entry but the root, parents before children, names in order."""
        return sorted(p for p in self._entries if p != "/")

    def host(self, real: str) -> str:
        return real  # no host file holds it: messages name it as the image does

    def lstat(self, real: str) -> FileStat | None:
        return self._entries.get(real)

    def readlink(self, real: str) -> str:
        entry = self._entries.get(real)
        if entry is None or not stat.S_ISLNK(entry.st_mode):
            raise OSError(f"{real} is not a symbolic link")
        return entry.target

    def listdir(self, real: str) -> list[str]:
        names = self._children.get(real)
        if names is None:
            raise NotADirectoryError(real)
        return list(names)

    def window(self, real: str) -> Window:
        entry = self._entries.get(real)
        if entry is None or entry.where is None:
            raise OSError(f"{real} is not a regular file")
        layer, offset = entry.where
        return self._tars[layer], offset, entry.st_size


# ---------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True, slots=True)
class _Walked:
    path: str
    st: os.stat_result
    target: str


def _walk(root: str) -> Iterable[_Walked]:
    """Every entry below ``root`` (not following links), folders before their entries."""
    stack = [("/", root)]
    while stack:
        inside, host = stack.pop()
        with os.scandir(host) as listing:
            found = sorted(listing, key=lambda e: e.name)
        for entry in found:
            path = f"{inside.rstrip('/')}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            target = os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else ""
            yield _Walked(path, st, target)
            if stat.S_ISDIR(st.st_mode):
                stack.append((path, entry.path))


def host_rows(root: Path, contents: Contents) -> list[Row] | None:
    """The index of the unpacked ``root``, ``contents`` saying where each regular file's
    bytes are; None when some file's bytes are not known."""
    top = os.lstat(root)
    rows: list[Row] = [["/", "d", stat.S_IMODE(top.st_mode), top.st_mtime_ns, 0, None]]
    groups: dict[int, int] = {}
    for walked in _walk(os.fspath(root)):
        st = walked.st
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            rows.append([walked.path, "d", mode, st.st_mtime_ns, 0, None])
        elif stat.S_ISLNK(st.st_mode):
            rows.append([walked.path, "l", mode, st.st_mtime_ns, 0, walked.target])
        elif stat.S_ISREG(st.st_mode):
            where = contents.get(st.st_ino)
            if where is None:
                log.info("%s: no layer holds its bytes; the root is not indexed", walked.path)
                return None
            group = 0
            if st.st_nlink > 1:
                group = groups.setdefault(st.st_ino, len(groups) + 1)
            rows.append([walked.path, "f", mode, st.st_mtime_ns, st.st_size,
                         [where[0], where[1], group]])  # fmt: skip
        else:
            return None  # the unpacker makes no other kind
    return rows


def _document(store: Store, diff_ids: Sequence[str], rows: list[Row]) -> dict[str, Any] | None:
    tars = [layer_tar_path(store, d) for d in diff_ids]
    try:
        sizes = [t.stat().st_size for t in tars]
    except FileNotFoundError:
        return None
    return {
        "format": FORMAT,
        "layers": [[d, size] for d, size in zip(diff_ids, sizes, strict=True)],
        "entries": rows,
    }


def _save(store: Store, diff_ids: Sequence[str], document: dict[str, Any]) -> Path:
    path = index_path(store, diff_ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, json.dumps(document, separators=(",", ":")).encode())
    return path


def write_index(
    store: Store, root: Path, diff_ids: Sequence[str], contents: Contents
) -> Path | None:
    """Index the unpacked ``root`` of the layers ``diff_ids`` (their tars kept in ``store``),
    ``contents`` saying where each regular file's bytes are. None when some file's bytes
    are not known or some tar is missing (nothing is written then)."""
    rows = host_rows(root, contents)
    document = None if rows is None else _document(store, diff_ids, rows)
    return None if document is None else _save(store, diff_ids, document)


def save_index(store: Store, diff_ids: Sequence[str], rows: list[Row]) -> IndexFiles | None:
    """Keep ``rows``, the index of the root the layers ``diff_ids`` make (their tars kept in
    ``store``), and read it back as a :class:`IndexFiles`, checked as any index is. None
    when a tar is missing or the rows are not an index to trust; a failure to write the
    file only costs the next from-docker its unpack."""
    document = _document(store, diff_ids, rows)
    if document is None:
        return None
    try:
        index = _parse(document, store, diff_ids)
    except (_Bad, ValueError, TypeError, KeyError, IndexError, OSError) as exc:
        log.info("the root is not indexed: %s", exc)
        return None
    try:
        _save(store, diff_ids, document)
    except OSError as exc:
        log.info("cannot keep the root's index: %s", exc)
    return index


# ---------------------------------------------------------------------------------------
# Reading


class _Bad(Exception):
    pass


def _name_ok(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def load_index(store: Store, diff_ids: Sequence[str]) -> IndexFiles | None:
    """The index of the root the layers ``diff_ids`` make, None when there is none or it
    cannot be trusted (see the module doc)."""
    path = index_path(store, diff_ids)
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        return _parse(json.loads(raw), store, diff_ids)
    except (_Bad, ValueError, TypeError, KeyError, IndexError, OSError) as exc:
        log.info("the index %s is not used: %s", path, exc)
        return None


def _parse(document: Any, store: Store, diff_ids: Sequence[str]) -> IndexFiles:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _Bad("another format")
    layers = document["layers"]
    if [d for d, _ in layers] != list(diff_ids):
        raise _Bad("other layers")
    tars = [layer_tar_path(store, d) for d in diff_ids]
    sizes = []
    for tar, (_, size) in zip(tars, layers, strict=True):
        if not isinstance(size, int) or tar.stat().st_size != size:
            raise _Bad(f"{tar} is not the size recorded")
        sizes.append(size)
    rows = document["entries"]
    if not isinstance(rows, list) or len(rows) > limits.LAYER_ENTRIES.value() + 1:
        raise _Bad("too many entries")
    entries: dict[str, _Entry] = {}
    children: dict[str, list[str]] = {}
    links: dict[int, list[_Entry]] = {}
    for number, row in enumerate(rows):
        path, kind, mode, mtime_ns, size, extra = row
        if not (isinstance(path, str) and isinstance(mode, int) and isinstance(mtime_ns, int)
                and isinstance(size, int) and 0 <= mode <= 0o7777 and size >= 0):  # fmt: skip
            raise _Bad(f"entry {number} is malformed")
        if number == 0:
            if path != "/" or kind != "d":
                raise _Bad("the first entry is not the root")
            entries["/"] = _Entry(stat.S_IFDIR | mode, mtime_ns, 0, 1)
            children["/"] = []
            continue
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        if not path.startswith("/") or not _name_ok(name) or path in entries:
            raise _Bad(f"entry {number} has a bad name")
        if parent not in children:
            raise _Bad(f"entry {number} is not in a folder listed before it")
        ino = number + 1
        if kind == "d":
            entry = _Entry(stat.S_IFDIR | mode, mtime_ns, 0, ino)
            children[path] = []
        elif kind == "l":
            if not isinstance(extra, str) or "\0" in extra:
                raise _Bad(f"entry {number} is a bad link")
            entry = _Entry(stat.S_IFLNK | mode, mtime_ns, len(os.fsencode(extra)), ino)
            entry.target = extra
        elif kind == "f":
            layer, offset, group = extra
            if not (isinstance(layer, int) and isinstance(offset, int)
                    and isinstance(group, int) and 0 <= layer < len(tars)
                    and 0 <= offset and offset + size <= sizes[layer]):  # fmt: skip
                raise _Bad(f"entry {number} lies outside its layer")
            entry = _Entry(stat.S_IFREG | mode, mtime_ns, size, ino)
            entry.where = (layer, offset)
            if group:
                links.setdefault(group, []).append(entry)
        else:
            raise _Bad(f"entry {number} has an unknown type")
        entries[path] = entry
        children[parent].append(name)
    for group in links.values():  # hard links: one inode, as the unpacked root had
        first = group[0]
        for entry in group:
            if entry.where != first.where or entry.st_size != first.st_size:
                raise _Bad("hard links with different bytes")
            entry.st_ino = first.st_ino
            entry.st_nlink = len(group)
    return IndexFiles(entries, children, tars)

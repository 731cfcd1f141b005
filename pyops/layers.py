"""Applying image layers (tar, tar+gzip) to a directory, safely.

Rules from OCI image-spec ``layer.md`` (changesets, whiteouts, opaque whiteouts, hard links),
with the handling recorded in the reference doc section 5:

- members are applied in archive order, layer after layer; a whiteout ``.wh.NAME`` and an
  opaque marker ``.wh..wh..opq`` remove only entries of *lower* layers, never entries the same
  layer added (so a hard link made earlier in a layer survives a later whiteout of its target);
- every path is resolved inside the image root by pyops itself, one component at a time,
  following in-image symlinks with chroot semantics (absolute targets restart at the root,
  ``..`` stops at the root, 40 links at most). The host kernel never follows a link that came
  from a layer, so nothing can be written outside the destination;
- names with ``..`` are refused; a leading ``/`` is stripped (what tar does);
- device nodes and FIFOs are skipped (a 0/0 character device, an overlayfs-style whiteout,
  counts as a whiteout); setuid, setgid and sticky bits are cleared; ownership is not applied.

The resulting tree contains the image's symlinks as they are: callers must not open paths in
it through the host kernel without resolving them inside the root first (:func:`resolve_in_root`).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import zlib
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol

from pyops.errors import DigestMismatch, LayerError, UnsafeLayerPath
from pyops.progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_MAX_LINKS = 40  # Linux's ELOOP limit (MAXSYMLINKS)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16

Parts = tuple[str, ...]


class _ByteSource(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Reader:
    """A read-only stream that hashes what it reads (for the diff_id check)."""

    def __init__(self, raw: _ByteSource) -> None:
        self._raw = raw
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


class _Counting:
    """Wraps the compressed file to report how much of it has been read."""

    def __init__(self, raw: IO[bytes], progress: Progress, key: str) -> None:
        self._raw = raw
        self._progress = progress
        self._key = key

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self._progress.advance(self._key, len(data))
        return data

    def seek(self, offset: int, /) -> int:
        # Needed by GzipFile's protocol, used only to rewind, which pyops never does.
        return self._raw.seek(offset)


def split_image_path(name: str) -> Parts:
    """Split a member or link name into components, refusing ``..``.

    Leading ``/`` and ``./`` and ``.`` components are dropped, as tar does.
    """
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeLayerPath(f"{name!r} contains '..'; refused.")
    return parts


def resolve_in_root(root: Path, parts: Sequence[str], *, follow_last: bool = True) -> Parts:
    """Resolve an image path inside ``root`` without letting the host follow any link.

    Symlinks met on the way (all of them, or all but the last component when ``follow_last``
    is false) are read with ``readlink`` and followed inside the image: an absolute target
    restarts at the image root, ``..`` never climbs above it. Components that do not exist are
    kept as they are. Raises :class:`~pyops.errors.UnsafeLayerPath` after 40 links.
    """
    result: list[str] = []
    todo = deque(parts)
    links = 0
    while todo:
        name = todo.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            if result:
                result.pop()
            continue
        host = os.path.join(root, *result, name)
        try:
            mode = os.lstat(host).st_mode
        except (FileNotFoundError, NotADirectoryError):
            result.append(name)
            continue
        if stat.S_ISLNK(mode) and (todo or follow_last):
            links += 1
            if links > _MAX_LINKS:
                raise UnsafeLayerPath(
                    f"/{'/'.join(parts)}: too many levels of symbolic links inside the image."
                )
            target = os.readlink(host)
            if target.startswith("/"):
                result = []
            todo.extendleft(reversed(target.split("/")))
            continue
        result.append(name)
    return tuple(result)


class _Applier:
    """Applies layers to ``root``, keeping track of what the current layer added."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layer_label = ""
        self.added: set[Parts] = set()
        self.added_ancestors: set[Parts] = set()
        self.dir_attrs: dict[Parts, tuple[int, float]] = {}

    def host(self, parts: Parts) -> str:
        # Every component comes from split_image_path/resolve_in_root: no '..', no '/',
        # and no symlink in the middle, so the result is inside root.
        return os.path.join(self.root, *parts)

    def start_layer(self, label: str) -> None:
        self.layer_label = label
        self.added.clear()
        self.added_ancestors.clear()

    def _mark(self, parts: Parts) -> None:
        self.added.add(parts)
        for i in range(len(parts)):
            self.added_ancestors.add(parts[:i])

    def _error(self, member: str, what: str) -> LayerError:
        return LayerError(f"{self.layer_label}: member {member!r} {what}")

    # -- removing -----------------------------------------------------------------------------

    def _remove(self, parts: Parts) -> None:
        host = self.host(parts)
        try:
            mode = os.lstat(host).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            shutil.rmtree(host)  # does not follow symlinks inside the tree
        else:
            os.unlink(host)
        self.dir_attrs.pop(parts, None)

    def _remove_lower(self, parts: Parts) -> None:
        """Remove what lower layers put at ``parts``, keeping this layer's own entries."""
        host = self.host(parts)
        try:
            mode = os.lstat(host).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        if parts in self.added or parts in self.added_ancestors:
            if stat.S_ISDIR(mode):
                for child in sorted(os.listdir(host)):
                    self._remove_lower((*parts, child))
            return
        self._remove(parts)

    def whiteout(self, member: str, directory: Parts, name: str) -> None:
        parent = resolve_in_root(self.root, directory)
        self._remove_lower((*parent, name))

    def opaque(self, directory: Parts) -> None:
        parent = resolve_in_root(self.root, directory)
        host = self.host(parent)
        if not os.path.isdir(host) or os.path.islink(host):
            return
        for child in sorted(os.listdir(host)):
            self._remove_lower((*parent, child))

    # -- adding -------------------------------------------------------------------------------

    def _parent_dirs(self, member: str, parent: Parts) -> None:
        for i in range(1, len(parent) + 1):
            host = self.host(parent[:i])
            try:
                mode = os.lstat(host).st_mode
            except FileNotFoundError:
                os.mkdir(host, 0o755)
                continue
            if not stat.S_ISDIR(mode):
                raise self._error(member, f"needs /{'/'.join(parent[:i])} to be a directory.")

    def _target(self, member: str, parts: Parts) -> Parts:
        parent = resolve_in_root(self.root, parts[:-1])
        self._parent_dirs(member, parent)
        return (*parent, parts[-1])

    def directory(self, info: tarfile.TarInfo, parts: Parts) -> None:
        target = self._target(info.name, parts)
        host = self.host(target)
        if not os.path.isdir(host) or os.path.islink(host):
            self._remove(target)
            os.mkdir(host, 0o755)
        # Modes are applied at the end, so a read-only directory can still be filled.
        self.dir_attrs[target] = (info.mode & 0o777, info.mtime)
        self._mark(target)

    def regular(self, info: tarfile.TarInfo, parts: Parts, data: IO[bytes] | None) -> None:
        target = self._target(info.name, parts)
        self._remove(target)
        host = self.host(target)
        # O_EXCL together with O_CREAT never follows a symlink at the last component.
        fd = os.open(
            host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600
        )
        written = 0
        with os.fdopen(fd, "wb") as out:
            if data is not None:
                try:
                    while chunk := data.read(_CHUNK):
                        out.write(chunk)
                        written += len(chunk)
                except (tarfile.ReadError, EOFError, OSError, zlib.error) as exc:
                    raise self._error(info.name, f"is truncated or corrupt: {exc}") from exc
        if written != info.size:
            raise self._error(info.name, f"has {written} of its {info.size} bytes; truncated.")
        os.chmod(host, info.mode & 0o777)  # no setuid/setgid/sticky on the host
        os.utime(host, (info.mtime, info.mtime))
        self._mark(target)

    def symlink(self, info: tarfile.TarInfo, parts: Parts) -> None:
        target = self._target(info.name, parts)
        self._remove(target)
        # Stored as is; it is only ever resolved inside the image (resolve_in_root).
        os.symlink(info.linkname, self.host(target))
        if os.utime in os.supports_follow_symlinks:
            os.utime(self.host(target), (info.mtime, info.mtime), follow_symlinks=False)
        self._mark(target)

    def hardlink(self, info: tarfile.TarInfo, parts: Parts) -> None:
        try:
            link_parts = split_image_path(info.linkname)
        except UnsafeLayerPath as exc:
            raise UnsafeLayerPath(
                f"{self.layer_label}: hard link {info.name!r} points to {info.linkname!r}, "
                "which contains '..'; refused."
            ) from exc
        if not link_parts:
            raise self._error(info.name, "is a hard link without a target.")
        source = resolve_in_root(self.root, link_parts, follow_last=False)
        try:
            mode = os.lstat(self.host(source)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise self._error(
                info.name, f"is a hard link to /{'/'.join(link_parts)}, which does not exist."
            ) from None
        if stat.S_ISDIR(mode):
            raise self._error(info.name, "is a hard link to a directory; refused.")
        target = self._target(info.name, parts)
        if target == source:
            self._mark(target)
            return
        self._remove(target)
        os.link(self.host(source), self.host(target), follow_symlinks=False)
        self._mark(target)


def unpack_layers(
    layers: Sequence[Path],
    dest_root: Path,
    *,
    diff_ids: Sequence[str] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> None:
    """Apply layer tarballs (plain or gzip) in order to ``dest_root``.

    ``dest_root`` is created if needed; it is the image's ``/``. When ``diff_ids`` (from the
    image config's ``rootfs``) are given, the uncompressed stream of each layer must match
    them. Raises :class:`~pyops.errors.UnsafeLayerPath` for members that would escape the
    root, :class:`~pyops.errors.LayerError` for corrupt, truncated or zstd layers, and
    :class:`~pyops.errors.DigestMismatch` for a diff_id mismatch; the destination is then
    partly written and must be thrown away.
    """
    if diff_ids is not None and len(diff_ids) != len(layers):
        raise LayerError(
            f"the image config lists {len(diff_ids)} diff_ids for {len(layers)} layers."
        )
    dest_root.mkdir(parents=True, exist_ok=True)
    applier = _Applier(Path(os.path.realpath(dest_root)))
    for number, path in enumerate(layers, start=1):
        label = f"layer {number} ({path.name[:12]})"
        key = f"unpack:{number}:{path}"
        progress.start(key, f"unpacking {label}", path.stat().st_size)
        try:
            digest = _apply_layer(applier, path, label, progress, key)
        finally:
            progress.finish(key)
        if diff_ids is not None and digest != diff_ids[number - 1]:
            raise DigestMismatch(
                f"{label}: its uncompressed content has digest {digest}, but the image config "
                f"says {diff_ids[number - 1]}."
            )
    # Deepest first, so that a read-only parent does not stop a child's update.
    for parts, (mode, mtime) in sorted(applier.dir_attrs.items(), key=lambda i: -len(i[0])):
        host = applier.host(parts)
        if os.path.isdir(host) and not os.path.islink(host):
            os.chmod(host, mode)
            os.utime(host, (mtime, mtime))


def _apply_layer(applier: _Applier, path: Path, label: str, progress: Progress, key: str) -> str:
    applier.start_layer(label)
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_ZSTD_MAGIC):
            raise LayerError(
                f"{label} is compressed with zstd (application/vnd.oci.image.layer.v1.tar+zstd), "
                "which pyops cannot decompress.",
                hint="Push the image with gzip layers (skopeo copy --dest-compress-format gzip).",
            )
        counted = _Counting(raw, progress, key)
        stream: _ByteSource
        if magic.startswith(_GZIP_MAGIC):
            # GzipFile reads multi-member streams too (pigz, estargz).
            stream = gzip.GzipFile(fileobj=counted, mode="rb")
        else:
            stream = counted
        reader = _Reader(stream)
        try:
            _apply_tar(applier, reader, label)
            reader.drain()
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise LayerError(f"{label} is truncated or corrupt: {exc}") from exc
    return f"sha256:{reader.hasher.hexdigest()}"


def _apply_tar(applier: _Applier, reader: _Reader, label: str) -> None:
    try:
        archive = tarfile.open(fileobj=reader, mode="r|")  # type: ignore[call-overload]
    except tarfile.ReadError as exc:
        raise LayerError(f"{label} is not a tar archive: {exc}") from exc
    members = 0
    iterator = iter(archive)
    while True:
        try:
            info = next(iterator)
        except StopIteration:
            break
        except tarfile.ReadError as exc:
            # umoci 0.4.7 writes tars without end-of-archive blocks or final padding (umoci
            # #436); GNU tar refuses them, Go tools accept them. Tolerate it after a complete
            # member, which is all such a tar lacks.
            if members:
                log.warning("%s: the tar ends without end-of-archive blocks (%s)", label, exc)
                break
            raise LayerError(f"{label} is not a valid tar archive: {exc}") from exc
        except (EOFError, zlib.error, gzip.BadGzipFile):
            raise
        members += 1
        _apply_member(applier, archive, info, label)
    archive.close()


def _apply_member(
    applier: _Applier, archive: tarfile.TarFile, info: tarfile.TarInfo, label: str
) -> None:
    try:
        parts = split_image_path(info.name)
    except UnsafeLayerPath as exc:
        raise UnsafeLayerPath(
            f"{label}: member {info.name!r} contains '..' and would escape the image root; "
            "refused.",
            hint="The image is malformed or malicious.",
        ) from exc
    if not parts:
        return  # "./" itself
    name = parts[-1]
    if name.startswith(_WHITEOUT):
        if name == _OPAQUE:
            applier.opaque(parts[:-1])
        elif name == _WHITEOUT:
            raise LayerError(f"{label}: member {info.name!r} is an invalid whiteout.")
        else:
            applier.whiteout(info.name, parts[:-1], name[len(_WHITEOUT) :])
        return
    if info.isdir():
        applier.directory(info, parts)
    elif info.isreg():
        applier.regular(info, parts, archive.extractfile(info))
    elif info.issym():
        applier.symlink(info, parts)
    elif info.islnk():
        applier.hardlink(info, parts)
    elif info.ischr() and info.devmajor == 0 and info.devminor == 0:
        # overlayfs-style whiteout exported as is by some broken tools (doc section 5.2).
        applier.whiteout(info.name, parts[:-1], name)
    elif info.isdev():
        log.debug("%s: skipping device or FIFO %s", label, info.name)
    else:
        log.warning("%s: skipping %s of unknown type %r", label, info.name, info.type)

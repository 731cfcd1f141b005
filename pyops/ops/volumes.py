"""The volume store: TFS volumes under ``PYOPS_HOME/volumes`` that a guest mounts, like Ops's.

A volume is a bare TFS filesystem (no boot sector, as Nanos ``mkfs`` without ``-b``) kept in
the file ``NAME:UUID.raw``, labelled ``NAME``: the layout of Ops's ``CreateLocalVolume``
(``lepton/volume.go``), so volumes can move between the two tools.  It is attached to a VM as
an extra disk, and the root tuple's ``mounts`` says where the guest mounts it.

How Nanos finds it (``src/kernel/init.c``: a disk without a root filesystem partition is
probed for its UUID and label and added with ``volume_add``; the root tuple's ``mounts`` is
handed to ``storage_set_mountpoints``; ``src/kernel/storage.c``, ``volume_match``): a key of
``mounts`` names a volume by ``%N`` (its attachment number), by its label (compared exactly),
or by its UUID written ``00112233-4455-6677-8899-aabbccddeeff`` (hex digits of the 16 bytes
in order, either case).  The value is the mount point, a folder of the root filesystem that
must exist and is not ``/``; ``:ro`` in it mounts the volume read-only and ends the path.

:func:`mounts_manifest` names volumes by UUID.  A UUID is 36 characters and a label at most
31 bytes, so a UUID key can only ever match the one volume of that UUID, whereas a label key
mounts every attached disk carrying that label (a copy of the volume, or a volume made by
another tool with the same label) on the same folder.

Every file of the folder is untrusted: names that do not parse are ignored, and a file named
like a volume whose first sector is not a TFS header naming the same UUID is left out of
listings with a warning (it cannot be mounted by that UUID), though it can still be deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import stat
import uuid as _uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyops import atomic
from pyops import home as _home
from pyops.errors import (
    ConfigError,
    DiskFull,
    FilesystemFull,
    HostFileError,
    ImageFormatError,
    InvalidInput,
    VolumeError,
)
from pyops.progress import NULL_PROGRESS, Progress

if TYPE_CHECKING:
    from pyops.nanos.disk import DiskImage
    from pyops.nanos.tfs import VolumeInfo
    from pyops.nanos.tree import Tree

try:
    import fcntl
except ImportError:  # not a POSIX system: creating volumes is not serialised
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

NAME_MAX = 31
"""The longest name: the label Nanos stores is at most 31 bytes (``VOLUME_LABEL_MAX_LEN``)."""

NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}")
"""A volume name: ASCII letters, digits, ``.``, ``_`` and ``-``, not starting with ``.``,
``_`` or ``-``; so no ``/`` or ``:`` (the file name's separator), no ``%`` (Nanos reads
``%N`` as an attachment number) and never the 36 characters of a UUID."""

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""A UUID in the text form Nanos prints (``print_uuid``) and matches."""

_FILE_NAME = re.compile(rf"({NAME_PATTERN.pattern}):({UUID_PATTERN.pattern})\.raw")
_LOCK_NAME = ".lock"
_READ_ONLY = ":ro"

VOLUME_HINT = "pyops volume list shows the volumes; pyops volume create NAME -d DIR makes one"


@dataclass(frozen=True, slots=True)
class Volume:
    """One volume of the store."""

    name: str
    uuid: str
    """Its UUID in the text form Nanos prints and matches (lowercase, with hyphens)."""
    label: str
    """The label stored in the volume (its name, unless another tool wrote it otherwise)."""
    path: Path
    size: int
    """Bytes the file claims (volumes are sparse: less is used on disk)."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary."""
        return {
            "name": self.name,
            "uuid": self.uuid,
            "label": self.label,
            "path": os.fspath(self.path),
            "size": self.size,
        }


def volumes_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Where volumes live."""
    return _home.volumes_dir(home)


def check_name(name: str) -> str:
    """``name`` if it is a valid volume name, else :class:`InvalidInput` saying why."""
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        why = "it is empty" if name == "" else _name_problem(str(name))
        raise InvalidInput(
            f"invalid volume name {name!r}: {why}",
            hint=f"use up to {NAME_MAX} letters, digits, '.', '_' and '-', "
            "starting with a letter or digit",
        )
    return name


def _name_problem(name: str) -> str:
    if len(name) > NAME_MAX:
        return f"it is {len(name)} characters long, and a volume label holds at most {NAME_MAX}"
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        return "it contains " + ", ".join(repr(c) for c in bad)
    return f"it starts with {name[0]!r}"


def _parse_file_name(file_name: str) -> tuple[str, str] | None:
    match = _FILE_NAME.fullmatch(file_name)
    return (match.group(1), match.group(2)) if match else None


# --- creating -------------------------------------------------------------------------------


def create_volume(
    name: str,
    source: str | os.PathLike[str] | None = None,
    size: int | None = None,
    home: str | os.PathLike[str] | None = None,
    *,
    uuid: bytes | None = None,
    progress: Progress = NULL_PROGRESS,
) -> Volume:
    """Make the volume ``name``: a TFS volume labelled ``name`` holding the folder ``source``
    (its content at the volume's root, recursively, as Ops's ``volume create -d DIR``) or
    nothing, stored as ``<volumes>/NAME:UUID.raw``.

    A volume is an identity, as in Ops: it gets a fresh random UUID, so two volumes made from
    the same folder are two volumes, and the guest mounts the one it is given by UUID.
    ``uuid`` (16 bytes) fixes it instead, for tests.  ``size`` is the volume's size in bytes
    (rounded up to a sector); without it, C mkfs's rule leaves 512 KiB to 1 MiB free, so give
    one for a volume the guest writes to.

    Symlinks stay symlinks, files sharing an inode become hard links, and sockets, fifos and
    devices are left out.  The file appears complete or not at all: an unreadable folder, a
    size too small for the content or a full disk leave nothing behind.  A volume of that name
    already there is an error, never replaced.
    """
    check_name(name)
    raw_uuid = _check_uuid(uuid) if uuid is not None else _uuid.uuid4().bytes
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise InvalidInput(f"invalid volume size {size!r}: give a positive number of bytes")
    tree = _source_tree(source)
    folder = volumes_dir(home)
    text = _uuid_text(raw_uuid)
    dest = folder / f"{name}:{text}.raw"
    with _locked(folder):
        taken = [path for path, taken_name, _ in _volume_files(folder) if taken_name == name]
        if taken:
            raise VolumeError(
                f"a volume named {name!r} already exists: {taken[0]}",
                hint=f"pick another name, or delete it first: pyops volume delete {name}",
            )
        info = _write(dest, tree, name, raw_uuid, size, progress)
    return Volume(name, text, info.label, dest, info.size)


def _check_uuid(raw: bytes) -> bytes:
    if not isinstance(raw, bytes) or len(raw) != 16:
        raise InvalidInput("a volume UUID is 16 bytes")
    return raw


def _uuid_text(raw: bytes) -> str:
    """A UUID in Nanos's text form (``print_uuid``): the 16 bytes in order, lowercase hex."""
    from pyops.nanos.tfs import format_uuid as tfs_format_uuid

    return tfs_format_uuid(raw)


def _source_tree(source: str | os.PathLike[str] | None) -> Tree:
    from pyops.nanos.tree import Tree

    tree = Tree()
    if source is None:
        return tree
    top = os.fspath(source)
    try:
        st = os.stat(top)
    except FileNotFoundError:
        raise HostFileError(f"{top}: no such folder") from None
    except OSError as exc:
        raise HostFileError(f"{top}: cannot read it ({exc.strerror})") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise HostFileError(f"{top} is not a folder", hint="a volume is made from a folder: -d DIR")
    # A link to a folder names that folder: its content goes in, not the link.
    tree.add_host_path(os.path.realpath(top), "/")
    return tree


def _write(
    dest: Path, tree: Tree, name: str, raw_uuid: bytes, size: int | None, progress: Progress
) -> VolumeInfo:
    from pyops.nanos.disk import write_raw_volume
    from pyops.nanos.tree import File

    try:
        return write_raw_volume(dest, tree, label=name, uuid=raw_uuid, size=size, progress=progress)
    except FilesystemFull as exc:
        if not exc.needed:
            raise
        error = FilesystemFull(
            f"volume {name!r} does not fit in {size} bytes: its content needs at least "
            f"{exc.needed} bytes ({exc.needed / 1048576:.1f} MiB)",
            hint=f"give a size of at least {_size_text(exc.needed)}, "
            "or none to size the volume to its content",
        )
        error.needed = exc.needed
        raise error from exc
    except DiskFull as exc:
        need = sum(n.size for _, n in tree.walk() if isinstance(n, File))
        raise atomic.disk_full(dest, need) from exc


def _size_text(n: int) -> str:
    """``n`` bytes rounded up to a size the command line takes (``-s``): KiB or MiB."""
    mib = -(-n // (1 << 20))
    return f"{mib}M" if n >= 1 << 20 else f"{-(-n // 1024)}k"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The store's lock, held while a volume is created or deleted, so that two processes
    cannot both take one name."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic.reporting_disk_full(folder / _LOCK_NAME):
            fd = os.open(folder / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise HostFileError(f"cannot use the volume folder {folder}: {exc.strerror}") from exc
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- listing and finding ---------------------------------------------------------------------


def _volume_files(folder: Path) -> list[tuple[Path, str, str]]:
    """The regular files of ``folder`` named like volumes, with the name and UUID their names
    give, sorted by file name (links, folders and anything else are ignored)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise HostFileError(f"cannot list the volume folder {folder}: {exc.strerror}") from exc
    out = []
    for entry in entries:
        parsed = _parse_file_name(entry.name)
        if parsed is None:
            continue
        try:
            regular = entry.is_file(follow_symlinks=False)
        except OSError:
            regular = False
        if regular:
            out.append((Path(entry.path), *parsed))
        else:
            log.debug("%s: ignored: not a regular file", entry.path)
    return sorted(out, key=lambda found: found[0].name)


def _read_volume_file(path: Path, name: str, text: str) -> Volume:
    """The volume in ``path``, from its name and its first sector; ImageFormatError or
    HostFileError when it cannot be mounted by the UUID its name gives."""
    from pyops.nanos.tfs import read_identity

    try:
        # Not following a link, not waiting on a fifo: the file may have been swapped.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImageFormatError("it is not a regular file")
            raw, label = read_identity(f, 0, st.st_size)
    except OSError as exc:
        raise HostFileError(f"cannot read it ({exc.strerror})") from exc
    if _uuid_text(raw) != text:
        raise ImageFormatError(f"the volume in it has the UUID {_uuid_text(raw)}")
    return Volume(name, text, label, path, st.st_size)


def list_volumes(home: str | os.PathLike[str] | None = None) -> list[Volume]:
    """Every volume of the store, by name (then UUID).

    Files not named ``NAME:UUID.raw`` are ignored; a file so named that does not start with
    a TFS header of that UUID is left out with a warning.
    """
    out = []
    for path, name, text in _volume_files(volumes_dir(home)):
        try:
            out.append(_read_volume_file(path, name, text))
        except (ImageFormatError, HostFileError) as exc:
            log.warning("%s: not listed: not a usable volume: %s", path, exc)
    return out


def find_volume(name_or_uuid: str, home: str | os.PathLike[str] | None = None) -> Volume:
    """The volume named ``name_or_uuid``, or whose UUID it is (either case).

    An unknown one, or a name several volumes share (Ops lets two volumes have one name),
    raises :class:`VolumeError` listing the volumes there are.
    """
    volumes = list_volumes(home)
    wanted = name_or_uuid.lower() if UUID_PATTERN.fullmatch(name_or_uuid.lower()) else None
    if wanted is not None:
        found = [v for v in volumes if v.uuid == wanted]
    else:
        found = [v for v in volumes if v.name == name_or_uuid]
    if len(found) == 1:
        return found[0]
    if found:
        raise _ambiguous(name_or_uuid, [v.uuid for v in found])
    raise _unknown(name_or_uuid, volumes, home)


def _ambiguous(name: str, uuids: Sequence[str]) -> VolumeError:
    return VolumeError(
        f"{len(uuids)} volumes are named {name!r} (UUIDs {', '.join(uuids)})",
        hint="name the one you mean by its UUID",
    )


def _unknown(
    name_or_uuid: str, volumes: Sequence[Volume], home: str | os.PathLike[str] | None
) -> VolumeError:
    known = ", ".join(f"{v.name} ({v.uuid})" for v in volumes) or "none"
    what = "with the UUID" if UUID_PATTERN.fullmatch(name_or_uuid.lower()) else "named"
    return VolumeError(
        f"no volume {what} {name_or_uuid!r} in {volumes_dir(home)} (volumes: {known})",
        hint=VOLUME_HINT,
    )


def delete_volume(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Delete the volume ``name`` (or of that UUID) and return the path it had.

    A file named like the volume but unreadable as one is deleted too: that is how to get rid
    of a volume a crash or another program spoiled.
    """
    folder = volumes_dir(home)
    wanted = name.lower()
    by_uuid = UUID_PATTERN.fullmatch(wanted) is not None
    with _locked(folder):
        matches = [
            (path, text)
            for path, file_name, text in _volume_files(folder)
            if (text == wanted if by_uuid else file_name == name)
        ]
        if not matches:
            raise _unknown(name, list_volumes(home), home)
        if len(matches) > 1:
            raise _ambiguous(name, [text for _, text in matches])
        path = matches[0][0]
        from pyops.ops.instances import check_volumes_free

        check_volumes_free([os.fspath(path)], home)  # not while a machine uses it
        try:
            path.unlink()
        except OSError as exc:
            raise HostFileError(f"cannot delete {path}: {exc.strerror}") from exc
    return path


def open_volume(name_or_uuid: str, home: str | os.PathLike[str] | None = None) -> DiskImage:
    """The volume opened for reading (:func:`pyops.nanos.disk.open_image`): its tree, files
    and root tuple."""
    from pyops.nanos.disk import open_image

    return open_image(find_volume(name_or_uuid, home).path)


# --- mounting -------------------------------------------------------------------------------


def mount_point(path: str) -> str:
    """The folder a ``mounts`` value names: the text before ``:ro``, as Nanos reads it."""
    at = path.find(_READ_ONLY)
    return path if at <= 0 else path[:at]


def parse_mounts(items: Sequence[str]) -> dict[str, str]:
    """``--mounts`` values, ``VOLUME:/guest/path``, as a dict volume -> guest path.

    Ops's rules (``AddMounts``, ``lepton/volume.go``): split on ``:``; the first part names
    the volume (its name, label or UUID, as given), the second must start with ``/``, and the
    rest is joined back with ``:`` (so ``data:/mnt:ro`` mounts ``/mnt`` read-only); a volume
    given twice is refused.  Besides Ops's, an empty volume, a mount at ``/`` (Nanos refuses
    it), ``:ro`` anywhere but at the end (Nanos would cut the path there), and two volumes on
    one folder are refused too.
    """
    mounts: dict[str, str] = {}
    by_folder: dict[str, str] = {}
    usage = "write VOLUME:/guest/path, for example data:/mnt/data"
    for item in items:
        parts = item.split(":")
        if len(parts) < 2:
            raise ConfigError(
                f"invalid mount {item!r}: missing parts (no ':' between volume and path)",
                hint=usage,
            )
        name, path = parts[0], ":".join(parts[1:])
        if not name:
            raise ConfigError(f"invalid mount {item!r}: no volume before the ':'", hint=usage)
        if not path.startswith("/"):
            raise ConfigError(
                f"invalid mount {item!r}: the guest path must be absolute (start with '/')",
                hint=usage,
            )
        if "\0" in item:
            raise ConfigError(f"invalid mount {item!r}: it contains a NUL byte", hint=usage)
        folder = mount_point(path)
        if folder != path and path[len(folder) :] != _READ_ONLY:
            raise ConfigError(
                f"invalid mount {item!r}: Nanos reads ':ro' as 'read-only' and ends the path "
                "there, so it may only come last",
                hint="rename the guest folder, or put ':ro' at the end",
            )
        normal = posixpath.normpath(folder)
        normal = "/" + normal.lstrip("/")  # normpath keeps a leading '//'
        if normal == "/":
            raise ConfigError(
                f"invalid mount {item!r}: a volume cannot be mounted at '/', the root "
                "filesystem is there",
                hint="mount it at a folder, for example /data",
            )
        if name in mounts:
            raise ConfigError(
                f"invalid mount {item!r}: volume {name!r} is already mounted at "
                f"{mounts[name]} (mount path occupied); a volume is mounted once",
                hint="give each volume one --mounts",
            )
        if normal in by_folder:
            raise ConfigError(
                f"invalid mount {item!r}: {normal} is already the mount point of volume "
                f"{by_folder[normal]!r}",
                hint="mount each volume at its own folder",
            )
        mounts[name] = path
        by_folder[normal] = name
    return mounts


def resolve_mounts(
    mounts: Mapping[str, str], home: str | os.PathLike[str] | None = None
) -> dict[str, Volume]:
    """The volumes a :func:`parse_mounts` result names, as guest path -> :class:`Volume`:
    each found by name or UUID in the store; one volume named twice (by its name and its
    UUID) is refused."""
    out: dict[str, Volume] = {}
    seen: dict[str, str] = {}
    for key, path in mounts.items():
        volume = find_volume(key, home)
        if volume.uuid in seen:
            raise VolumeError(
                f"volume {volume.name!r} ({volume.uuid}) is mounted twice: as "
                f"{seen[volume.uuid]!r} and as {key!r}",
                hint="give each volume one --mounts",
            )
        seen[volume.uuid] = key
        out[path] = volume
    return out


def mounts_manifest(mounts: Mapping[str, Volume]) -> dict[str, str]:
    """The root tuple's ``mounts`` for ``mounts`` (guest path -> volume): UUID -> guest path.

    Each volume is named by its UUID, which only that volume can match (see the module's
    documentation); the guest paths are kept as given, ``:ro`` included.  The image must
    hold each :func:`mount_point` as a folder: Nanos refuses to mount on a missing one.
    """
    out: dict[str, str] = {}
    for path, volume in mounts.items():
        if UUID_PATTERN.fullmatch(volume.uuid) is None:
            raise VolumeError(f"volume {volume.name!r} has an invalid UUID {volume.uuid!r}")
        if volume.uuid in out:
            raise VolumeError(
                f"volume {volume.name!r} ({volume.uuid}) is mounted twice: at "
                f"{out[volume.uuid]} and at {path}",
                hint="mount each volume once",
            )
        out[volume.uuid] = path
    return out


__all__ = [
    "NAME_MAX",
    "Volume",
    "check_name",
    "create_volume",
    "delete_volume",
    "find_volume",
    "list_volumes",
    "mount_point",
    "mounts_manifest",
    "open_volume",
    "parse_mounts",
    "resolve_mounts",
    "volumes_dir",
]

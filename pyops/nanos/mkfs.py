"""``mkfs``: Nanos's own image maker, from a manifest text, as its ``tools/mkfs.c`` makes it.

Nanos's ``mkfs [options] IMAGE < MANIFEST`` reads a manifest text (see
:mod:`pyops.nanos.manifest_text`) and writes a TFS volume, or with ``-b`` a bootable disk:
boot.img, the 4 KiB klog area, a 12 MiB boot filesystem and the root filesystem. This module
does the same, with pyops's TFS writer (nanos-image-format.md sections 1.8 and 4.2):

1. The root tuple is the manifest's last tuple (``-e``: ``(children:())``, no manifest).
2. Each ``-t`` tuple's entries replace the root's, in order.
3. ``imagesize`` is taken out of the root: the image size, as ``-s`` (which it overrides).
   ``coredumplimit``, when larger, is the size instead; it stays in the root.
4. The boot filesystem: with ``-k KERNEL``, ``boot.children.kernel`` is that file (other
   ``boot`` entries, such as ``klib``, stay); without it a root ``children.kernel`` is used
   (for old manifests). ``boot`` is taken out of the root.
5. Every tuple with ``contents:(host:PATH)`` is a file holding PATH's bytes (resolved in
   ``-r TARGET_ROOT`` first, as mkfs does); ``contents`` is dropped and every other entry is
   kept as it is (``readonly:t``, ``linktarget:...``). Vectors are kept as they are.

Entries are written in byte order of their names, so the same manifest always gives the same
metadata; Nanos's mkfs writes them in hash-table order, which changes from run to run, and
no reader gives the order a meaning. UUIDs are random, as Nanos's are. With the entry order of
a Nanos image, the bytes are those of Nanos's mkfs, but for the UUIDs.

Where Nanos's mkfs would crash, hang or write an image nothing can use, this one refuses
with an error saying why: a root without ``children`` and without a boot filesystem (with
one, such a root is written, with a warning, as mkfs writes it), ``contents`` that is not a
tuple, a host path that is a folder, names in a ``children`` tuple that cannot be file
names, ``-e`` with ``-b``, ``-k``, ``-u`` or ``-t`` (which mkfs ignores or crashes on), and
a boot filesystem without ``-b`` (Nanos's mkfs writes it at byte 0, in front of the root
filesystem, where nothing finds either). ``-u`` writes an EFI System Partition
(:mod:`pyops.nanos.esp`).
"""

from __future__ import annotations

import os
import stat
import struct
import uuid as _uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyops.errors import HostFileError, InvalidInput, ReleaseError
from pyops.nanos.boot import (
    PARTITION_TABLE,
    REGION_FILESYSTEM,
    REGION_TYPE_FIELD,
    STAGE2_SIZE_FIELD,
)
from pyops.nanos.disk import (
    BOOTFS_SIZE,
    KLOG_SIZE,
    PARTITION_ESP,
    PARTITION_LINUX,
    atomic_output,
    partition_entry,
)
from pyops.nanos.manifest_text import parse_manifest, parse_tuples
from pyops.nanos.tfs import (
    SECTOR,
    SLACK,
    FileEntry,
    VolumeInfo,
    check_label,
    format_uuid,
    write_volume,
)
from pyops.nanos.tree import Contents, HostFile, Source, sorted_names
from pyops.progress import NULL_PROGRESS, Progress

_SYMLINK_HOPS = 40  # as the kernel's ELOOP


@dataclass(frozen=True, slots=True)
class MkfsOptions:
    """Nanos mkfs's command-line options."""

    boot_image: str | None = None
    """``-b``: the boot.img to put in front (makes a bootable disk)."""
    kernel: str | None = None
    """``-k``: the kernel, stored as ``/kernel`` of the boot filesystem."""
    uefi_loader: str | None = None
    """``-u``: a UEFI loader (``bootx64.efi``/``bootaa64.efi``) for an EFI System Partition."""
    label: str = ""
    """``-l``: the root filesystem's label."""
    target_root: str | None = None
    """``-r``: a folder in which ``host:`` paths are looked up first."""
    size: int | None = None
    """``-s``: the smallest image size in bytes (see :func:`image_size`)."""
    tuples: tuple[str, ...] = ()
    """``-t``: tuples whose entries are added to (or replace those of) the root."""
    empty: bool = False
    """``-e``: an empty filesystem, ``(children:())``; no manifest is read."""


@dataclass(frozen=True, slots=True)
class Written:
    """One filesystem written: what Nanos's mkfs prints for it, and where it is."""

    name: str  # "boot" or "root"
    offset: int
    info: VolumeInfo
    metadata: dict[str, Any]
    """The tuple written, files without their contents: what mkfs prints."""

    def report(self, *, escape: bool = False) -> str:
        """Nanos mkfs's lines for this filesystem: its UUID and its metadata (``escape``:
        control characters escaped, see :func:`pyops.nanos.dump.printable`)."""
        from pyops.nanos.dump import format_value

        text = format_value(self.metadata, escape=escape)
        return f"UUID: {format_uuid(self.info.uuid)}\nmetadata\n{text}\n"


@dataclass(frozen=True, slots=True)
class MkfsResult:
    """What :func:`mkfs` wrote."""

    path: Path
    size: int
    filesystems: tuple[Written, ...]
    """The boot filesystem (if any), then the root filesystem."""
    warnings: tuple[str, ...] = ()


@dataclass(slots=True)
class Prepared:
    """The tuples mkfs writes, before their files are found on the host."""

    root: dict[str, Any]
    boot: dict[str, Any] | None
    size: int  # bytes requested for the image (0: none)
    warnings: list[str] = field(default_factory=list)


# --- sizes ----------------------------------------------------------------------------------

_SUFFIXES = {"k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20, "g": 1 << 30, "G": 1 << 30}
_MAX_SIZE = (1 << 63) - 1


def parse_size(text: str) -> int | None:
    """A size as Nanos's mkfs reads ``-s``, ``imagesize`` and ``coredumplimit``, else None.

    The number is read as C's ``strtoll(text, &end, 0)`` reads it (leading blanks, a sign,
    ``0x`` for hexadecimal, a leading ``0`` for octal); it must be positive, and the one
    character after it may be ``k``, ``m`` or ``g`` (either case: powers of 1024), anything
    after that being ignored, as mkfs ignores it (``64MB`` is 64 MiB).
    """
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    negative = i < n and text[i] == "-"
    if i < n and text[i] in "+-":
        i += 1
    base, digits = 10, "0123456789"
    if text[i : i + 2] in ("0x", "0X") and i + 2 < n and text[i + 2] in _HEX:
        base, digits = 16, _HEX
        i += 2
    elif text[i : i + 1] == "0":
        base, digits = 8, "01234567"
    start = i
    while i < n and text[i] in digits:
        i += 1
    if i == start or i - start > 64:  # no number, or one far past 2^63 (C clamps it)
        return None
    value = int(text[start:i], base)
    if negative or value <= 0:
        return None
    value = min(value, _MAX_SIZE)
    if i < n:
        scale = _SUFFIXES.get(text[i])
        if scale is None:
            return None
        value *= scale
    return value if value <= _MAX_SIZE else None


_HEX = "0123456789abcdefABCDEF"


def _round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


# --- the tuples -----------------------------------------------------------------------------


def prepare(manifest: bytes | str | None, options: MkfsOptions) -> Prepared:
    """Parse the manifest and apply mkfs's steps 1 to 4 (see the module's description)."""
    _check_options(options)
    if options.empty:
        return Prepared({"children": {}}, None, options.size or 0)
    if manifest is None:
        raise InvalidInput("no manifest was given", hint="give one on standard input, or -e")
    root = parse_manifest(manifest)
    for text in options.tuples:
        for extra in parse_tuples(text, f"the -t tuple {_short(text)!r}"):
            root.update(extra)
    children = root.get("children")
    if children is not None and not isinstance(children, dict):
        raise InvalidInput(
            "the manifest's children is not a tuple",
            hint="the root folder is children:(...): (children:(hello:(contents:(host:hello))))",
        )
    size = options.size or 0
    if "imagesize" in root:
        text = root.pop("imagesize")
        parsed = parse_size(text) if isinstance(text, str) else None
        if parsed is None:
            raise InvalidInput(
                f"invalid imagesize {_shown(text)}",
                hint="give a size in bytes, or with k, m or g (imagesize:64M)",
            )
        size = parsed
    if "coredumplimit" in root:
        text = root["coredumplimit"]
        parsed = parse_size(text) if isinstance(text, str) else None
        if parsed is None:
            raise InvalidInput(
                f"invalid coredumplimit {_shown(text)}",
                hint="give a size in bytes, or with k, m or g (coredumplimit:1G)",
            )
        size = max(size, parsed)
    boot = root.get("boot")
    if boot is not None and not isinstance(boot, dict):
        raise InvalidInput(
            "the manifest's boot is not a tuple",
            hint="the boot filesystem is boot:(children:(kernel:(contents:(host:PATH))))",
        )
    if options.kernel is not None:
        boot = boot if boot is not None else {}
        boot_children = _tuple_in(boot, "children")
        kernel = _tuple_in(boot_children, "kernel")
        _tuple_in(kernel, "contents")["host"] = options.kernel
    elif boot is None:
        if children is None:
            raise InvalidInput(
                "the manifest's root tuple has no children tuple",
                hint="the root folder is children:(...): "
                "(children:(hello:(contents:(host:hello))))",
            )
        if isinstance(children.get("kernel"), dict):
            boot = {"children": {"kernel": children["kernel"]}}  # older manifests' way
    if boot is not None:
        root.pop("boot", None)
        if options.boot_image is None:
            raise InvalidInput(
                "a boot filesystem (from -k, boot:(...) or a /kernel) needs -b BOOT_IMAGE",
                hint="without -b, Nanos's mkfs puts the boot filesystem at byte 0, in front "
                "of the root filesystem, where nothing finds either; give -b boot.img",
            )
    elif options.boot_image is not None:
        raise InvalidInput(
            "kernel or boot FS not specified",
            hint="a bootable disk (-b) needs a kernel: give -k kernel.img",
        )
    prepared = Prepared(root, boot, size)
    if children is None:
        prepared.warnings.append(
            "the manifest's root tuple has no children: the root filesystem holds no files"
        )
    return prepared


def _check_options(options: MkfsOptions) -> None:
    if options.uefi_loader is not None and options.boot_image is None:
        raise InvalidInput(
            "UEFI loader can only be supplied together with boot image",
            hint="give -b boot.img with -u",
        )
    if options.empty:
        for flag, given in (
            ("-b", options.boot_image),
            ("-k", options.kernel),
            ("-u", options.uefi_loader),
        ):
            if given is not None:
                raise InvalidInput(
                    f"-e makes an empty volume, which cannot be combined with {flag}",
                    hint="leave out -e to make a bootable disk from a manifest",
                )
        if options.tuples:
            raise InvalidInput(
                "-e makes an empty volume: -t has nothing to add to",
                hint="leave out -t, or -e to read a manifest",
            )
    check_label(options.label)
    if options.size is not None and not 0 < options.size <= _MAX_SIZE:
        raise InvalidInput(f"invalid image file size {options.size}")


def _tuple_in(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]`` if it is a tuple, else a new tuple put there (mkfs replaces others)."""
    value = parent.get(key)
    if not isinstance(value, dict):
        value = parent[key] = {}
    return value


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f'"{_short(value)}"'
    return "(a tuple)" if isinstance(value, dict) else "(a vector)"


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


class _Frame:
    __slots__ = ("source", "out", "keys", "path", "is_children")

    def __init__(
        self, source: dict[str, Any], out: dict[str, Any], path: str, is_children: bool, sort: bool
    ) -> None:
        self.source = source
        self.out = out
        self.keys: Iterator[str] = iter(sorted_names(source) if sort else list(source))
        self.path = path
        self.is_children = is_children


def translate(
    tup: dict[str, Any],
    *,
    target_root: str | None = None,
    where: str = "",
    sort: bool = True,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The tuple to write for a manifest tuple: mkfs's step 5 (see the module's description).

    Tuples with ``contents`` become :class:`~pyops.nanos.tfs.FileEntry` objects holding
    their host file; entries are in byte order of their names unless ``sort`` is False (then
    in the order of ``tup``). ``where`` prefixes the paths in errors ("boot:" for the boot
    filesystem). Host files are looked up (and checked) now, and read when written.
    """
    notes = warnings if warnings is not None else []
    top = _entry(tup, where + "/", target_root, notes)
    stack = [_Frame(tup, top, where + "/", False, sort)]
    while stack:
        frame = stack[-1]
        for key in frame.keys:
            if key == "contents":  # the file's data (see _entry), never an entry
                continue
            value = frame.source[key]
            if frame.is_children:
                path = frame.path.rstrip("/") + "/" + key
                _check_child(key, value, path, notes)
            elif key == "children":
                path = frame.path
            else:
                path = f"{frame.path} ({key})" if frame.path else key
            if isinstance(value, dict):
                out = _entry(value, path, target_root, notes)
                frame.out[key] = out
                stack.append(_Frame(value, out, path, key == "children", sort))
                break
            frame.out[key] = value
        else:
            stack.pop()
    return top


def _check_child(name: str, value: Any, path: str, warnings: list[str]) -> None:
    if not name or name in (".", "..") or "/" in name:
        raise InvalidInput(
            f"{_short(path)}: {name!r} cannot be a file name",
            hint="names in a children tuple cannot be empty, '.' or '..', or hold '/'",
        )
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{_short(path)} is {_shown(value)}, not a tuple",
            hint="an entry is a tuple: a file (contents:(host:PATH)), a folder "
            "(children:(...)) or a link (linktarget:PATH)",
        )
    if not ({"contents", "children", "linktarget"} & value.keys()):
        warnings.append(
            f"{_short(path)} is neither a file (contents), a folder (children) nor a link "
            "(linktarget): it is stored as a file without data, which the kernel cannot open"
        )


def _entry(
    tup: dict[str, Any], path: str, target_root: str | None, warnings: list[str]
) -> dict[str, Any]:
    """An empty tuple for ``tup``'s entries: a FileEntry when ``tup`` has contents."""
    if "contents" not in tup:
        return {}
    contents = tup["contents"]
    if not isinstance(contents, dict):
        raise InvalidInput(
            f"{_short(path)}: its contents are {_shown(contents)}, not a tuple",
            hint="a file's contents are contents:(host:PATH)",
        )
    host = contents.get("host")
    if host is None:
        warnings.append(
            f"{_short(path)}: its contents name no host file: it is stored as a file "
            "without data, which the kernel cannot open"
        )
        return {}
    if not isinstance(host, str):
        raise InvalidInput(
            f"{_short(path)}: its host is {_shown(host)}, not a path",
            hint="a file's contents are contents:(host:PATH)",
        )
    return FileEntry(host_source(host, target_root, path))


def host_source(name: str, target_root: str | None = None, path: str = "") -> Source:
    """The contents of the host file ``name``, looked up as Nanos's mkfs looks it up.

    With ``target_root``, ``TARGET_ROOT/name`` is tried first: when it is an absolute
    symlink, its target is looked up in ``target_root`` again; a relative one is followed
    on the host; when it does not exist, ``name`` itself is used. Links are followed, so
    the file's bytes are stored. Devices and fifos are stored empty, as mkfs reads them
    (their size is 0).
    """
    for_path = f" (for {_short(path)})" if path else ""
    host = name
    if target_root is not None:
        wanted = name
        for _ in range(_SYMLINK_HOPS):
            candidate = target_root + ("" if wanted.startswith("/") else "/") + wanted
            try:
                st = os.lstat(candidate)
            except FileNotFoundError:
                break
            except OSError as exc:
                raise HostFileError(f"cannot read {candidate}{for_path}: {exc.strerror}") from exc
            if not stat.S_ISLNK(st.st_mode):
                return _source(candidate, st, for_path)
            try:
                link = os.readlink(candidate)
            except OSError as exc:
                raise HostFileError(f"cannot read the link {candidate}: {exc.strerror}") from exc
            if not link.startswith("/"):
                host = candidate
                break
            wanted = link
        else:
            raise HostFileError(
                f"{name}{for_path}: too many levels of symbolic links in {target_root}"
            )
    try:
        st = os.stat(host)
    except FileNotFoundError:
        raise HostFileError(
            f"{host}{for_path}: no such file",
            hint="relative host paths are relative to the current folder"
            + (" (or to -r's folder)" if target_root is not None else ""),
        ) from None
    except OSError as exc:
        raise HostFileError(f"{host}{for_path}: cannot read it ({exc.strerror})") from exc
    return _source(host, st, for_path)


def _source(host: str, st: os.stat_result, for_path: str) -> Source:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise HostFileError(
            f"{host}{for_path} is a folder, not a file",
            hint="a folder is children:(...), its files listed one by one",
        )
    if stat.S_ISSOCK(mode):
        raise HostFileError(f"{host}{for_path} is a socket, not a file")
    if not os.access(host, os.R_OK):
        raise HostFileError(f"{host}{for_path}: permission denied")
    if stat.S_ISREG(mode):
        return HostFile(host, st.st_size, st.st_mtime_ns)
    return Contents(b"")  # a device or fifo: mkfs reads its size, 0 bytes


# --- the image ------------------------------------------------------------------------------


def read_boot_image(path: str) -> bytes:
    """A boot.img as mkfs puts it in front: sector 0 with a filesystem region record whose
    length is what follows sector 0 (stage2; 0 for arm64's one-sector boot-stub.img)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ReleaseError(f"{path}: no such file (the boot image, -b)") from None
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot read the boot image ({exc.strerror})") from exc
    if len(data) < SECTOR or data[510:512] != b"\x55\xaa":
        raise ReleaseError(f"{path} is not a Nanos boot image (no boot sector signature)")
    (region_type,) = struct.unpack_from("<I", data, REGION_TYPE_FIELD)
    (length,) = struct.unpack_from("<Q", data, STAGE2_SIZE_FIELD)
    if region_type != REGION_FILESYSTEM:
        raise ReleaseError(f"{path} is not a Nanos boot image (no filesystem region record)")
    if SECTOR + length != len(data):
        raise ReleaseError(
            f"{path} is not a Nanos boot image: its boot record says {length} bytes follow "
            f"sector 0, but the file holds {len(data) - SECTOR}"
        )
    return data


def image_size(requested: int, offset: int, info: VolumeInfo) -> int:
    """The root filesystem's size, as mkfs sizes it (nanos-image-format.md section 1.8).

    Without a requested image size, ``info.size`` (the data, then 512 KiB to 1 MiB free).
    With one, the image's root part is rounded up to 512 KiB with 512 KiB more, and never
    smaller than what it holds.
    """
    extents_end = max(sector + count for sector, count in info.log_extensions)
    data_end = info.data_end if info.data_end > info.data_start else 0
    held = max(extents_end, data_end) * SECTOR
    if not requested:
        return info.size
    return max(_round_up(requested - offset + SLACK, SLACK), held)


def mkfs(
    image: str | os.PathLike[str],
    manifest: bytes | str | None,
    options: MkfsOptions = MkfsOptions(),
    *,
    sort: bool = True,
    uuid: bytes | None = None,
    progress: Progress = NULL_PROGRESS,
) -> MkfsResult:
    """Write ``image`` from a manifest text, as Nanos's ``mkfs`` with ``options`` does.

    The image is written to a temporary beside it and renamed into place, so a failure
    leaves no partial image (and an existing one untouched). ``uuid`` fixes the root
    filesystem's UUID (random by default); ``sort=False`` keeps the manifest's entry order.
    """
    prepared = prepare(manifest, options)
    warnings = prepared.warnings
    target_root = options.target_root
    boot_tuple = None
    if prepared.boot is not None:
        boot_tuple = translate(
            prepared.boot, target_root=target_root, where="boot:", sort=sort, warnings=warnings
        )
    root_tuple = translate(prepared.root, target_root=target_root, sort=sort, warnings=warnings)
    boot_image = read_boot_image(options.boot_image) if options.boot_image else None
    loader: bytes | None = None
    if options.uefi_loader is not None:
        from pyops.nanos.esp import read_loader

        loader = read_loader(options.uefi_loader)
    written: list[Written] = []
    with atomic_output(image) as (fd, _tmp):
        offset = 0
        table: list[tuple[int, int, int]] = []  # (type, first sector, sectors)
        if boot_image is not None:
            os.pwrite(fd, boot_image, 0)
            offset = len(boot_image) + KLOG_SIZE
            if loader is not None:
                from pyops.nanos.esp import ESP_SIZE, write_esp

                write_esp(fd, offset, loader, options.uefi_loader or "")
                table.append((PARTITION_ESP, offset // SECTOR, ESP_SIZE // SECTOR))
                offset += ESP_SIZE
        if boot_tuple is not None:
            info = write_volume(
                fd,
                offset,
                boot_tuple,
                uuid=_uuid.uuid4().bytes,
                size=BOOTFS_SIZE,
                what="the boot filesystem",
            )
            written.append(Written("boot", offset, info, boot_tuple))
            table.append((PARTITION_LINUX, offset // SECTOR, BOOTFS_SIZE // SECTOR))
            offset += BOOTFS_SIZE
        info = write_volume(
            fd,
            offset,
            root_tuple,
            label=options.label,
            uuid=uuid if uuid is not None else _uuid.uuid4().bytes,
            progress=progress,
        )
        written.append(Written("root", offset, info, root_tuple))
        root_size = image_size(prepared.size, offset, info)
        total = offset + root_size
        try:
            os.ftruncate(fd, total)
        except OSError as exc:
            raise HostFileError(
                f"cannot make {os.fspath(image)} {total:,} bytes long: {exc.strerror}",
                hint="ask for a smaller size (-s or imagesize)",
            ) from exc
        if boot_image is not None:
            table.append((PARTITION_LINUX, offset // SECTOR, root_size // SECTOR))
            entries = b"".join(partition_entry(*entry) for entry in table)
            os.pwrite(fd, entries, PARTITION_TABLE)
    return MkfsResult(Path(image), total, tuple(written), tuple(warnings))


__all__ = [
    "MkfsOptions",
    "MkfsResult",
    "Prepared",
    "Written",
    "host_source",
    "image_size",
    "mkfs",
    "parse_size",
    "prepare",
    "read_boot_image",
    "translate",
]

"""The images pyops has built, under ``PYOPS_HOME/images`` (``NAME.img``, like Ops)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from pyops import atomic
from pyops import home as _home
from pyops.errors import InvalidInput

if TYPE_CHECKING:
    from pyops.nanos.disk import DiskImage, Resized
    from pyops.nanos.tree import Tree


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One built image."""

    name: str
    path: Path
    size: int
    """Bytes the file claims (images are sparse: less is used on disk)."""
    modified: float
    arch: str = ""
    """The architecture of its kernel (``amd64``, ``arm64``), or empty when the image is not
    a bootable disk pyops can read."""
    used: float = 0.0
    """When it was last built or booted (see :func:`last_used`)."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary."""
        return {
            "name": self.name,
            "path": os.fspath(self.path),
            "size": self.size,
            "modified": self.modified,
            "arch": self.arch,
            "used": self.used,
        }


def images_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Where built images live."""
    return _home.images_dir(home)


def runs_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Where each image's last run lives: the copy the guest wrote to."""
    return _home.runs_dir(home)


def fresh_run_copy(
    image: str | os.PathLike[str], home: str | os.PathLike[str] | None = None
) -> Path:
    """A copy of the built ``image`` for one run to write to, in :func:`runs_dir`.

    Every run starts from the pristine image; what the previous run of the same image wrote
    stays readable in its copy (``pyops image ls --last-run NAME``) until this replaces it.
    The copy keeps the image's holes and is shared with it where the filesystem can
    (``copy_file_range`` reflinks on Btrfs and XFS).
    """
    source = Path(image)
    dest = runs_dir(home) / source.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic.sweep(dest.parent)
    size = source.stat().st_size
    with atomic.atomic_path(dest, size) as tmp, open(source, "rb") as src, open(tmp, "xb") as out:
        copy_sparse(src.fileno(), out.fileno(), size)
    return dest


def copy_sparse(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from ``src`` to ``dst`` (file descriptors), holes left as holes."""
    os.ftruncate(dst, size)
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
            end = os.lseek(src, start, os.SEEK_HOLE)
        except OSError as exc:  # no data after offset, or SEEK_DATA not supported
            if exc.errno == errno.ENXIO:
                return
            start, end = offset, size
        _copy_range(src, dst, start, min(end, size) - start)
        offset = end


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    done = 0
    use_kernel = hasattr(os, "copy_file_range")
    while done < length:
        want = min(length - done, 1 << 30)
        n = 0
        if use_kernel:
            try:
                n = os.copy_file_range(src, dst, want, offset + done, offset + done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                use_kernel = False
        if not use_kernel:
            data = os.pread(src, min(want, 8 << 20), offset + done)
            n = os.pwrite(dst, data, offset + done) if data else 0
        if n == 0:
            raise OSError(errno.EIO, "the image shrank while it was copied")
        done += n


def list_images(home: str | os.PathLike[str] | None = None) -> list[ImageEntry]:
    """Every built image, by name."""
    folder = images_dir(home)
    if not folder.is_dir():
        return []
    out = []
    suffix = _home.image_suffix(home)
    booted = _instance_boots(home)
    for path in sorted(folder.glob(f"*{suffix}")):
        if path.name.startswith(".") or not path.is_file():
            continue
        st = path.stat()
        name = path.name.removesuffix(suffix) if suffix else path.name
        used = _last_used(path, st.st_mtime, home, booted)
        out.append(ImageEntry(name, path, st.st_size, st.st_mtime, _arch_of(path), used))
    return out


def last_used(name: str, home: str | os.PathLike[str] | None = None) -> float:
    """When the image ``name`` was last built or booted, as a Unix time: the latest of

    - its file's modification time (``images/NAME.img``: written by a build that made it;
      a build that finds it up to date leaves it as it is);
    - its last run's copy (``runs/NAME.img``: made when ``run`` or ``pkg load`` boots it,
      and written by the guest while it runs);
    - the creation of each instance made from it (``instances/*/instance.json``).
    """
    path = find_image(name, home)
    return _last_used(path, path.stat().st_mtime, home, _instance_boots(home))


def _last_used(
    path: Path, modified: float, home: str | os.PathLike[str] | None, booted: dict[str, float]
) -> float:
    times = [modified, booted.get(os.path.realpath(path), 0.0)]
    try:
        times.append((runs_dir(home) / path.name).stat().st_mtime)
    except OSError:
        pass
    return max(times)


def _instance_boots(home: str | os.PathLike[str] | None) -> dict[str, float]:
    """For each image an instance was made from (its real path), when the latest was made."""
    from pyops.errors import PyopsError
    from pyops.limits import parse_json

    found: dict[str, float] = {}
    try:
        entries = sorted(_home.instances_dir(home).iterdir())
    except OSError:
        return found
    for entry in entries:
        try:
            state = parse_json((entry / "instance.json").read_bytes(), "an instance's state")
            image, created = state["image"], float(state.get("created", 0.0))
        except (OSError, ValueError, TypeError, KeyError, AttributeError, PyopsError):
            continue
        if isinstance(image, str):
            real = os.path.realpath(image)
            found[real] = max(found.get(real, 0.0), created)
    return found


_AGE = re.compile(
    r"\s*(\d{1,9})\s*(h|hours?|d|days?|w|weeks?|m|mo|months?|y|years?)\s*", re.IGNORECASE
)


def parse_age(text: str) -> tuple[int, str]:
    """An age as Ops's ``--lru`` writes it (``300d``, ``3w``, ``1m``, ``2y``; ``m`` is months),
    or in hours (``12h``), as (count, unit letter: ``h``, ``d``, ``w``, ``m`` or ``y``)."""
    m = _AGE.fullmatch(text)
    if m is None:
        raise InvalidInput(
            f"invalid age {text!r}",
            hint="write a number and a unit: 12h (hours), 3d (days), 2w (weeks), "
            "1m (months) or 1y (years)",
        )
    return int(m.group(1)), m.group(2).lower()[0]


def age_cutoff(text: str, now: float | None = None) -> float:
    """The Unix time ``text`` (see :func:`parse_age`) before ``now``: days, weeks, months
    and years are calendar ones in local time, as Ops's ``time.AddDate`` counts them (a
    day past the end of a month runs into the next: 31 March less a month is 3 March)."""
    import datetime
    import time

    count, unit = parse_age(text)
    now = time.time() if now is None else now
    if unit == "h":
        return now - count * 3600.0
    t = datetime.datetime.fromtimestamp(now)
    try:
        if unit in "dw":
            then = t - datetime.timedelta(days=count * (7 if unit == "w" else 1))
        else:
            months = t.year * 12 + t.month - 1 - count * (12 if unit == "y" else 1)
            year, month = divmod(months, 12)
            then = t.replace(year=year, month=month + 1, day=1)
            then += datetime.timedelta(days=t.day - 1)
        return then.timestamp()
    except (ValueError, OverflowError, OSError):
        return float("-inf")  # before the calendar begins: nothing is older


def least_recently_used(
    age: str, *, now: float | None = None, home: str | os.PathLike[str] | None = None
) -> list[ImageEntry]:
    """The images not built or booted (:func:`last_used`) within ``age`` before ``now``."""
    cutoff = age_cutoff(age, now)
    return [entry for entry in list_images(home) if entry.used < cutoff]


def _arch_of(path: Path) -> str:
    from pyops.errors import PyopsError
    from pyops.nanos.disk import boot_kernel

    try:
        return str(boot_kernel(path)[0])
    except PyopsError:
        return ""


def find_image(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """The file of the built image ``name``; :class:`InvalidInput`, naming the images there
    are, when there is none."""
    path = _home.image_file(name, home)
    if "/" in name or "\0" in name or name in ("", ".", "..") or not path.is_file():
        known = ", ".join(e.name for e in list_images(home)) or "none"
        raise InvalidInput(f"no image named {name!r} (images: {known})")
    return path


def remove_images(names: Iterable[str], home: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete the images ``names``, each once; none of them if one is not there."""
    unique = list(dict.fromkeys(names))
    for name in unique:
        find_image(name, home)
    return [remove_image(name, home) for name in unique]


def remove_image(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Delete the image ``name`` (and its build key and its last run's copy)."""
    path = find_image(name, home)
    path.unlink()
    _home.image_key_file(path, home).unlink(missing_ok=True)
    (runs_dir(home) / path.name).unlink(missing_ok=True)
    (runs_dir(home) / f"{path.name}.kernel").unlink(missing_ok=True)  # an arm64 run's kernel
    return path


# Ops's image resize reads sizes with provider/onprem/parse_bytes.go: k, m, g... are powers
# of 1000, ki, mi, gi... (and kib, mib, gib...) powers of 1024, b or nothing bytes.
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    **{p: 1000**i for i, p in enumerate("kmgtpe", 1)},
    **{p + "b": 1000**i for i, p in enumerate("kmgtpe", 1)},
    **{p + "i": 1024**i for i, p in enumerate("kmgtpe", 1)},
    **{p + "ib": 1024**i for i, p in enumerate("kmgtpe", 1)},
}
_BYTES_NUMBER = re.compile(r"[0-9.,]*")
_DECIMAL = re.compile(r"[0-9]*\.?[0-9]*")


def parse_bytes(text: str) -> int:
    """A size as Ops's ``image resize`` reads it: ``2G`` is 2,000,000,000 bytes, ``2Gi`` and
    ``2GiB`` are 2 GiB, ``1.5g`` and ``10,000,000`` work, a unit's case does not matter."""
    match = _BYTES_NUMBER.match(text)
    number = match.group(0) if match else ""
    unit = text[len(number) :].strip().lower()
    digits = number.replace(",", "")
    if unit not in _BYTE_UNITS or not _DECIMAL.fullmatch(digits) or digits in ("", "."):
        raise InvalidInput(
            f"invalid size {text!r}",
            hint="write a number of bytes and a unit: k, m, g, t (powers of 1000, as Ops "
            "reads them) or ki, mi, gi, ti (powers of 1024); kb, kib and so on also work",
        )
    if len(digits) > 40:
        raise InvalidInput(f"the size {text!r} is too large")
    return int(Fraction(digits) * _BYTE_UNITS[unit])


def resize_image(path: str | os.PathLike[str], size: str | int) -> Resized:
    """Resize the disk at ``path`` to ``size`` (bytes, or text :func:`parse_bytes` reads) so
    that the guest has the new room (:func:`pyops.nanos.disk.resize_disk`)."""
    from pyops.nanos.disk import resize_disk

    return resize_disk(path, parse_bytes(size) if isinstance(size, str) else size)


def image_environment(path: str | os.PathLike[str]) -> dict[str, str]:
    """The environment stored in the disk at ``path`` (its root tuple's ``environment``), as
    Ops's ``image env`` shows it: the names with text values, in byte order of names."""
    from pyops.nanos.disk import open_image

    env = open_image(path).root.root.get("environment")
    if not isinstance(env, dict):
        return {}
    out: dict[str, str] = {}
    for name in sorted(env, key=lambda n: os.fsencode(str(n))):
        value = env[name]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        if isinstance(value, str):
            out[str(name)] = value
    return out


LOG_DIRS = ("/var/log",)
"""Where programs write their log files, read after a run that needs explaining."""

_READ_BYTES = 1 << 20  # a configuration or log file larger than this is not read for advice


class ImageFiles:
    """Small files of a built image (its configuration, its logs), opened when first asked."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._disk: DiskImage | None = None
        self._tree: Tree | None = None

    @property
    def disk(self) -> DiskImage:
        if self._disk is None:
            from pyops.nanos.disk import open_image

            self._disk = open_image(self.path)
        return self._disk

    @property
    def tree(self) -> Tree:
        if self._tree is None:
            self._tree = self.disk.tree()
        return self._tree

    @property
    def argv(self) -> tuple[str, ...]:
        """The program's command line, as the image's root tuple gives it."""
        return tuple(self.disk.manifest.arguments)

    def read(self, path: str) -> bytes | None:
        """The file at ``path`` (links followed inside the image), None if there is none or
        it is large."""
        from pyops.errors import InvalidInput
        from pyops.nanos.tfs import iter_file_contents
        from pyops.nanos.tree import Contents, File, ImageData

        try:
            _real, node = self.tree.lookup(path)
        except InvalidInput:
            return None
        if not isinstance(node, File) or node.size > _READ_BYTES:
            return None
        if isinstance(node.source, Contents):
            return node.source.data
        if isinstance(node.source, ImageData):
            return b"".join(iter_file_contents(node.source))
        with open(node.source.path, "rb") as f:
            return f.read(_READ_BYTES)

    def logs(self, before: ImageFiles, lines: int = 10) -> dict[str, str]:
        """The last ``lines`` lines of each log file that differs from ``before``'s (the
        image as built): what this run wrote."""
        from pyops.nanos.tree import File

        found: dict[str, str] = {}
        for path, node in self.tree.walk():
            if not path.startswith(tuple(d + "/" for d in LOG_DIRS)) or not isinstance(node, File):
                continue
            if node.size == 0:
                continue
            data = self.read(path)
            if data is None or data == before.read(path):
                continue
            text = data.decode("utf-8", "replace").rstrip("\n").splitlines()[-lines:]
            found[path] = "\n".join(text)
        return found

"""The images pyops has built, under ``PYOPS_HOME/images`` (``NAME.img``, like Ops)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyops import atomic
from pyops import home as _home
from pyops.errors import InvalidInput

if TYPE_CHECKING:
    from pyops.nanos.disk import DiskImage
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

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary."""
        return {
            "name": self.name,
            "path": os.fspath(self.path),
            "size": self.size,
            "modified": self.modified,
            "arch": self.arch,
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
    for path in sorted(folder.glob("*.img")):
        if path.name.startswith(".") or not path.is_file():
            continue
        st = path.stat()
        out.append(
            ImageEntry(path.name[: -len(".img")], path, st.st_size, st.st_mtime, _arch_of(path))
        )
    return out


def _arch_of(path: Path) -> str:
    from pyops.errors import PyopsError
    from pyops.nanos.disk import boot_kernel

    try:
        return str(boot_kernel(path)[0])
    except PyopsError:
        return ""


def remove_image(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Delete the image ``name`` (and its build key)."""
    folder = images_dir(home)
    path = folder / f"{name}.img"
    if "/" in name or name in ("", ".", "..") or not path.is_file():
        known = ", ".join(e.name for e in list_images(home)) or "none"
        raise InvalidInput(f"no image named {name!r} (images: {known})")
    path.unlink()
    path.with_name(path.name + ".key").unlink(missing_ok=True)
    (runs_dir(home) / path.name).unlink(missing_ok=True)
    (runs_dir(home) / f"{path.name}.kernel").unlink(missing_ok=True)  # an arm64 run's kernel
    return path


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

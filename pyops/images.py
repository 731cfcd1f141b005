"""The images pyops has built, under ``PYOPS_HOME/images`` (``NAME.img``, like Ops)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyops.errors import InvalidInput
from pyops.store import Store


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One built image."""

    name: str
    path: Path
    size: int
    """Bytes the file claims (images are sparse: less is used on disk)."""
    modified: float

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary."""
        return {
            "name": self.name,
            "path": os.fspath(self.path),
            "size": self.size,
            "modified": self.modified,
        }


def images_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Where built images live."""
    root = Path(home) if home is not None else Store.default().root
    return Path(root) / "images"


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
        out.append(ImageEntry(path.name[: -len(".img")], path, st.st_size, st.st_mtime))
    return out


def remove_image(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Delete the image ``name`` (and its build key)."""
    folder = images_dir(home)
    path = folder / f"{name}.img"
    if "/" in name or name in ("", ".", "..") or not path.is_file():
        known = ", ".join(e.name for e in list_images(home)) or "none"
        raise InvalidInput(f"no image named {name!r} (images: {known})")
    path.unlink()
    path.with_name(path.name + ".key").unlink(missing_ok=True)
    return path

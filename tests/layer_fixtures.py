"""Small builders for layer tarballs used by the layer and registry tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """One tar member: ``kind`` is file, dir, symlink, hardlink, chr, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    dev: tuple[int, int] = (0, 0)


def F(name: str, data: bytes = b"", mode: int = 0o644) -> Entry:  # noqa: N802
    return Entry(name, "file", data, mode=mode)


def D(name: str, mode: int = 0o755) -> Entry:  # noqa: N802
    return Entry(name, "dir", mode=mode)


def S(name: str, target: str) -> Entry:  # noqa: N802
    return Entry(name, "symlink", link=target, mode=0o777)


def H(name: str, target: str) -> Entry:  # noqa: N802
    return Entry(name, "hardlink", link=target)


def tar_bytes(entries: list[Entry], *, end_blocks: bool = True) -> bytes:
    """An uncompressed tar with ``entries`` in order (PAX format, mtime fixed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode = entry.mode
            info.mtime = 1_700_000_000
            if entry.kind == "file":
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[entry.kind]
            info.linkname = entry.link
            info.devmajor, info.devminor = entry.dev
            archive.addfile(info)
        data = buf.getvalue()
    if end_blocks:
        return buf.getvalue()
    # What umoci 0.4.7 `insert` writes: no end-of-archive blocks and no final padding.
    last = tarfile.open(fileobj=io.BytesIO(data)).getmembers()[-1]
    return data[: last.offset_data + last.size]


def write_layer(path: Path, entries: list[Entry], *, compress: bool = True) -> tuple[Path, str]:
    """Write a layer file; return its path and diff_id (sha256 of the uncompressed tar)."""
    raw = tar_bytes(entries)
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    return path, "sha256:" + hashlib.sha256(raw).hexdigest()

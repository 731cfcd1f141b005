"""Small builders for layer tarballs used by the layer and registry tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
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


# -- hostile layers and the canary tree around the image root ----------------------------------

CANARY_TIME = 1_600_000_000


def raw_tar(infos: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A PAX tar of hand-made members (any type, any PAX header)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in infos:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def make_canary(top: Path) -> Path:
    """A folder holding the image root and, beside it, host files and folders to watch.

    Returns the (empty) root; :func:`tree_state` of ``top`` without the root must not change.
    """
    top.mkdir(parents=True, exist_ok=True)
    host = top / "host"
    (host / "victim").mkdir(parents=True)
    (host / "victim" / "secret").write_bytes(b"host secret")
    (host / "file").write_bytes(b"host file")
    (top / "keep").write_bytes(b"keep me")
    (top / "root").mkdir()
    for path, mode in [
        (host / "victim" / "secret", 0o600),
        (host / "file", 0o644),
        (top / "keep", 0o640),
        (host / "victim", 0o700),
        (host, 0o755),
    ]:
        path.chmod(mode)
        os.utime(path, (CANARY_TIME, CANARY_TIME))
    os.utime(top, (CANARY_TIME, CANARY_TIME))
    return top / "root"


def tree_state(top: Path, skip: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Type, mode, mtime and content (or link target) of everything in ``top`` but ``skip``.

    The root's own times change as the unpacker fills it; everything else must not.
    """
    seen: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    todo = [top]
    while todo:
        path = todo.pop()
        if path == skip:
            continue
        st = os.lstat(path)
        content: bytes | str | None = None
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            content = path.read_bytes()
        elif stat.S_ISDIR(st.st_mode):
            todo.extend(path / name for name in os.listdir(path))
        key = os.path.relpath(path, top)
        seen[key] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns, content)
    return seen

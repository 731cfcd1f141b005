"""pyops.oci.rootindex: the index of an unpacked root, and reading an image through it.

Layers with whiteouts, an opaque folder, hard links, symlinks and replaced entries are
unpacked once with their tars kept; the index must then show exactly what the unpacked folder
holds (every entry's type, mode, time, size, target and bytes), and a damaged index must not
be used.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from pyops import rootfs
from pyops.oci import layers, rootindex
from pyops.oci.layers import Unpacker
from pyops.oci.store import Store
from pyops.ops.package import copy_kept

from ..layer_fixtures import D, Entry, F, H, S, write_layer
from .test_folding import fold_names

LOWER = [
    D("etc"),
    F("etc/os-release", b"ID=test\n"),
    F("etc/gone", b"whited out"),
    D("opt/lib", 0o750),
    F("opt/lib/old.so", b"old"),
    D("usr/bin"),
    F("usr/bin/tool", b"\x7fELF" + bytes(200), 0o755),
    H("usr/bin/tool2", "usr/bin/tool"),
    S("bin", "usr/bin"),
    F("usr/share/big", os.urandom(300_000)),
    F("replaced", b"a file first"),
]
UPPER = [
    F("etc/.wh.gone"),
    F("opt/lib/.wh..wh..opq"),
    F("opt/lib/new.so", b"new"),
    D("replaced", 0o700),
    F("replaced/inside", b"now a folder"),
    S("usr/bin/sh", "/bin/tool"),
    F("usr/share/empty"),
]


def _unpacked(tmp_path: Path, *stack: list[Entry]) -> tuple[Store, Path, list[str], Unpacker]:
    store = Store(tmp_path / "store")
    paths, diff_ids = [], []
    for i, entries in enumerate(stack):
        path, diff_id = write_layer(tmp_path / f"l{i}.tar.gz", entries)
        paths.append(path)
        diff_ids.append(diff_id)
    root = tmp_path / "root"
    tars = [rootindex.layer_tar_path(store, d) for d in diff_ids]
    unpacker = Unpacker(root, len(paths), diff_ids=diff_ids, keep_tars=tars)
    for number, path in enumerate(paths, start=1):
        unpacker.apply(number, path)
    unpacker.finish()
    return store, root, diff_ids, unpacker


def _view(files: rootfs.RootFiles) -> dict[str, tuple[object, ...]]:
    """Every entry as the readers of a root see it."""
    seen: dict[str, tuple[object, ...]] = {}
    stack = ["/"]
    links: dict[int, list[str]] = {}
    while stack:
        folder = stack.pop()
        for name in sorted(files.listdir(folder)):
            path = f"{folder.rstrip('/')}/{name}"
            st = files.lstat(path)
            assert st is not None
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                seen[path] = (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
                stack.append(path)
            elif stat.S_ISLNK(st.st_mode):
                seen[path] = (kind, st.st_mtime_ns, files.readlink(path))
            else:
                data = rootfs.read_window(files.window(path), 1 << 30)
                seen[path] = (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size,
                              hashlib.sha256(data).hexdigest(), st.st_nlink)  # fmt: skip
                links.setdefault(st.st_ino, []).append(path)
    seen["hard links"] = tuple(sorted(tuple(g) for g in links.values() if len(g) > 1))
    return seen


def test_the_index_shows_what_the_unpacked_root_holds(tmp_path: Path) -> None:
    store, root, diff_ids, unpacker = _unpacked(tmp_path, LOWER, UPPER)
    index_file = rootindex.write_index(store, root, diff_ids, unpacker.contents or {})
    assert index_file == rootindex.index_path(store, diff_ids)
    index = rootindex.load_index(store, diff_ids)
    assert index is not None

    host = _view(rootfs.HostFiles(root))
    assert _view(index) == host
    assert host["hard links"] == (("/usr/bin/tool", "/usr/bin/tool2"),)
    assert "/etc/gone" not in host and "/opt/lib/old.so" not in host
    assert index.paths() == sorted(p for p in host if p != "hard links")
    # The tars kept are the layers' uncompressed streams, named by their diff_ids.
    for diff_id in diff_ids:
        tar = rootindex.layer_tar_path(store, diff_id)
        assert "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest() == diff_id
    # Resolution reads it as it reads a folder.
    assert rootfs.resolve_in(index, "/bin/sh").path == "/usr/bin/tool"


def test_copy_kept_from_the_index_makes_what_it_makes_from_the_folder(tmp_path: Path) -> None:
    store, root, diff_ids, unpacker = _unpacked(tmp_path, LOWER, UPPER)
    rootindex.write_index(store, root, diff_ids, unpacker.contents or {})
    index = rootindex.load_index(store, diff_ids)
    assert index is not None
    kept = index.paths()
    copy_kept(index, tmp_path / "from-index", kept)
    copy_kept(root, tmp_path / "from-folder", kept)
    assert _view(rootfs.HostFiles(tmp_path / "from-index")) == _view(
        rootfs.HostFiles(tmp_path / "from-folder")
    )
    some = ["/bin", "/usr/bin/tool", "/usr/bin/tool2", "/usr/share/big"]
    copy_kept(index, tmp_path / "some", some)
    made = tmp_path / "some"
    assert os.readlink(made / "bin") == "usr/bin"
    assert (made / "usr/bin/tool").stat().st_ino == (made / "usr/bin/tool2").stat().st_ino
    assert (made / "usr/share/big").read_bytes() == (root / "usr/share/big").read_bytes()


def _damaged(tmp_path: Path, change: str) -> Store:
    store, root, diff_ids, unpacker = _unpacked(tmp_path, LOWER, UPPER)
    path = rootindex.write_index(store, root, diff_ids, unpacker.contents or {})
    assert path is not None
    document = json.loads(path.read_bytes())
    entries = document["entries"]
    regular = next(e for e in entries if e[1] == "f")
    if change == "escaping name":
        entries[1][0] = "/../escape"
    elif change == "slash in a name":
        entries.append(["/etc//x", "f", 0o644, 0, 0, [0, 0, 0]])
    elif change == "nul in a name":
        entries.append(["/etc/x\0y", "l", 0o777, 0, 0, "t"])
    elif change == "orphan":
        entries.append(["/nowhere/x", "d", 0o755, 0, 0, None])
    elif change == "past the tar":
        regular[5][1] = document["layers"][regular[5][0]][1]
    elif change == "no such layer":
        regular[5][0] = 7
    elif change == "unknown type":
        entries.append(["/etc/fifo", "p", 0o644, 0, 0, None])
    elif change == "duplicate":
        entries.append(list(entries[1]))
    elif change == "not the root first":
        entries.insert(0, entries.pop(1))
    elif change == "mode":
        regular[2] = 0o170000
    elif change == "truncated tar":
        tar = rootindex.layer_tar_path(store, diff_ids[0])
        os.truncate(tar, tar.stat().st_size - 512)
    elif change == "other layers":
        document["layers"][0][0] = "sha256:" + "0" * 64
    elif change == "not json":
        path.write_bytes(b"{not json")
        return store
    path.write_text(json.dumps(document))
    return store


@pytest.mark.parametrize(
    "change",
    ["escaping name", "slash in a name", "nul in a name", "orphan", "past the tar",
     "no such layer", "unknown type", "duplicate", "not the root first", "mode",
     "truncated tar", "other layers", "not json"],
)  # fmt: skip
def test_a_damaged_index_is_not_used(tmp_path: Path, change: str) -> None:
    store = _damaged(tmp_path, change)
    diff_ids = [write_layer(tmp_path / "again.tar", e)[1] for e in (LOWER, UPPER)]
    assert rootindex.load_index(store, diff_ids) is None


def test_no_index_for_other_layers(tmp_path: Path) -> None:
    store, root, diff_ids, unpacker = _unpacked(tmp_path, LOWER, UPPER)
    rootindex.write_index(store, root, diff_ids, unpacker.contents or {})
    assert rootindex.load_index(store, diff_ids[:1]) is None
    assert rootindex.load_index(store, diff_ids[::-1]) is None


def test_a_file_whose_bytes_are_unknown_is_not_indexed(tmp_path: Path) -> None:
    store, root, diff_ids, unpacker = _unpacked(tmp_path, LOWER, UPPER)
    (root / "etc/added-later").write_bytes(b"not from a layer")
    assert rootindex.write_index(store, root, diff_ids, unpacker.contents or {}) is None
    assert not rootindex.index_path(store, diff_ids).exists()


def test_a_tar_that_cannot_be_written_does_not_stop_the_unpack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    real_init = layers._Tee.__init__

    def full_tee(self: layers._Tee, dest: Path) -> None:
        real_init(self, dest)
        assert self._file is not None
        self._file.close()
        self._file = FullDisk()  # type: ignore[assignment]

    monkeypatch.setattr(layers._Tee, "__init__", full_tee)
    store, root, diff_ids, _ = _unpacked(tmp_path, LOWER, UPPER)
    assert (root / "opt/lib/new.so").read_bytes() == b"new"
    assert not (store.root / "layers").exists() or not any((store.root / "layers").rglob("*.*"))
    for diff_id in diff_ids:
        assert not rootindex.layer_tar_path(store, diff_id).exists()


def test_a_layer_that_fails_keeps_no_tar(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    path, diff_id = write_layer(tmp_path / "l.tar.gz", LOWER)
    wrong = "sha256:" + "1" * 64
    unpacker = Unpacker(tmp_path / "root", 1, diff_ids=[wrong],
                        keep_tars=[rootindex.layer_tar_path(store, wrong)])  # fmt: skip
    with pytest.raises(Exception, match="digest"):
        unpacker.apply(1, path)
    assert list((store.root / "layers").rglob("*")) == [store.root / "layers/sha256"]


def test_a_folder_that_folds_names_keeps_no_tar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fold_names(tmp_path / "root", monkeypatch)
    store, _, diff_ids, unpacker = _unpacked(tmp_path, LOWER, UPPER)
    assert unpacker.folds and unpacker.contents is None
    assert not any(rootindex.layer_tar_path(store, d).exists() for d in diff_ids)


def test_zlib_decompresses_where_isal_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "isal", None)  # import isal fails
    new, errors = layers._inflaters()
    assert "zlib" in type(new()).__module__ + type(new()).__name__.lower()
    monkeypatch.setattr(layers, "_new_inflater", new)
    monkeypatch.setattr(layers, "_INFLATE_ERRORS", errors)
    _, root, _, _ = _unpacked(tmp_path, LOWER, UPPER)
    assert (root / "replaced/inside").read_bytes() == b"now a folder"


def test_a_tar_a_killed_run_left_is_removed(tmp_path: Path) -> None:
    from pyops import atomic

    store = Store(tmp_path / "store")
    path, diff_id = write_layer(tmp_path / "l.tar.gz", LOWER)
    tar = rootindex.layer_tar_path(store, diff_id)
    tar.parent.mkdir(parents=True)
    left = tar.with_name(f".{tar.name}.pyops-999999999-0badf00d.tmp")  # no such process
    left.write_bytes(b"half a tar")
    assert atomic.is_temp(left.name)
    unpacker = Unpacker(tmp_path / "root", 1, diff_ids=[diff_id], keep_tars=[tar])
    unpacker.apply(1, path)
    assert sorted(p.name for p in tar.parent.iterdir()) == [tar.name]

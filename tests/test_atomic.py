"""Temporaries: renamed into place when complete, removed on error, swept when orphaned."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyops import atomic
from pyops.errors import DiskFull


def test_a_complete_write_replaces_the_destination(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with atomic.atomic_file(dest) as out:
        out.write(b"new")
        assert dest.read_bytes() == b"old"  # nothing seen before the end
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_error_removes_the_temporary_and_keeps_the_old(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic.atomic_file(dest) as out:
        out.write(b"half")
        raise KeyboardInterrupt
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_folder_replaces_a_folder(tmp_path: Path) -> None:
    dest = tmp_path / "pkg"
    (dest / "old").mkdir(parents=True)
    with atomic.atomic_path(dest) as tmp:
        (tmp / "new").mkdir(parents=True)
    assert [p.name for p in dest.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_sweep_removes_only_what_dead_processes_left(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f".big.img.pyops-{dead_pid}-0123abcd.tmp"
    orphan.write_bytes(b"x")
    orphan_dir = tmp_path / f".pkg.pyops-{dead_pid}-89abcdef.tmp"
    (orphan_dir / "a" / "b").mkdir(parents=True)
    mine = atomic.temp_path(tmp_path / "mine")
    mine.write_bytes(b"y")
    other = tmp_path / ".not-ours.tmp"
    other.write_bytes(b"z")
    removed = atomic.sweep(tmp_path)
    assert sorted(removed) == sorted([orphan, orphan_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
    assert atomic.is_temp(mine.name) and not atomic.is_temp(other.name)


def test_remove_handles_deep_trees_without_recursion(tmp_path: Path) -> None:
    deep = tmp_path / "deep"
    path = deep
    deep.mkdir()
    for _ in range(1500):  # os.makedirs recurses on Python 3.11
        path = path / "d"
        path.mkdir()
    (path / "f").write_bytes(b"")
    os.symlink("/", deep / "d" / "to-root")
    atomic.remove(deep)
    assert not deep.exists()


def test_a_full_disk_names_the_folder_and_the_shortfall(tmp_path: Path) -> None:
    dest = tmp_path / "blob"
    with pytest.raises(DiskFull, match=rf"disk full at {tmp_path}, needs [\d,]+ more bytes"):
        with atomic.atomic_file(dest, needed=1 << 62):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []

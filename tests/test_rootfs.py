"""The one confined lookup: chroot semantics, whatever reads the entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyops import rootfs
from pyops.errors import LimitExceeded, UnsafeLayerPath


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "libc.so").write_bytes(b"")
    os.symlink("usr/lib", root / "lib")
    os.symlink("/usr/lib/../lib/libc.so", root / "abs")
    os.symlink("/", root / "usr" / "up")
    os.symlink("loop", root / "loop")
    os.symlink("/etc", root / "hostetc")  # the image's /etc, never the host's
    return root


def test_links_are_followed_inside_the_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    found = rootfs.resolve_on_host(root, "/lib/libc.so")
    assert found.path == "/usr/lib/libc.so" and found.links == ("/lib",)
    assert found.chain == ("/lib", "/usr/lib/libc.so")
    # An absolute target restarts at the root; ".." is taken in the real parent.
    assert rootfs.resolve_on_host(root, "abs").chain == ("/abs", "/usr/lib/libc.so")
    assert rootfs.resolve_on_host(root, "/usr/up/../../lib").path == "/usr/lib"
    missing = rootfs.resolve_on_host(root, "/hostetc/passwd")
    assert missing.path == "/etc/passwd" and missing.mode is None
    assert rootfs.resolve_on_host(root, "/lib", follow_last=False).path == "/lib"


def test_loops_and_depth_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path)
    with pytest.raises(UnsafeLayerPath, match="too many levels"):
        rootfs.resolve_on_host(root, "/loop")
    monkeypatch.setenv("PYOPS_LIMIT_PATH_DEPTH", "8")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_PATH_DEPTH"):
        rootfs.resolve_on_host(root, "/a/b/c/d/e/f/g/h/i")


def test_the_reader_is_pluggable() -> None:
    tree = {("a",): 0o040755, ("a", "l"): 0o120777, ("b",): 0o100644}
    links = {("a", "l"): "../b"}
    found = rootfs.resolve("/a/l", tree.get, links.__getitem__)
    assert found.path == "/b" and found.links == ("/a/l",)

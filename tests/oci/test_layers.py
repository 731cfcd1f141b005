"""Applying layers: whiteouts, opaque directories, links, and refusing escapes."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import pytest

from pyops.errors import DigestMismatch, LayerError, UnsafeLayerPath
from pyops.oci.layers import resolve_in_root, split_image_path, unpack_layers

from ..layer_fixtures import D, Entry, F, H, S, tar_bytes, write_layer


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(layer directory, image root, a sentinel directory beside the root)."""
    layers = tmp_path / "layers"
    layers.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    return layers, tmp_path / "root", outside


def _snapshot(directory: Path) -> dict[str, bytes | str]:
    seen: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink():
            seen[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            seen[rel] = path.read_bytes()
        else:
            seen[rel] = "dir"
    return seen


def _layers(layer_dir: Path, *layers: list[Entry], compress: bool = True) -> list[Path]:
    return [
        write_layer(layer_dir / f"l{i}.tar", entries, compress=compress)[0]
        for i, entries in enumerate(layers)
    ]


def test_basic_tree_modes_and_implicit_parents(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    paths = _layers(
        layer_dir,
        [
            D("./etc/"),
            F("./etc/hostname", b"nanos\n"),
            F("usr/bin/tool", b"\x7fELF", mode=0o4755),  # parents missing from the tar
            S("usr/bin/alias", "tool"),
            D("opt", mode=0o1777),
        ],
    )
    unpack_layers(paths, root)
    assert (root / "etc/hostname").read_bytes() == b"nanos\n"
    tool = root / "usr/bin/tool"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755  # setuid cleared
    assert os.readlink(root / "usr/bin/alias") == "tool"
    assert stat.S_IMODE((root / "opt").stat().st_mode) == 0o777  # sticky cleared
    assert (root / "usr/bin").is_dir()
    assert tool.stat().st_mtime == 1_700_000_000


def test_whiteouts_remove_lower_files_and_trees(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    paths = _layers(
        layer_dir,
        [F("a/keep", b"1"), F("a/gone", b"2"), F("tree/x/y", b"3"), F("tree/z", b"4")],
        [F("a/.wh.gone"), F(".wh.tree"), F("a/new", b"5")],
    )
    unpack_layers(paths, root)
    assert _snapshot(root) == {"a": "dir", "a/keep": b"1", "a/new": b"5"}


def test_whiteout_does_not_touch_same_layer_entries(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    paths = _layers(
        layer_dir,
        [F("a/file", b"lower")],
        # A hard link to the lower file, then a whiteout of that file: the link keeps the
        # lower content (reference doc section 5.2).
        [H("b/link", "a/file"), F("a/.wh.file")],
        # A whiteout of an entry added by the same layer is not applied to it.
        [F("c/mine", b"same layer"), F("c/.wh.mine")],
    )
    unpack_layers(paths, root)
    assert not (root / "a/file").exists()
    assert (root / "b/link").read_bytes() == b"lower"
    assert (root / "c/mine").read_bytes() == b"same layer"


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory(dirs: tuple[Path, Path, Path], marker_first: bool) -> None:
    layer_dir, root, _ = dirs
    upper = [D("opt/app"), F("opt/app/new", b"new"), F("opt/app/sub/n2", b"n2")]
    marker = F("opt/app/.wh..wh..opq")
    paths = _layers(
        layer_dir,
        [F("opt/app/old", b"old"), F("opt/app/sub/o2", b"o2"), F("opt/other", b"o")],
        [marker, *upper] if marker_first else [*upper, marker],
    )
    unpack_layers(paths, root)
    assert _snapshot(root / "opt") == {
        "app": "dir",
        "app/new": b"new",
        "app/sub": "dir",
        "app/sub/n2": b"n2",
        "other": b"o",
    }


def test_hard_links_to_same_and_lower_layers(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    paths = _layers(
        layer_dir,
        [F("usr/lib/libc.so.6", b"libc"), S("lib", "usr/lib")],
        [
            F("bin/busybox", b"bb", mode=0o755),
            H("bin/sh", "bin/busybox"),
            H("bin/ls", "/bin/busybox"),
            H("copy-of-libc", "lib/libc.so.6"),  # through an in-image symlink
        ],
    )
    unpack_layers(paths, root)
    busybox = (root / "bin/busybox").stat()
    assert (root / "bin/sh").stat().st_ino == busybox.st_ino
    assert (root / "bin/ls").stat().st_ino == busybox.st_ino
    assert (root / "copy-of-libc").stat().st_ino == (root / "usr/lib/libc.so.6").stat().st_ino


def test_hard_link_to_missing_or_directory_is_refused(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    with pytest.raises(LayerError, match="does not exist"):
        unpack_layers(_layers(layer_dir, [H("hl", "/etc/passwd")]), root)
    with pytest.raises(LayerError, match="directory"):
        unpack_layers(_layers(layer_dir, [D("d"), H("hl", "d")]), root / "2")


def test_hard_link_to_absolute_path_stays_in_image(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    unpack_layers(
        _layers(layer_dir, [F("etc/passwd", b"root:x:0:0::/:/bin/sh\n"), H("hl", "/etc/passwd")]),
        root,
    )
    assert (root / "hl").read_bytes() == b"root:x:0:0::/:/bin/sh\n"


def test_symlinked_parents_resolve_inside_the_image(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, outside = dirs
    paths = _layers(
        layer_dir,
        [
            S("lib", "usr/lib"),
            D("usr/lib"),
            S("evil", "/"),
            S("up", "../../../../../" + outside.name),
            S("abs-out", str(outside)),
        ],
        [
            F("lib/foo.so", b"foo"),
            F("evil/hostfile", b"in image"),
            F("up/escaped", b"in image too"),
            F("abs-out/keep", b"not the host's"),
            F("/abs.txt", b"abs"),
        ],
    )
    before = _snapshot(outside)
    unpack_layers(paths, root)
    assert _snapshot(outside) == before
    assert (root / "usr/lib/foo.so").read_bytes() == b"foo"
    assert (root / "hostfile").read_bytes() == b"in image"
    assert (root / outside.name / "escaped").read_bytes() == b"in image too"
    inside = root / str(outside).lstrip("/") / "keep"
    assert inside.read_bytes() == b"not the host's"
    assert (root / "abs.txt").read_bytes() == b"abs"


@pytest.mark.parametrize(
    "entries",
    [
        [F("../escape.txt", b"x")],
        [F("a/b/../../../up.txt", b"x")],
        [F("ok", b"x"), H("hl", "../../outside/keep")],
    ],
    ids=["dotdot", "nested-dotdot", "hardlink-dotdot"],
)
def test_escaping_members_are_refused(dirs: tuple[Path, Path, Path], entries: list[Entry]) -> None:
    layer_dir, root, outside = dirs
    before = _snapshot(outside)
    with pytest.raises(UnsafeLayerPath, match="'..'"):
        unpack_layers(_layers(layer_dir, entries), root)
    assert _snapshot(outside) == before
    assert not (layer_dir.parent / "escape.txt").exists()
    assert not (layer_dir.parent / "up.txt").exists()


def test_devices_skipped_and_overlay_whiteouts_applied(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    paths = _layers(
        layer_dir,
        [F("old", b"x"), F("keep", b"k")],
        [
            Entry("dev/kmem", "chr", dev=(1, 2)),
            Entry("dev/fifo", "fifo"),
            Entry("old", "chr", dev=(0, 0)),  # overlayfs-style whiteout
        ],
    )
    unpack_layers(paths, root)
    assert _snapshot(root) == {"keep": b"k"}  # no device node, no parent made for one


def test_replacing_files_dirs_and_links(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    paths = _layers(
        layer_dir,
        [F("x/inner", b"1"), F("y", b"2"), S("z", "y"), D("w"), F("w/child", b"c")],
        [
            F("x", b"file now"),
            D("y"),
            F("y/inner", b"dir now"),
            F("z", b"plain"),
            D("w", mode=0o700),
        ],
    )
    unpack_layers(paths, root)
    assert (root / "x").read_bytes() == b"file now"
    assert (root / "y/inner").read_bytes() == b"dir now"
    assert not (root / "z").is_symlink() and (root / "z").read_bytes() == b"plain"
    assert (root / "w/child").read_bytes() == b"c"  # a dir over a dir keeps its children
    assert stat.S_IMODE((root / "w").stat().st_mode) == 0o700


def test_diff_ids_checked_for_plain_and_gzip_layers(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    one, diff_one = write_layer(layer_dir / "one", [F("a", b"1")], compress=True)
    two, diff_two = write_layer(layer_dir / "two", [F("b", b"2")], compress=False)
    unpack_layers([one, two], root, diff_ids=[diff_one, diff_two])
    assert (root / "a").read_bytes() == b"1" and (root / "b").read_bytes() == b"2"
    with pytest.raises(DigestMismatch, match="layer 2"):
        unpack_layers([one, two], root / "again", diff_ids=[diff_one, diff_one])


def test_truncated_gzip_layer(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    path, _ = write_layer(layer_dir / "l", [F("big", os.urandom(200_000))])
    path.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(LayerError, match="truncated"):
        unpack_layers([path], root)


def test_truncated_member_data(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    raw = tar_bytes([F("a", b"x" * 5000)])
    path = layer_dir / "l"
    path.write_bytes(raw[:3000])
    with pytest.raises(LayerError, match="'a'"):
        unpack_layers([path], root)


def test_tar_without_end_blocks_is_tolerated(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    path = layer_dir / "l"
    path.write_bytes(gzip.compress(tar_bytes([F("a", b"1"), F("b", b"x" * 700)], end_blocks=False)))
    unpack_layers([path], root)
    assert (root / "b").read_bytes() == b"x" * 700


def test_zstd_and_garbage_layers(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    zstd = layer_dir / "z"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    with pytest.raises(LayerError, match="zstd"):
        unpack_layers([zstd], root)
    junk = layer_dir / "j"
    junk.write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(LayerError, match="tar"):
        unpack_layers([junk], root)


def test_symlink_loop_is_refused(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    paths = _layers(layer_dir, [S("a", "b"), S("b", "a")], [F("a/file", b"x")])
    with pytest.raises(UnsafeLayerPath, match="too many levels"):
        unpack_layers(paths, root)


def test_resolve_in_root_debian_loader(dirs: tuple[Path, Path, Path]) -> None:
    layer_dir, root, _ = dirs
    paths = _layers(
        layer_dir,
        [
            S("lib", "usr/lib"),
            S("lib64", "usr/lib64"),
            F("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", b"ld"),
            S("usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        ],
    )
    unpack_layers(paths, root)
    parts = split_image_path("/lib64/ld-linux-x86-64.so.2")
    assert resolve_in_root(root, parts) == (
        "usr",
        "lib",
        "x86_64-linux-gnu",
        "ld-linux-x86-64.so.2",
    )
    assert resolve_in_root(root, parts, follow_last=False) == (
        "usr",
        "lib64",
        "ld-linux-x86-64.so.2",
    )

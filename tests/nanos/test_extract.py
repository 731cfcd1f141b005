"""Copying out of an image's tree onto the host: what is copied, and that nothing a hostile
image holds makes the copy write outside its destination."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyops.errors import HostFileError, ImageFormatError, InvalidInput
from pyops.nanos.disk import open_image, write_raw_volume
from pyops.nanos.extract import copy_out
from pyops.nanos.tfs import FileEntry, write_volume
from pyops.nanos.tree import Contents, ImageData, ImageExtent, Tree


def image_tree(tmp_path: Path, tree: Tree) -> Tree:
    """``tree`` written to a volume and read back, as every copy from an image starts."""
    path = tmp_path / "volume.raw"
    write_raw_volume(path, tree)
    return open_image(path).tree()


def sample(tmp_path: Path) -> Tree:
    tree = Tree()
    tree.add_file("/etc/hosts", b"127.0.0.1 localhost\n")
    tree.add_file("/etc/app/conf.toml", b"answer = 42\n")
    tree.add_file("/bin/prog", b"\x7fELF" + bytes(5000))
    tree.add_file("/empty", b"")
    tree.add_symlink("/conf", "etc/app/conf.toml")
    tree.add_symlink("/etc/dangling", "/nowhere")
    tree.add_hardlink("/etc/hosts2", "/etc/hosts")
    tree.add_directory("/tmp")
    return image_tree(tmp_path, tree)


def listing(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


def test_a_whole_image_copies_with_links_as_links(tmp_path: Path) -> None:
    tree = sample(tmp_path)
    dest = tmp_path / "out"
    dest.mkdir()
    result = copy_out(tree, ["/"], dest, recursive=True)
    assert result.ok and result.files == 5 and result.symlinks == 2
    assert listing(dest) == {
        "bin": "dir",
        "bin/prog": b"\x7fELF" + bytes(5000),
        "conf": ("link", "etc/app/conf.toml"),
        "empty": b"",
        "etc": "dir",
        "etc/app": "dir",
        "etc/app/conf.toml": b"answer = 42\n",
        "etc/dangling": ("link", "/nowhere"),
        "etc/hosts": b"127.0.0.1 localhost\n",
        "etc/hosts2": b"127.0.0.1 localhost\n",
        "tmp": "dir",
    }
    # Nanos keeps no modes: 0666 and 0755 less the umask, never a set-id bit
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((dest / "etc/hosts").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((dest / "etc/app").stat().st_mode) == 0o755 & ~umask
    assert not [p for p in dest.rglob(".*.tmp")]


def test_sources_like_cp(tmp_path: Path) -> None:
    tree = sample(tmp_path)
    dest = tmp_path / "out"
    dest.mkdir()
    # several sources into a folder, each under its own name; a link named is followed
    result = copy_out(tree, ["/etc/hosts", "/conf", "/etc"], dest)
    assert result.omitted == ("/etc",) and not result.errors and not result.ok
    assert (dest / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert (dest / "conf").read_bytes() == b"answer = 42\n"
    assert not (dest / "conf").is_symlink()
    # one source to a new name
    assert copy_out(tree, ["/etc/app"], tmp_path / "app", recursive=True).ok
    assert (tmp_path / "app" / "conf.toml").read_bytes() == b"answer = 42\n"
    assert copy_out(tree, ["/bin/prog"], tmp_path / "prog").ok
    assert (tmp_path / "prog").read_bytes()[:4] == b"\x7fELF"
    # several sources need a folder
    with pytest.raises(InvalidInput, match="is not a folder"):
        copy_out(tree, ["/etc/hosts", "/empty"], tmp_path / "prog")
    # a source that fails is reported; the others are copied
    result = copy_out(tree, ["/nothing", "/empty"], dest)
    assert [str(e) for e in result.errors] == ["/nothing: not in the image"]
    assert (dest / "empty").read_bytes() == b""
    with pytest.raises(InvalidInput):
        copy_out(tree, ["/etc/hosts"], "")


def test_dereference_copies_the_files_links_point_to(tmp_path: Path) -> None:
    tree = sample(tmp_path)
    dest = tmp_path / "out"
    result = copy_out(tree, ["/"], dest, recursive=True, dereference=True)
    assert result.ok
    assert (dest / "conf").read_bytes() == b"answer = 42\n" and not (dest / "conf").is_symlink()
    # a link that leads nowhere in the image stays a link
    assert os.readlink(dest / "etc/dangling") == "/nowhere"


def test_an_existing_file_is_replaced_and_a_folder_merged_into(tmp_path: Path) -> None:
    tree = sample(tmp_path)
    dest = tmp_path / "out"
    (dest / "etc").mkdir(parents=True)
    (dest / "etc" / "hosts").write_text("old\n")
    (dest / "etc" / "mine").write_text("kept\n")
    (dest / "conf").write_text("a file where a link goes\n")
    assert copy_out(tree, ["/"], dest, recursive=True).ok
    assert (dest / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert (dest / "etc/mine").read_text() == "kept\n"
    assert os.readlink(dest / "conf") == "etc/app/conf.toml"
    # a folder in the way of a file is not removed
    (dest / "empty").unlink()
    (dest / "empty").mkdir()
    result = copy_out(tree, ["/empty"], dest)
    assert "a folder is in the way" in str(result.errors[0])
    assert (dest / "empty").is_dir()


def test_holes_stay_holes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with open(store, "wb") as f:
        f.write(b"A" * 512 + b"B" * 512 + b"C" * 512)
    size = 64 << 20
    data = ImageData(
        str(store),
        (
            ImageExtent(0, 0, 512),
            ImageExtent(40_000, 512, 512),
            ImageExtent(80_000, 1024, 512, uninited=True),  # allocated, never written: zeros
        ),
        size,
    )
    tree = Tree()
    tree.add_file("/sparse", data)
    out = tmp_path / "sparse"
    assert copy_out(tree, ["/sparse"], out).ok
    assert out.stat().st_size == size
    assert out.stat().st_blocks * 512 < 1 << 20  # the holes were not written
    with open(out, "rb") as f:
        assert f.read(512) == b"A" * 512
        f.seek(40_000 * 512)
        assert f.read(512) == b"B" * 512
        f.seek(80_000 * 512)
        assert f.read(512) == bytes(512)


# --- hostile images ----------------------------------------------------------------------


def test_a_link_pointing_out_is_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    first = Tree()
    first.add_symlink("/app", str(outside))  # absolute, out of the destination
    first.add_symlink("/up", "../../outside/x")
    dest = tmp_path / "dest"
    dest.mkdir()
    assert copy_out(image_tree(tmp_path, first), ["/"], dest, recursive=True).ok
    assert os.readlink(dest / "app") == str(outside)
    # A second image with a folder where the first had the link: the folder's files must
    # not land in the link's target.
    second = Tree()
    second.add_file("/app/evil", b"gotcha\n")
    second.add_file("/up", b"a file over the link\n")
    result = copy_out(image_tree(tmp_path, second), ["/"], dest, recursive=True)
    assert len(result.errors) == 1
    assert "something other than a folder is there" in str(result.errors[0])
    assert list(outside.iterdir()) == []
    # a file replaces a link itself, never the link's target
    assert copy_out(image_tree(tmp_path, second), ["/up"], dest).ok
    assert (dest / "up").read_bytes() == b"a file over the link\n"
    assert not (dest / "up").is_symlink() and not (tmp_path / "outside" / "x").exists()


def test_a_link_named_as_source_resolves_inside_the_image(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    tree = Tree()
    tree.add_symlink("/leak", str(secret))  # an absolute host path: the image's own /tmp/...
    tree.add_symlink("/up", "../../../../../../../../etc/hostname")
    tree.add_file("/etc/hostname", b"image's hostname\n")
    tree = image_tree(tmp_path, tree)
    result = copy_out(tree, ["/leak"], tmp_path / "copy")
    assert "not in the image" in str(result.errors[0])
    assert not (tmp_path / "copy").exists()
    assert copy_out(tree, ["/up"], tmp_path / "copy").ok  # ".." stops at the image's root
    assert (tmp_path / "copy").read_bytes() == b"image's hostname\n"


def hostile_volume(tmp_path: Path, children: dict[str, object]) -> Path:
    path = tmp_path / "hostile.raw"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        info = write_volume(fd, 0, {"children": children})
        os.ftruncate(fd, info.size)
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("name", ["..", ".", "a/../../b", "/etc/passwd", ""])
def test_a_name_that_is_not_a_file_name_is_refused(tmp_path: Path, name: str) -> None:
    path = hostile_volume(tmp_path, {name: FileEntry(Contents(b"x"))})
    with pytest.raises(ImageFormatError, match="invalid name"):
        open_image(path).tree()


def test_a_name_with_nul_is_refused_by_the_copy(tmp_path: Path) -> None:
    path = hostile_volume(
        tmp_path, {"dir": {"children": {"a\0b": FileEntry(Contents(b"x"))}}, "ok": {}}
    )
    tree = open_image(path).tree()
    dest = tmp_path / "dest"
    result = copy_out(tree, ["/dir"], dest, recursive=True)
    assert "is not a file name" in str(result.errors[0])
    assert list(dest.iterdir()) == []


def test_a_failed_file_copy_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    tree = Tree()
    tree.add_file("/big", os.urandom(1 << 20))
    image = tmp_path / "volume.raw"
    write_raw_volume(image, tree)
    read = open_image(image).tree()
    os.truncate(image, image.stat().st_size - (1 << 20))  # the image shrinks under the copy
    dest = tmp_path / "big"
    dest.write_text("previous\n")
    result = copy_out(read, ["/big"], dest)
    assert "truncated" in str(result.errors[0]) and "/big" in str(result.errors[0])
    assert dest.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "volume.raw"]


def test_deep_folders_copy_with_few_descriptors(tmp_path: Path) -> None:
    tree = Tree()
    deep = "/" + "/".join(f"d{i}" for i in range(300))
    tree.add_file(deep + "/leaf", b"at the bottom\n")
    tree.add_file("/d0/d1/side", b"beside\n")
    tree = image_tree(tmp_path, tree)
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    dest = tmp_path / "dest"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY)
    try:
        result = copy_out(tree, ["/"], dest, recursive=True)
        # the path is far longer than one system call takes: read it back folder by folder
        assert result.ok and result.directories == 300 and result.files == 2
        for i in range(300):
            child = os.open(f"d{i}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 100) == b"at the bottom\n"
        os.close(leaf)
    finally:
        os.close(fd)
    assert (dest / "d0/d1/side").read_bytes() == b"beside\n"
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


def test_a_destination_that_cannot_be_used_is_named(tmp_path: Path) -> None:
    tree = sample(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(HostFileError, match=r"cannot use .*file/x as the destination"):
        copy_out(tree, ["/etc/hosts"], tmp_path / "file" / "x")
    result = copy_out(tree, ["/etc/hosts"], tmp_path / "missing" / "x")
    assert str(result.errors[0]).startswith(f"cannot copy into {tmp_path / 'missing'}: ")

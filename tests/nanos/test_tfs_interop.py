"""Interoperability with Nanos's own tools, and a large tree through writer and reader.

``PYOPS_NANOS_MKFS`` and ``PYOPS_NANOS_DUMP`` name Nanos's ``mkfs`` and ``dump`` programs
(built from the Nanos sources); the tests that need them skip without them.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from pyops.nanos.disk import open_image, write_disk, write_raw_volume
from pyops.nanos.manifest import Manifest
from pyops.nanos.tfs import iter_file_contents
from pyops.nanos.tree import Directory, File, HardLink, ImageData, Symlink, Tree

from ..conftest import find_release


def tool(name: str) -> Path:
    path = os.environ.get(f"PYOPS_NANOS_{name.upper()}")
    if not path or not Path(path).is_file():
        pytest.skip(f"set PYOPS_NANOS_{name.upper()} to Nanos's {name} tool to run this test")
    return Path(path)


def digest_of(source: ImageData) -> str:
    h = hashlib.sha256()
    for piece in iter_file_contents(source):
        h.update(piece)
    return h.hexdigest()


def host_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def image_listing(tree: Tree) -> dict[str, tuple[str, str]]:
    """Path -> (kind, sha256 or link target), hard links shown as their files."""
    out: dict[str, tuple[str, str]] = {}
    for path, node in tree.walk():
        if isinstance(node, HardLink):
            node = tree.resolve_hardlink(node)
        if isinstance(node, Directory):
            out[path] = ("dir", "")
        elif isinstance(node, Symlink):
            out[path] = ("link", node.target)
        elif isinstance(node, File):
            assert isinstance(node.source, ImageData)
            out[path] = ("file", digest_of(node.source))
    return out


def host_listing(root: Path) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {"/": ("dir", "")}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = "/" + str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", host_digest(p))
    return out


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Over 20,000 entries (files, empty files, symlinks, odd names) and one 100 MB file."""
    root = tmp_path_factory.mktemp("big")
    for d in range(100):
        sub = root / f"dir {d:03d}"
        sub.mkdir()
        for i in range(200):
            (sub / f"f{i}").write_bytes(f"{d}/{i}\n".encode() * (i % 7))
        (sub / "link").symlink_to("f1")
        (sub / 'ünï "q"').write_bytes(b"x")
    block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB, not all zeros
    with open(root / "large.bin", "wb") as f:
        for i in range(100):
            f.write(block[i:] + block[:i])
    return root


def test_large_tree_round_trip(tmp_path: Path, big_tree: Path) -> None:
    tree = Tree()
    tree.add_host_path(big_tree, "/")
    image = tmp_path / "big.img"
    write_raw_volume(image, tree)
    back = open_image(image).tree()
    listing = image_listing(back)
    assert len(listing) > 20_000
    assert listing == host_listing(big_tree)


def test_dump_reads_our_large_volume(tmp_path: Path, big_tree: Path) -> None:
    dump = tool("dump")
    tree = Tree()
    tree.add_host_path(big_tree, "/")
    image = tmp_path / "big.img"
    write_raw_volume(image, tree)
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run([str(dump), "-d", str(out), str(image)], check=True, capture_output=True)
    expected = host_listing(big_tree)
    # dump -d extracts files and directories but not symlinks; dump -t lists those.
    links = {p: v for p, v in expected.items() if v[0] == "link"}
    assert host_listing(out) == {p: v for p, v in expected.items() if v[0] != "link"}
    shown = sorted(line for line in dump_tree(dump, image) if " -> " in line)
    assert shown == sorted(f"{Path(p).name} -> {target}" for p, (_k, target) in links.items())


def test_dump_reads_our_bootable_disk(tmp_path: Path) -> None:
    dump = tool("dump")
    release, why = find_release()
    if release is None:
        pytest.skip(why)
    tree = Tree()
    tree.add_file("/bin/prog", str(release / "kernel.img"))
    tree.add_file("/etc/with space", b"spaced\n")
    tree.add_symlink("/etc/abs", "/bin/prog")
    disk = tmp_path / "disk.img"
    write_disk(
        disk,
        tree,
        Manifest(program="/bin/prog", arguments=("prog", "x")),
        boot_img=release / "boot.img",
        kernel=release / "kernel.img",
    )
    out = tmp_path / "extracted"
    out.mkdir()
    result = subprocess.run(
        [str(dump), "-d", str(out), str(disk)], check=True, capture_output=True, text=True
    )
    assert "detected filesystem" in result.stdout + result.stderr
    assert (out / "bin" / "prog").read_bytes() == (release / "kernel.img").read_bytes()
    assert (out / "etc" / "with space").read_bytes() == b"spaced\n"
    assert "abs -> /bin/prog" in dump_tree(dump, disk)


def dump_tree(dump: Path, image: Path) -> list[str]:
    """The lines of ``dump -t``, without colours and tree prefixes.

    dump writes its ``|   `` prefixes in pieces that can land anywhere in a later line, even
    inside an escape sequence or a UTF-8 character, and lists a directory in an order that
    changes from run to run; so the prefixes and colours are taken out of the bytes before
    they are decoded.
    """
    raw = subprocess.run([str(dump), "-t", str(image)], check=True, capture_output=True).stdout
    plain = re.sub(rb"\x1b\[[0-9;]*m", b"", re.sub(rb"\|   ", b"", raw))
    return [line.strip() for line in plain.decode("utf-8").splitlines()]


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_we_read_volumes_made_by_nanos_mkfs(tmp_path: Path) -> None:
    mkfs = tool("mkfs")
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_bytes(b"hi\n")
    (src / "empty").write_bytes(b"")
    block = hashlib.sha256(b"x").digest() * 32768
    with open(src / "forty", "wb") as f:
        for _ in range(40):
            f.write(block)
    manifest = (
        "(children:("
        f"hello:(contents:(host:{src / 'hello.txt'}))"
        f" {quote('with space ü')}:(contents:(host:{src / 'hello.txt'}))"
        f" empty:(contents:(host:{src / 'empty'}))"
        f" dir:(children:(forty:(contents:(host:{src / 'forty'})) ln:(linktarget:../hello)))"
        ")"
        ' program:/hello arguments:[hello "a b"] environment:(A:1 B:"two words")'
        " mounts:(data:/mnt))"
    )
    image = tmp_path / "mkfs.img"
    subprocess.run(
        [str(mkfs), "-l", "reference", str(image)],
        input=manifest.encode(),
        check=True,
        capture_output=True,
    )
    disk = open_image(image)
    assert disk.root.info.label == "reference"
    assert disk.manifest == Manifest(
        program="/hello",
        arguments=("hello", "a b"),
        environment={"A": "1", "B": "two words"},
        extra={"mounts": {"data": "/mnt"}},
    )
    listing = image_listing(disk.tree())
    h = host_digest
    assert listing == {
        "/": ("dir", ""),
        "/hello": ("file", h(src / "hello.txt")),
        "/with space ü": ("file", h(src / "hello.txt")),
        "/empty": ("file", h(src / "empty")),
        "/dir": ("dir", ""),
        "/dir/forty": ("file", h(src / "forty")),
        "/dir/ln": ("link", "../hello"),
    }
    # 40 MiB is split by mkfs into two extents, which we read back in order
    forty = disk.tree().get("/dir/forty")
    assert isinstance(forty, File) and isinstance(forty.source, ImageData)
    assert len(forty.source.extents) == 2


def test_we_read_bootable_disks_made_by_nanos_mkfs(tmp_path: Path) -> None:
    mkfs = tool("mkfs")
    release, why = find_release()
    if release is None:
        pytest.skip(why)
    (tmp_path / "hello.txt").write_bytes(b"hi\n")
    image = tmp_path / "disk.img"
    subprocess.run(
        [
            str(mkfs),
            "-b",
            str(release / "boot.img"),
            "-k",
            str(release / "kernel.img"),
            str(image),
        ],  # fmt: skip
        input=f"(children:(hello:(contents:(host:{tmp_path / 'hello.txt'})))"
        " program:/hello)".encode(),
        check=True,
        capture_output=True,
    )
    disk = open_image(image)
    assert disk.manifest.program == "/hello"
    boot = disk.boot_tree()
    assert boot is not None
    kernel = boot.get("/kernel")
    assert isinstance(kernel, File) and isinstance(kernel.source, ImageData)
    assert digest_of(kernel.source) == host_digest(release / "kernel.img")

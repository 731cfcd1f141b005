"""Fuzzing the volume reader: real images written by pyops, with bytes flipped, set,
truncated, spliced and cut out, read by open_image and walked as ``pyops image`` walks them
(tree, every file's contents, the manifest). Only a PyopsError may come out."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyops.errors import PyopsError
from pyops.nanos.disk import open_image, write_raw_volume
from pyops.nanos.manifest import Manifest
from pyops.nanos.tfs import SECTOR, iter_file_contents, read_volume
from pyops.nanos.tree import File, ImageData, Tree
from pyops.nanos.tuples import canonical, to_text

LOG_START = SECTOR  # the first log extension is at sector 1
DATA_START = 3073 * SECTOR


@pytest.fixture(scope="module")
def seed_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """A small real image (files, folders, links, a multi-extent file, a manifest) and the
    length of its log."""
    tree = Tree()
    tree.add_file("/bin/app", b"\x7fELF" + bytes(2000))
    tree.add_file("/etc/hosts", b"127.0.0.1 localhost\n")
    tree.add_file("/empty", b"")
    tree.add_file("/a/b/c/deep.txt", b"deep\n" * 300)
    tree.add_symlink("/lib", "usr/lib")
    tree.add_directory("/usr/lib")
    tree.add_hardlink("/a/link", "/etc/hosts")
    manifest = Manifest(
        program="/bin/app",
        arguments=("app", "-v"),
        environment={"HOME": "/", "PATH": "/bin"},
        extra={"mounts": {"uuid": "/data"}, "debug": None, "list": ["a", "b", 3]},
    )
    path = tmp_path_factory.mktemp("seed") / "seed.img"
    write_raw_volume(path, tree, manifest)
    data = path.read_bytes()
    log_end = LOG_START + len(data[LOG_START:DATA_START].rstrip(b"\0")) + 1
    return data, log_end


def walk_image(path: Path) -> None:
    """What the image commands do with an image: every error must be a PyopsError."""
    try:
        disk = open_image(path)
        to_text(canonical({k: v for k, v in disk.root.root.items() if k != "children"}))
        disk.manifest  # noqa: B018 - reading it is the test
        tree = disk.tree()
        for _path, node in tree.walk():
            if isinstance(node, File) and isinstance(node.source, ImageData):
                for _piece in itertools.islice(iter_file_contents(node.source), 4):
                    pass
        tree.lookup("/a/b/c/deep.txt")
    except PyopsError:
        pass


# (kind, where, position, value): where 0 = sector 0, 1 = the log, 2 = file data, 3 = anywhere
edits = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.sampled_from([0, 1, 1, 1, 2, 3]),
        st.integers(0, 1 << 24),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=5,
)


def mutate(data: bytes, log_end: int, changes: list[tuple[int, int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, position, value in changes:
        if not out:
            break
        low, high = (
            [(0, SECTOR), (LOG_START, log_end), (DATA_START, DATA_START + 8192)][where]
            if where < 3
            else (0, len(out))
        )
        high = min(high, len(out))
        if low >= high:
            low, high = 0, len(out)
        i = low + position % (high - low)
        if kind == 0:
            out[i] ^= value or 1
        elif kind == 1:
            out[i] = value
        elif kind == 2:
            del out[i:]  # truncate
        elif kind == 3:  # splice: copy a run from elsewhere in the metadata over i
            j = LOG_START + (position >> 8) % max(1, log_end - LOG_START)
            run = out[j : j + 1 + value % 16]
            out[i : i + len(run)] = run
        else:  # cut a few bytes out (shifts everything after)
            del out[i : i + 1 + value % 4]
    return bytes(out)


def test_mutated_images(seed_image: tuple[bytes, int], tmp_path: Path) -> None:
    data, log_end = seed_image
    path = tmp_path / "fuzz.img"
    walk_image(_write(path, data))  # the seed itself reads back whole
    assert open_image(path).tree().exists("/a/b/c/deep.txt")

    @settings(max_examples=250, deadline=None)
    @given(edits)
    def run(changes: list[tuple[int, int, int, int]]) -> None:
        walk_image(_write(path, mutate(data, log_end, changes)))

    run()


def test_random_logs(seed_image: tuple[bytes, int], tmp_path: Path) -> None:
    # A valid sector 0 followed by a log of random frames.
    data, _log_end = seed_image
    path = tmp_path / "random.img"

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=1, max_size=300))
    def run(log: bytes) -> None:
        image = bytearray(data[:DATA_START])
        image[LOG_START + 8 : LOG_START + 8 + len(log)] = log
        try:
            with open(_write(path, bytes(image)), "rb") as f:
                read_volume(f)
        except PyopsError:
            pass

    run()


def _write(path: Path, data: bytes) -> Path:
    with open(path, "wb") as f:
        f.write(data)
    os.truncate(path, len(data))
    return path

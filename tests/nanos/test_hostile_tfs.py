"""Hostile Nanos images: cycles, depth, sharing, huge numbers and lengths in the metadata.

Images are written by pyops's own writer, or made of records encoded here and framed as
the writer frames them (so every byte but the hostile one is what pyops writes).
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from pyops.errors import ImageFormatError, LimitExceeded
from pyops.nanos.disk import open_image, write_raw_volume
from pyops.nanos.tfs import (
    EXTENSION_SECTORS,
    SECTOR,
    FileEntry,
    frame_log,
    initial_extension,
    iter_file_contents,
    read_volume,
)
from pyops.nanos.tree import Contents, File, ImageData, ImageExtent, Tree
from pyops.nanos.tuples import (
    Decoder,
    Encoder,
    canonical,
    check_structure,
    encode_header,
    encode_record,
    to_text,
)


def volume_from_records(path: Path, records: list[bytes], size: int = 4 << 20) -> Path:
    """A volume whose log holds ``records``, framed as the writer frames them."""

    def sector(k: int) -> int:
        return 1 + k * EXTENSION_SECTORS

    extensions = frame_log(records, sector)
    with open(path, "wb") as f:
        f.truncate(max(size, (sector(len(extensions)) + 1) * SECTOR))
        f.write(initial_extension(bytes(16), b""))
        for k, ext in enumerate(extensions):
            f.seek(sector(k) * SECTOR)
            f.write(ext)
    return path


def nested(depth: int, key: str = "a") -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {key: value}
    return value


def folder_chain(depth: int) -> dict[str, Any]:
    """A root tuple with folders d/d/d/... ``depth`` deep and a file at the bottom."""
    inner: dict[str, Any] = {"f": FileEntry(Contents(b"bottom\n"))}
    for _ in range(depth):
        inner = {"d": {"children": inner}}
    return {"children": inner}


# --- cycles ---------------------------------------------------------------------------------


def cyclic_records() -> list[bytes]:
    encoder = Encoder()
    folder: dict[str, Any] = {"children": {}}
    root = {"children": {"d": folder}}
    snapshot = bytearray()
    encoder.value(snapshot, root)
    update = bytearray()
    # A later record puts the folder inside its own children: d/d/d/... without end.
    encoder.update(update, folder["children"], "d", folder)
    return [bytes(snapshot), bytes(update)]


def test_tuple_cycle_is_an_image_error(tmp_path: Path) -> None:
    path = volume_from_records(tmp_path / "cycle.img", cyclic_records())
    with pytest.raises(ImageFormatError, match="cyclic"):
        open_image(path)
    # The decoder alone gives the cycle; no walker loops on it.
    decoder = Decoder()
    values = [decoder.decode(record) for record in cyclic_records()]
    root = decoder.dictionary[1]
    assert values[1] is root["children"]["d"]["children"]
    for walk in (canonical, to_text, check_structure):
        with pytest.raises(ImageFormatError, match="cyclic"):
            walk(root)


def test_self_containing_vector_is_an_image_error() -> None:
    encoder = Encoder()
    vector: list[Any] = [1]
    first = bytearray()
    encoder.value(first, {"v": vector})
    # An update of the vector in reference form, whose item is the vector itself.
    index = encoder.index_of(vector)
    assert index is not None
    second = encode_header(False, 2, 1) + bytes([index]) + encode_header(False, 2, 0)
    second += bytes([index])
    decoder = Decoder()
    decoder.decode(bytes(first))
    decoder.decode(second)
    with pytest.raises(ImageFormatError, match="cyclic"):
        check_structure(decoder.dictionary[1])


# --- depth -----------------------------------------------------------------------------------


def test_deep_tuple_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = encode_record(nested(3000))
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_TUPLE_DEPTH"):
        Decoder().decode(record)
    root = {"children": {}, "deep": nested(3000)}
    path = volume_from_records(tmp_path / "deep.img", [encode_record(root)])
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_TUPLE_DEPTH"):
        open_image(path)
    # Raised, a 3,000-deep value is decoded and walked without recursion.
    monkeypatch.setenv("PYOPS_LIMIT_TUPLE_DEPTH", "10000")
    disk = open_image(path)
    assert to_text(canonical(disk.root.root["deep"])).startswith("(a:(a:(a:")
    assert disk.manifest.extra["deep"]["a"]["a"]
    # The limit is the variable's.
    monkeypatch.setenv("PYOPS_LIMIT_TUPLE_DEPTH", "10")
    Decoder().decode(encode_record(nested(10)))
    with pytest.raises(LimitExceeded):
        Decoder().decode(encode_record(nested(11)))


def test_deep_value_built_across_records_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each record is shallow; together they nest 3,000 deep (updates of earlier tuples).
    encoder = Encoder()
    root: dict[str, Any] = {"children": {}, "x": {}}
    first = bytearray()
    encoder.value(first, root)
    records = [bytes(first)]
    tip = root["x"]
    for _ in range(3000):
        inner: dict[str, Any] = {}
        out = bytearray()
        encoder.update(out, tip, "a", inner)
        records.append(bytes(out))
        tip = inner
    path = volume_from_records(tmp_path / "layers.img", records)
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_TUPLE_DEPTH"):
        open_image(path)
    monkeypatch.setenv("PYOPS_LIMIT_TUPLE_DEPTH", "5000")
    assert open_image(path).root.records == 3001


def test_nested_sharing_is_refused() -> None:
    # 80 levels, each holding the next one twice: 2^80 values once written out.
    encoder = Encoder()
    value: dict[str, Any] = {}
    for _ in range(80):
        value = {"a": value, "b": value}
    decoder = Decoder()
    root = decoder.decode(encode_record({"children": {}, "laughs": value}, encoder))
    with pytest.raises(ImageFormatError, match="shared"):
        check_structure(root)
    # canonical keeps the sharing, so it stays small.
    copy = canonical(root["laughs"])
    assert copy["a"] is copy["b"]


@pytest.mark.parametrize("linked", [False, True], ids=["tree", "with-hard-link"])
def test_deep_folder_chain_in_an_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: bool
) -> None:
    # With a hard link, tuples are shared and the whole structure is checked once read;
    # without, the decoder checks the depth as it goes.
    tree = Tree()
    path = "/d" * 3000
    tree.add_file(path + "/f", b"bottom\n")
    if linked:
        tree.add_hardlink("/link", path + "/f")
    image = tmp_path / "deep.img"
    write_raw_volume(image, tree)  # the writer takes any depth
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_(TUPLE|PATH)_DEPTH"):
        open_image(image)
    # Raised limits: read back, walked and looked up without recursion.
    monkeypatch.setenv("PYOPS_LIMIT_TUPLE_DEPTH", "10000")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_PATH_DEPTH"):
        open_image(image).tree()
    monkeypatch.setenv("PYOPS_LIMIT_PATH_DEPTH", "10000")
    back = open_image(image).tree()
    assert sum(1 for _ in back.walk()) == 3002 + linked
    real, node = back.lookup(path + "/f")
    assert real == path + "/f"
    assert isinstance(node, File) and isinstance(node.source, ImageData)
    assert b"".join(iter_file_contents(node.source)) == b"bottom\n"


def test_deep_folder_chain_from_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same chain encoded directly (as another writer might), refused by folder depth.
    monkeypatch.setenv("PYOPS_LIMIT_TUPLE_DEPTH", "10000")
    monkeypatch.setenv("PYOPS_LIMIT_PATH_DEPTH", "100")
    encoder = Encoder()
    out = bytearray()
    encoder.value_deep(out, folder_chain(3000))
    volume = volume_from_records(tmp_path / "chain.img", [bytes(out)])
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_PATH_DEPTH"):
        open_image(volume).tree()


def test_deep_host_folder_goes_into_an_image(tmp_path: Path) -> None:
    # Tree.add_host_path walks host folders without recursion.
    depth = sys.getrecursionlimit() + 100
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"x")
    finally:
        os.close(fd)
    try:
        tree = Tree()
        tree.add_host_path(tmp_path / "d", "/top")
        assert sum(1 for _ in tree.walk()) == 1 + depth + 1
    finally:
        _remove_deep(tmp_path / "d")  # pytest's own clean-up would recurse


def _remove_deep(top: Path) -> None:
    """Remove a chain of folders named ``d`` from the bottom up (no recursion)."""
    paths = [str(top)]
    while os.path.isdir(paths[-1] + "/d"):
        paths.append(paths[-1] + "/d")
    for path in reversed(paths):
        for name in os.listdir(path):
            if name != "d":
                os.unlink(f"{path}/{name}")
        os.rmdir(path)


# --- numbers and lengths ---------------------------------------------------------------------


def one_file(tmp_path: Path, attributes: dict[str, Any]) -> Path:
    root = {"children": {"big": attributes}}
    return volume_from_records(tmp_path / "one.img", [encode_record(root)])


def test_huge_filelength_is_refused_or_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = one_file(tmp_path, {"filelength": 1 << 62, "extents": {}})
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_FILE_BYTES"):
        open_image(image).tree()
    # Within the limit, a huge sparse file streams in bounded pieces, from one buffer.
    image = one_file(tmp_path, {"filelength": 1 << 40, "extents": {}})
    node = open_image(image).tree().get("/big")
    assert isinstance(node, File) and isinstance(node.source, ImageData)
    pieces = iter_file_contents(node.source)
    first = [next(pieces) for _ in range(64)]
    assert all(len(p) == 1 << 20 and not any(p[:4096]) for p in first)
    assert len({id(p) for p in first}) == 1
    # Data and holes of a real file come out in order, each piece bounded.
    contents = ImageData(str(image), (ImageExtent(2, 0, SECTOR),), 3 * SECTOR + 5)
    got = b"".join(iter_file_contents(contents))
    assert got == bytes(2 * SECTOR) + image.read_bytes()[:SECTOR] + bytes(5)
    monkeypatch.setenv("PYOPS_LIMIT_FILE_BYTES", "1000")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_FILE_BYTES"):
        open_image(image).tree()


def test_extent_outside_the_volume_is_refused(tmp_path: Path) -> None:
    for extent in (
        {"offset": 1 << 60, "length": 1, "allocated": 1},
        {"offset": 100, "length": 1 << 60, "allocated": 1 << 60},
        {"offset": "9" * 5000, "length": 1, "allocated": 1},
        {"offset": "²", "length": 1, "allocated": 1},
        {"offset": -1, "length": 1, "allocated": 1},
    ):
        image = one_file(tmp_path, {"filelength": 512, "extents": {"0": extent}})
        with pytest.raises(ImageFormatError):
            open_image(image).tree()


def test_numbers_in_tuples_are_bounded() -> None:
    # A varint of more than 64 bits and a header of more than 10 groups are refused.
    with pytest.raises(ImageFormatError):
        Decoder().decode(b"\xb0" + b"\xff" * 20 + b"\x01")
    with pytest.raises(ImageFormatError):
        Decoder().decode(b"\x98" + b"\xff" * 20)
    # A tuple claiming 2^70 entries ends with its record.
    with pytest.raises(ImageFormatError):
        Decoder().decode(b"\x98" + b"\xff" * 9 + b"\x7f")


def test_log_outside_the_volume_is_refused() -> None:
    # One sector with a valid header, whose log link points past the volume.
    with pytest.raises(ImageFormatError):
        read_volume(io.BytesIO(initial_extension(bytes(16), b"")))


def test_image_tree_with_huge_hard_link_count_is_fine(tmp_path: Path) -> None:
    # Hard links are shared tuples; many of them are not "nested sharing".
    tree = Tree()
    tree.add_file("/f", b"x")
    for i in range(2000):
        tree.add_hardlink(f"/l{i}", "/f")
    image = tmp_path / "links.img"
    write_raw_volume(image, tree)
    back = open_image(image).tree()
    assert len(back.root.entries) == 2001

"""Hostile layers (issue 18): each attack is built here and unpacked into a root inside a
canary tree, whose every file and folder (content, mode, mtime, existence) must not change."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyops import atomic
from pyops.errors import DiskFull, LayerError, LimitExceeded, PyopsError, UnsafeLayerPath
from pyops.oci import layers
from pyops.oci.layers import unpack_layers

from ..layer_fixtures import D, Entry, F, H, S, make_canary, raw_tar, tar_bytes, tree_state

MiB = 1 << 20


class Canary:
    """The image root inside a watched tree."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.root = make_canary(top)
        self.host = top / "host"
        self.layer_dir = top.parent / "layers"
        self.layer_dir.mkdir(exist_ok=True)
        self.before = tree_state(top, self.root)
        self.count = 0

    def layer(self, data: bytes, *, compress: bool = False) -> Path:
        self.count += 1
        path = self.layer_dir / f"layer{self.count}"
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        return path

    def entries(self, entries: list[Entry], *, compress: bool = False) -> Path:
        return self.layer(tar_bytes(entries), compress=compress)

    def unchanged(self) -> bool:
        return tree_state(self.top, self.root) == self.before


@pytest.fixture()
def canary(tmp_path: Path) -> Canary:
    return Canary(tmp_path / "canary")


def _info(name: str, kind: bytes = tarfile.REGTYPE, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


# -- 1. whiteouts and names -------------------------------------------------------------------


@pytest.mark.parametrize("member", [".wh...", "sub/.wh...", ".wh..", "./sub/.wh.."])
def test_whiteout_of_dot_dot_deletes_nothing_outside(canary: Canary, member: str) -> None:
    lower = canary.entries([F("sub/file", b"x"), F("other", b"y")])
    upper = canary.entries([F(member)])
    with pytest.raises(UnsafeLayerPath, match="whiteout"):
        unpack_layers([lower, upper], canary.root)
    assert canary.unchanged()


def test_whiteout_through_a_symlink_stays_inside(canary: Canary) -> None:
    lower = canary.entries(
        [S("up", "../../.."), S("hostlink", str(canary.host)), F("victim/secret", b"image")]
    )
    upper = canary.entries([F("up/.wh.keep"), F("hostlink/.wh.victim"), F("up/.wh..wh..opq")])
    unpack_layers([lower, upper], canary.root)
    assert canary.unchanged()
    # The image's own /victim went (through hostlink, an in-image path), not the host's.
    assert not (canary.root / "victim").exists()


def test_aufs_metadata_is_not_a_whiteout(canary: Canary) -> None:
    lower = canary.entries([F("plnk", b"1"), F("aufs", b"2")])
    upper = canary.entries([D(".wh..wh.plnk"), F(".wh..wh.aufs")])
    unpack_layers([lower, upper], canary.root)
    assert sorted(os.listdir(canary.root)) == ["aufs", "plnk"]
    assert canary.unchanged()


@pytest.mark.parametrize(
    "info",
    [
        _info("a", pax_headers={"path": "a\0/../../keep"}),
        _info("l", tarfile.SYMTYPE, pax_headers={"linkpath": "x\0y"}),
        _info("h", tarfile.LNKTYPE, pax_headers={"linkpath": "keep\0"}),
    ],
    ids=["name", "symlink", "hardlink"],
)
def test_nul_in_names_is_refused(canary: Canary, info: tarfile.TarInfo) -> None:
    with pytest.raises(UnsafeLayerPath, match="NUL"):
        unpack_layers([canary.layer(raw_tar([(info, b"")]))], canary.root)
    assert canary.unchanged()


def test_name_too_long_for_the_host_is_a_layer_error(canary: Canary) -> None:
    with pytest.raises(LayerError, match="cannot be unpacked"):
        unpack_layers([canary.entries([F("x" * 300, b"1")])], canary.root)


# -- 2. folder metadata -----------------------------------------------------------------------


@pytest.mark.parametrize("same_layer", [True, False])
@pytest.mark.parametrize("how", ["absolute", "relative", "via-root-link"])
def test_folder_metadata_never_follows_a_later_symlink(
    canary: Canary, same_layer: bool, how: str
) -> None:
    target = {
        "absolute": str(canary.host),
        "relative": "../" * 6 + os.path.relpath(canary.host, "/"),
        "via-root-link": "/",
    }[how]
    first = [D("a"), D("a/victim", mode=0o777), D("a/victim/inner", mode=0o777)]
    then = [F(".wh.a"), S("a", target)] if not same_layer else [S("a", target)]
    if same_layer:
        paths = [canary.entries(first + then)]
    else:
        paths = [canary.entries(first), canary.entries(then)]
    unpack_layers(paths, canary.root)
    assert canary.unchanged()
    assert os.readlink(canary.root / "a") == target


def test_folder_metadata_is_forgotten_with_its_folder(canary: Canary) -> None:
    lower = canary.entries([D("a"), D("a/b", mode=0o700), D("a/b/c", mode=0o711)])
    # a/b is removed with a, then made again as the implicit parent of a file.
    upper = canary.entries([F(".wh.a"), F("a/b/file", b"1")])
    unpack_layers([lower, upper], canary.root)
    assert stat.S_IMODE((canary.root / "a/b").stat().st_mode) == 0o755
    assert not (canary.root / "a/b/c").exists()


def test_folder_metadata_is_applied_children_first(canary: Canary) -> None:
    paths = [canary.entries([D("ro", mode=0o555), D("ro/sub", mode=0o500), F("ro/sub/f", b"1")])]
    unpack_layers(paths, canary.root)
    assert stat.S_IMODE((canary.root / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((canary.root / "ro/sub").stat().st_mode) == 0o500
    assert (canary.root / "ro").stat().st_mtime == 1_700_000_000
    assert (canary.root / "ro/sub").stat().st_mtime == 1_700_000_000


def test_file_modes_never_follow_a_symlinked_parent(canary: Canary) -> None:
    lower = canary.entries([S("a", str(canary.host))])
    upper = canary.entries([F("a/victim/secret", b"image", mode=0o4777), D("a/victim", 0o777)])
    unpack_layers([lower, upper], canary.root)
    assert canary.unchanged()
    inside = canary.root / str(canary.host).lstrip("/") / "victim"
    assert (inside / "secret").read_bytes() == b"image"
    assert stat.S_IMODE((inside / "secret").stat().st_mode) == 0o777  # no setuid


# -- 4. unbounded work ------------------------------------------------------------------------


def test_gzip_bomb_is_stopped_by_the_ratio_limit(
    canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_LAYER_RATIO", "4")
    # Declared: refused before a byte is written.
    big = canary.entries([F("big", bytes(16 * MiB))], compress=True)
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_LAYER_RATIO"):
        unpack_layers([big], canary.root)
    assert not (canary.root / "big").exists()
    # Many small files: stopped as the bytes flow, long before the end.
    many = canary.entries([F(f"f{i}", bytes(MiB)) for i in range(32)], compress=True)
    with pytest.raises(LimitExceeded, match="ratio"):
        unpack_layers([many], canary.root / "again")
    written = len(os.listdir(canary.root / "again"))
    assert 0 < written <= 9  # the ratio applies past 8 MiB
    assert canary.unchanged()


def test_tiny_layers_never_trip_the_ratio_limit(
    canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_LAYER_RATIO", "1")
    unpack_layers([canary.entries([F("zeros", bytes(2 * MiB))], compress=True)], canary.root)
    assert (canary.root / "zeros").stat().st_size == 2 * MiB


def test_unpacked_bytes_limit_counts_all_layers(
    canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_UNPACKED_BYTES", str(3 * MiB))
    paths = [canary.entries([F(f"f{i}", os.urandom(MiB + 1000))]) for i in range(3)]
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_UNPACKED_BYTES") as caught:
        unpack_layers(paths, canary.root)
    assert "layer 3" in str(caught.value)
    assert not (canary.root / "f2").exists()
    unpack_layers(paths[:2], canary.root / "two")


def test_unpacked_bytes_limit_stops_data_that_no_size_declares(
    canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_UNPACKED_BYTES", str(MiB))
    # A member of an unknown type: tarfile reads past its data, which no check can see ahead.
    junk = _info("junk", b"Q", size=4 * MiB)
    with pytest.raises(LimitExceeded, match="UNPACKED_BYTES"):
        unpack_layers([canary.layer(raw_tar([(junk, bytes(4 * MiB))]))], canary.root)


def test_entry_count_limit(canary: Canary, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_LAYER_ENTRIES", "10")
    five = canary.entries([F(f"a{i}", b"x") for i in range(5)])
    six = canary.entries([F(f"b{i}", b"x") for i in range(6)])
    unpack_layers([five, five], canary.root / "ten")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_LAYER_ENTRIES"):
        unpack_layers([five, six], canary.root / "eleven")
    assert not (canary.root / "eleven/b5").exists()


def _gnu_sparse_old() -> bytes:
    info = _info("sparse", tarfile.GNUTYPE_SPARSE, size=512)
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    # One sparse struct (offset 20 GB, 512 bytes) and the real size, then the checksum again.
    header[386:398] = b"%011o\0" % (20 << 30)
    header[398:410] = b"%011o\0" % 512
    header[483:495] = b"%011o\0" % ((20 << 30) + 512)
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header) + b"x" * 512 + bytes(1024)


def _pax_sparse(version: str) -> bytes:
    pax = {"GNU.sparse.name": "big", "GNU.sparse.realsize": str(21 << 30)}
    data = b""
    if version == "0.1":
        pax["GNU.sparse.map"] = f"{20 << 30},512"
        pax["GNU.sparse.size"] = str(21 << 30)
        data = b"x" * 512
    elif version == "0.0":
        pax["GNU.sparse.size"] = str(21 << 30)
        pax["GNU.sparse.offset"] = str(20 << 30)
        pax["GNU.sparse.numbytes"] = "512"
        data = b"x" * 512
    else:
        pax["GNU.sparse.major"], pax["GNU.sparse.minor"] = "1", "0"
        data = b"1\n%d\n512\n" % (20 << 30)
        data = data.ljust(512, b"\0") + b"x" * 512
    info = _info("GNUSparseFile.0/big", size=len(data), pax_headers=pax)
    return raw_tar([(info, data)])


@pytest.mark.parametrize("version", ["old", "0.0", "0.1", "1.0"])
def test_sparse_member_is_refused(canary: Canary, version: str) -> None:
    data = _gnu_sparse_old() if version == "old" else _pax_sparse(version)
    with pytest.raises(LayerError, match="sparse"):
        unpack_layers([canary.layer(data, compress=True)], canary.root)
    assert os.listdir(canary.root) == []


def _with_trailing(raw: bytes, trailing: bytes, *, inside_gzip: bool) -> bytes:
    if inside_gzip:
        return gzip.compress(raw + trailing, mtime=0)
    return raw + trailing


@pytest.mark.parametrize("where", ["plain", "in-gzip", "gzip-padding"])
def test_trailing_zeros_over_the_limit_are_refused(
    canary: Canary, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_TRAILING_BYTES", str(MiB))
    raw = tar_bytes([F("a", b"1")])
    # More than the limit and all that the reading thread may read ahead of the refusal
    # (layers._AHEAD chunks and a few more), so that reading all of it would be seen.
    zeros = bytes(8 * MiB)
    data = {
        "plain": raw + zeros,
        "in-gzip": gzip.compress(raw + zeros, mtime=0),
        "gzip-padding": gzip.compress(raw, mtime=0) + zeros,
    }[where]
    reads: list[int] = []
    real = layers._Counting.read

    def counting(self: layers._Counting, size: int = -1, /) -> bytes:
        out = real(self, size)
        reads.append(len(out))
        return out

    monkeypatch.setattr(layers._Counting, "read", counting)
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_TRAILING_BYTES"):
        unpack_layers([canary.layer(data)], canary.root)
    if where != "in-gzip":  # the zeros were never all read, and never byte by byte
        assert sum(reads) < len(data)
        assert len(reads) < 100


@pytest.mark.parametrize("where", ["plain", "in-gzip", "gzip-padding"])
def test_trailing_zeros_within_the_limit_count_in_the_diff_id(canary: Canary, where: str) -> None:
    raw = tar_bytes([F("a", b"1")]) + bytes(20_000)
    data = {
        "plain": raw,
        "in-gzip": gzip.compress(raw, mtime=0),
        "gzip-padding": gzip.compress(raw, mtime=0) + bytes(20_000),
    }[where]
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    unpack_layers([canary.layer(data)], canary.root, diff_ids=[diff_id])
    assert (canary.root / "a").read_bytes() == b"1"


def test_garbage_after_the_gzip_stream_is_corrupt(canary: Canary) -> None:
    data = gzip.compress(tar_bytes([F("a", b"1")]), mtime=0) + b"\0\0garbage"
    with pytest.raises(LayerError, match="corrupt"):
        unpack_layers([canary.layer(data)], canary.root)


def test_multi_member_gzip_is_one_stream(canary: Canary) -> None:
    raw = tar_bytes([F("a", b"1" * 3000), F("b", b"2")])
    data = gzip.compress(raw[:1500]) + bytes(10) + gzip.compress(raw[1500:])
    unpack_layers(
        [canary.layer(data)], canary.root, diff_ids=["sha256:" + hashlib.sha256(raw).hexdigest()]
    )
    assert (canary.root / "b").read_bytes() == b"2"


def _pax_chain(count: int) -> bytes:
    header = tarfile.TarInfo._create_pax_generic_header(  # type: ignore[attr-defined]
        {"comment": "x"}, tarfile.XHDTYPE, "utf-8"
    )
    return bytes(header) * count + tar_bytes([F("a", b"1")])


def test_extended_header_floods_are_refused(canary: Canary) -> None:
    # A chain of headers (tarfile recurses once per header) ...
    with pytest.raises(LayerError, match="extended headers in a row"):
        unpack_layers([canary.layer(_pax_chain(3000), compress=True)], canary.root)
    # ... and one header tarfile would read whole into memory.
    long_name = tarfile.TarInfo("././@LongLink")
    long_name.type = tarfile.GNUTYPE_LONGNAME
    long_name.size = 64 * MiB
    data = long_name.tobuf(tarfile.GNU_FORMAT) + bytes(64 * MiB)
    with pytest.raises(LayerError, match="extended header of"):
        unpack_layers([canary.layer(data, compress=True)], canary.root)
    # A few in a row are fine.
    unpack_layers([canary.layer(_pax_chain(3))], canary.root / "ok")


@pytest.mark.parametrize(
    "pax",
    [{"mtime": "1e400"}, {"mtime": "nan"}, {"mtime": "-5"}, {"size": "9" * 5000}],
    ids=["inf", "nan", "negative", "huge-digits"],
)
def test_hostile_numbers_in_headers(canary: Canary, pax: dict[str, str]) -> None:
    info = _info("a", size=1, pax_headers=pax)
    try:
        unpack_layers([canary.layer(raw_tar([(info, b"1")]))], canary.root)
    except PyopsError:
        pass
    assert canary.unchanged()


def test_pax_record_length_too_long_for_int_is_a_layer_error(canary: Canary) -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    record = b"9" * 5000 + b" path=x\n"
    header.size = len(record)
    data = header.tobuf(tarfile.USTAR_FORMAT) + record.ljust(512 * 11, b"\0")
    data += tar_bytes([F("a", b"1")])
    with pytest.raises(LayerError):
        unpack_layers([canary.layer(data)], canary.root)


# -- 8. depth ----------------------------------------------------------------------------------


def _empty(root: Path) -> None:
    # Deep trees cannot be left to pytest's cleanup (shutil.rmtree recurses).
    for name in os.listdir(root):
        atomic.remove(root / name)


def _chain(depth: int, name: str = "d") -> list[str]:
    return ["/".join([name] * i) for i in range(1, depth + 1)]


def test_deep_folder_chain_is_refused_by_the_depth_limit(canary: Canary) -> None:
    paths = [canary.entries([D(p, mode=0o700) for p in _chain(1500)])]
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_PATH_DEPTH"):
        unpack_layers(paths, canary.root)
    _empty(canary.root)
    assert canary.unchanged()


def test_deep_folder_chain_through_symlinks_is_refused(canary: Canary) -> None:
    chain = "/".join(["d"] * 600)
    paths = [canary.entries([D(chain), S("l", chain), F("l/" + chain + "/f", b"1")])]
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_PATH_DEPTH"):
        unpack_layers(paths, canary.root)
    _empty(canary.root)


def test_deep_folder_chain_unpacks_without_recursion(
    canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_PATH_DEPTH", "3000")
    chain = _chain(1500)
    first = canary.entries([*(D(p, mode=0o700) for p in chain), F(chain[-1] + "/f", b"deep")])
    # The same layer re-adds the chain and makes the root opaque: the walk over this layer's
    # own entries goes 1,500 deep; then a file replaces the chain's top (a 1,500-deep removal).
    second = canary.entries(
        [*(D(p) for p in chain), F(chain[-1] + "/g", b"new"), F(".wh..wh..opq"), F("x", b"1")]
    )
    third = canary.entries([F("d", b"not a folder any more")])
    unpack_layers([first, second], canary.root)
    deepest = canary.root / chain[-1]
    assert (deepest / "g").read_bytes() == b"new"
    assert not (deepest / "f").exists()  # a lower entry, under the opaque root
    assert stat.S_IMODE(deepest.stat().st_mode) == 0o755
    unpack_layers([first, third], canary.root / "again")
    assert (canary.root / "again/d").read_bytes() == b"not a folder any more"
    _empty(canary.root)
    assert canary.unchanged()


def test_deep_whiteout_of_a_lower_chain(canary: Canary, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_PATH_DEPTH", "3000")
    chain = _chain(1500)
    first = canary.entries([D(p) for p in chain])
    second = canary.entries([F(".wh.d")])
    unpack_layers([first, second], canary.root)
    assert os.listdir(canary.root) == []


# -- 10. disk full ----------------------------------------------------------------------------


def _failing(monkeypatch: pytest.MonkeyPatch, name: str, error: BaseException) -> None:
    """Make the second call of ``os.NAME`` (from anywhere: it is the os module) raise, once."""
    real: Callable[..., Any] = getattr(os, name)
    calls = {"n": 0}

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, fake)


def test_disk_full_during_unpack_is_disk_full(
    canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = canary.entries([F("big", os.urandom(300_000))], compress=True)
    real_write = os.write
    root = os.path.realpath(canary.root)

    def write(fd: int, data: Any, /) -> int:
        # Only the files being unpacked fill up; pytest's own output still goes out.
        if os.readlink(f"/proc/self/fd/{fd}").startswith(root + "/"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(layers.os, "write", write)
    with pytest.raises(DiskFull, match="disk full at"):
        unpack_layers([path], canary.root)


def test_disk_full_making_a_folder_is_disk_full(
    canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = canary.entries([D("a"), D("a/b"), F("a/b/c", b"1")])
    _failing(monkeypatch, "mkdir", OSError(errno.EDQUOT, "Disk quota exceeded"))
    with pytest.raises(DiskFull):
        unpack_layers([path], canary.root)


# -- 11. Ctrl-C --------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_ctrl_c_while_reading_is_not_swallowed(
    canary: Canary, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    path = canary.entries([F(f"f{i}", os.urandom(100_000)) for i in range(20)], compress=compress)
    reads = {"n": 0}
    real = layers._Counting.read

    def interrupted(self: layers._Counting, size: int = -1, /) -> bytes:
        reads["n"] += 1
        if reads["n"] == 5:
            raise KeyboardInterrupt
        return real(self, size)

    monkeypatch.setattr(layers._Counting, "read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        unpack_layers([path], canary.root)
    assert reads["n"] == 5  # nothing read on after it


@pytest.mark.parametrize("call", ["mkdir", "lstat", "symlink"])
def test_ctrl_c_in_a_syscall_is_not_swallowed(
    canary: Canary, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    path = canary.entries([D("a"), F("a/f", b"1"), S("a/l", "f"), D("b"), S("b/l", "../a")])
    _failing(monkeypatch, call, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        unpack_layers([path], canary.root)


def test_hard_link_to_the_host_is_impossible(canary: Canary) -> None:
    paths = [canary.entries([S("h", str(canary.host)), H("x", "h/file"), H("y", str(canary.top))])]
    with pytest.raises(LayerError, match="does not exist"):
        unpack_layers(paths, canary.root)
    assert canary.unchanged()


def test_a_symlink_replaced_by_a_folder_is_not_resolved_as_before(canary: Canary) -> None:
    # Found by the property test: the folder chain remembered between members went through
    # "l" while it was a symlink.
    paths = [canary.entries([S("l", "../../.."), S("l/x", "a"), D("l"), F("l/z", b"1")])]
    unpack_layers(paths, canary.root)
    assert (canary.root / "l/z").read_bytes() == b"1"
    assert os.readlink(canary.root / "x") == "a"
    assert canary.unchanged()

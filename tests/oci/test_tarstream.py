"""The tar stream reader against Python's tarfile, on archives written by tarfile itself in
each format, and on the cases a layer writer gets wrong."""

from __future__ import annotations

import io
import tarfile

import pytest

from pyops.errors import LayerError
from pyops.oci.tarstream import BLOCK, TarStream

LONG = "d/" + "n" * 150 + "/" + "f" * 120


def _archive(fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:

        def add(name: str, kind: bytes, data: bytes = b"", **attrs: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o640
            for key, value in attrs.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("d", tarfile.DIRTYPE, mode=0o755)
        add("d/file", tarfile.REGTYPE, b"x" * 1000)
        add("d/empty", tarfile.REGTYPE)
        add(LONG, tarfile.REGTYPE, b"long name")
        add("d/link", tarfile.SYMTYPE, linkname="../" + "t" * 140)
        add("d/hard", tarfile.LNKTYPE, linkname="d/file")
        add("d/dev", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("d/big-mtime", tarfile.REGTYPE, b"m", mtime=8**11 + 5)
        add("d/caf\u00e9", tarfile.REGTYPE, b"utf-8 name")
    return out.getvalue()


def _expected(data: bytes) -> list[tuple[object, ...]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        got = []
        for info in tar:
            content = tar.extractfile(info).read() if info.isreg() else b""  # type: ignore[union-attr]
            got.append((info.name, info.type, info.mode, info.size, int(info.mtime),
                        info.linkname, info.devmajor, info.devminor, content))  # fmt: skip
        return got


def _read(data: bytes, label: str = "layer") -> tuple[list[tuple[object, ...]], TarStream]:
    stream = TarStream(io.BytesIO(data), label)
    got = []
    while (info := stream.next()) is not None:
        content = b""
        if info.isreg():
            parts = []
            while chunk := stream.read(333):
                parts.append(chunk)
            content = b"".join(parts)
        got.append((info.name, info.type, info.mode, info.size, int(info.mtime),
                    info.linkname, info.devmajor, info.devminor, content))  # fmt: skip
    return got, stream


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_what_tarfile_reads(fmt: int) -> None:
    data = _archive(fmt)
    got, stream = _read(data)
    assert got == _expected(data)
    assert [g[0] for g in got][3] == LONG
    # The end-of-archive marker is where tarfile wrote it: after the last member.
    assert data[stream.end_of_archive : stream.end_of_archive + 2 * BLOCK] == bytes(2 * BLOCK)


def test_ustar_names_split_into_prefix_and_name() -> None:
    out = io.BytesIO()
    name = "p" * 120 + "/" + "n" * 90  # over 100 characters: ustar stores a prefix
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    got, _ = _read(out.getvalue())
    assert got == _expected(out.getvalue())
    assert got[0][0] == name and got[0][-1] == b"ok"


def test_pax_global_headers_apply_to_the_members_after_them() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"mtime": "1234.5"}) as tar:  # fmt: skip
        info = tarfile.TarInfo("a")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
    got, _ = _read(out.getvalue())
    assert got == _expected(out.getvalue())
    assert got[0][4] == 1234


def test_data_left_unread_is_skipped() -> None:
    data = _archive(tarfile.GNU_FORMAT)
    stream = TarStream(io.BytesIO(data), "layer")
    names = []
    while (info := stream.next()) is not None:
        names.append(info.name)  # no data read
    assert names == [g[0] for g in _expected(data)]


def test_missing_end_of_archive_blocks_end_after_the_last_member(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = _archive(tarfile.GNU_FORMAT)
    _, full = _read(data)
    cut = data[: full.end_of_archive - (BLOCK - 1000 % BLOCK)]  # umoci: no padding, no marker
    got, _ = _read(cut[: full.end_of_archive])
    assert [g[0] for g in got] == [g[0] for g in _expected(data)]
    assert "without end-of-archive blocks" in caplog.text


def test_truncated_data_is_an_error() -> None:
    data = _archive(tarfile.GNU_FORMAT)
    with pytest.raises(LayerError, match="layer 1 is truncated"):
        _read(data[: BLOCK * 2 + 500], "layer 1")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is not a tar archive: it is empty"),
        (b"x" * 100, "first header is cut short"),
        (b"x" * BLOCK, "is not a valid tar archive: invalid header"),
    ],
)
def test_not_a_tar(data: bytes, message: str) -> None:
    with pytest.raises(LayerError, match=message):
        _read(data)


def test_a_bad_checksum_after_members_ends_the_archive_as_tarfile_does() -> None:
    data = bytearray(_archive(tarfile.GNU_FORMAT))
    _, full = _read(bytes(data))
    second = 2 * BLOCK + 1024  # the header after "d", "d/file" and its 1000 bytes
    data[second + 148 : second + 156] = b"0000000\0"
    got, stream = _read(bytes(data))
    assert [g[0] for g in got] == ["d", "d/file"]
    assert stream.end_of_archive == second

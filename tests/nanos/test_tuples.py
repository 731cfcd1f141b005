"""The TFS v5 value encoding against the spec's tables (nanos-image-format.md sections 2.2, 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyops.errors import ImageFormatError, InvalidInput
from pyops.nanos.tuples import (
    Decoder,
    Encoder,
    canonical,
    encode_header,
    encode_record,
    encode_varint,
    to_text,
)

VARINTS = [
    (0, "00"),
    (5, "05"),
    (127, "7f"),
    (128, "8100"),
    (1024, "8800"),
    (1025, "8801"),
    (3073, "9801"),
    (65536, "848000"),
    (41943040, "94808000"),
]


@pytest.mark.parametrize(("value", "hexbytes"), VARINTS)
def test_varint_table(value: int, hexbytes: str) -> None:
    assert encode_varint(value).hex() == hexbytes


NAME_HEADERS = [
    (0, "80"),
    (7, "87"),
    (8, "8808"),
    (10, "880a"),
    (127, "887f"),
    (1023, "8f7f"),
    (1024, "888800"),
]


@pytest.mark.parametrize(("length", "hexbytes"), NAME_HEADERS)
def test_name_header_table(length: int, hexbytes: str) -> None:
    assert encode_header(True, 0, length).hex() == hexbytes


def test_tuple_header_of_50002_entries() -> None:
    assert encode_header(True, 1, 50002).hex() == "9b8652"


def test_scalar_encodings() -> None:
    assert encode_record("/dir/f").hex() == "c62f6469722f66"
    assert encode_record(3073).hex() == "b09801"
    assert encode_record(3).hex() == "b003"
    assert encode_record(-5).hex() == "b105"
    assert encode_record(None).hex() == "8100"


def test_example_c_root_record_bytes() -> None:
    """Section 5.3: the snapshot of Example C, with the entry order of the reference image."""
    root = {
        "children": {"e": {}},
        "arguments": ["e", "-v x"],
        "program": "/e",
        "environment": {"A": "1"},
    }
    expected = (
        "94 8808 6368696c6472656e 91 8165 90 8809 617267756d656e7473 a2 c165 c42d762078"
        " 87 70726f6772616d c22f65 880b 656e7669726f6e6d656e74 91 8141 c131"
    )
    assert encode_record(root).hex() == expected.replace(" ", "")


def test_numbering_walkthrough_of_example_b() -> None:
    """Section 3.4: the second 'children' is a reference to #2, and f is #8."""
    f: dict[str, object] = {}
    root = {"children": {"dir": {"children": {"f": f, "ln": {"linktarget": "f"}}}}}
    enc = Encoder()
    out = bytearray()
    enc.value(out, root)
    assert enc.index_of(f) == 8
    assert b"\x91\x02\x92" in out  # dir tuple, name reference #2, children tuple of 2
    update = bytearray()
    enc.update(update, f, "extents", {})
    assert update.hex() == "1108" + "87" + b"extents".hex() + "90"


def test_repeated_tuple_is_a_reference_and_decodes_to_the_same_object() -> None:
    shared = {"x": "1"}
    data = encode_record({"a": shared, "b": shared})
    value = Decoder().decode(data)
    assert value["a"] is value["b"]
    assert b"\x10" in data


def test_update_record_merges_and_deletes() -> None:
    enc = Encoder()
    root = {"k": "v", "gone": "x"}
    first = bytearray()
    enc.value(first, root)
    second = bytearray()
    enc.update(second, root, "n", 7)
    third = bytearray(second[:0])
    enc.update(third, root, "gone", b"")
    dec = Decoder()
    value = dec.decode(bytes(first))
    dec.decode(bytes(second))
    dec.decode(bytes(third))
    assert canonical(value) == {"k": "v", "n": 7}


def test_booleans_are_refused_with_a_hint() -> None:
    with pytest.raises(InvalidInput, match="boolean"):
        encode_record({"flag": True})


@pytest.mark.parametrize(
    "data",
    [b"", b"\x91", b"\x91\x88", b"\x11\x05", b"\x91\x05a\xd0", b"\x98\xff\xff\xff\xff\xff"],
)
def test_malformed_records_raise_format_errors(data: bytes) -> None:
    with pytest.raises(ImageFormatError):
        Decoder().decode(data)


def test_text_rendering() -> None:
    assert to_text({"a b": "x y", "n": 3, "v": ["1", None]}) == '("a b":"x y" n:3 v:[1 null])'


names = st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s)
scalars = st.one_of(
    st.text(max_size=20), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.none()
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(names, inner, max_size=5)),
    max_leaves=30,
)


@given(st.dictionaries(names, values, max_size=8))
def test_round_trip(value: dict[str, object]) -> None:
    assert canonical(Decoder().decode(encode_record(value))) == value


@given(st.binary(max_size=300))
def test_decoder_on_random_bytes_raises_only_format_errors(data: bytes) -> None:
    try:
        Decoder().decode(data)
    except ImageFormatError:
        pass

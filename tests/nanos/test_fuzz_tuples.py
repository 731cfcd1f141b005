"""Fuzzing the tuple decoder: random bytes and mutated records give a PyopsError or a value
that every walker (structure check, canonical form, manifest text) finishes on."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pyops.errors import PyopsError
from pyops.nanos.tuples import Decoder, Encoder, canonical, check_structure, to_text

FUZZ = settings(max_examples=300, deadline=None)

names = st.text(st.characters(codec="utf-8"), max_size=6)
scalars = st.one_of(
    st.none(),
    st.integers(-(1 << 64), 1 << 64),
    st.text(max_size=10),
    st.binary(min_size=2, max_size=10),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)


def decode_all(records: list[bytes]) -> None:
    """Decode records with one dictionary, as a volume's log is, then walk the result."""
    decoder = Decoder()
    try:
        for record in records:
            decoder.decode(record)
            if decoder.position != len(record):
                return
        if len(decoder.dictionary) < 2:
            return
        root = decoder.dictionary[1]
        check_structure(root)
        to_text(canonical(root))
    except PyopsError:
        pass


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, value in edits:
        if not out:
            break
        i = position % len(out)
        if kind == 0:
            out[i] ^= value or 1
        elif kind == 1:
            out[i] = value
        elif kind == 2:
            del out[i:]
        elif kind == 3:
            j = value % len(out)
            out[i:i] = out[j : j + 1 + value % 7]
        else:
            del out[i : i + 1 + value % 5]
    return bytes(out)


edits = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


@FUZZ
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=4))
def test_random_bytes(records: list[bytes]) -> None:
    decode_all(records)


@settings(max_examples=200, deadline=None)
@given(values, values, edits)
def test_mutated_records(first: Any, second: Any, changes: list[tuple[int, int, int]]) -> None:
    encoder = Encoder()
    root = {"children": {}, "a": first}
    out = bytearray()
    encoder.value(out, root)
    update = bytearray()
    encoder.update(update, root, "b", second)
    records = [bytes(out), bytes(update)]
    split = changes[0][1] % 2
    records[split] = mutate(records[split], changes)
    decode_all(records)


@settings(max_examples=100, deadline=None)
@given(values)
def test_round_trip(value: Any) -> None:
    record = bytearray()
    Encoder().value(record, value)
    deep = bytearray()
    Encoder().value_deep(deep, value)
    assert deep == record
    decoded = Decoder().decode(bytes(record))
    assert canonical(decoded) == canonical(value)
    check_structure(decoded)

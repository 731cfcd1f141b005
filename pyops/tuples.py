"""The binary value encoding of TFS version 5: varints, tuples, vectors, strings, integers.

Nanos keeps all filesystem metadata as a log of encoded values (nanos ``src/runtime/tuple.c``,
``src/fs/tlog.c``; ../shared/docs/nanos-image-format.md sections 2.2 and 3). One dictionary,
shared by every record of a volume, numbers symbols, tuples and vectors as they appear, so that
later occurrences can be written as back-references.

Python values map onto the encoding as follows:

========================  ======================================================
Python                    TFS v5
========================  ======================================================
``dict`` (str keys)       tuple (type 1); keys are symbols (type 0 names)
``list`` / ``tuple``      vector (type 2)
``str``                   string (type 4)
``int`` (not ``bool``)    integer (type 3)
``None``                  the null value ``81 00`` (flags such as ``readonly``)
``bytes``                 an untyped buffer (type 0)
========================  ======================================================

Tuples and vectors are numbered by identity: writing the same ``dict`` object twice produces a
reference the second time, which is how hard links are encoded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from pyops.errors import ImageFormatError, InvalidInput

Value: TypeAlias = "dict[str, Any] | list[Any] | str | int | None | bytes"

TYPE_BUFFER = 0
TYPE_TUPLE = 1
TYPE_VECTOR = 2
TYPE_INTEGER = 3
TYPE_STRING = 4

NULL_BYTES = b"\x81\x00"

# Varints of small numbers are by far the most common; precompute them.
_SMALL_VARINTS = [bytes([n]) for n in range(128)]


def encode_varint(n: int) -> bytes:
    """Encode ``n`` as a TFS varint: 7-bit groups, most significant first (not LEB128)."""
    if n < 0x80:
        if n < 0:
            raise ValueError("varints are unsigned")
        return _SMALL_VARINTS[n]
    if n < 0x4000:
        return bytes((0x80 | n >> 7, n & 0x7F))
    if n < 0x200000:
        return bytes((0x80 | n >> 14, 0x80 | (n >> 7) & 0x7F, n & 0x7F))
    groups = [n & 0x7F]
    n >>= 7
    while n:
        groups.append((n & 0x7F) | 0x80)
        n >>= 7
    groups.reverse()
    return bytes(groups)


def encode_header(immediate: bool, type_: int, length: int) -> bytes:
    """Encode a value header: I bit, 3-bit type, and the length field ``length``."""
    first = (0x80 if immediate else 0) | (type_ << 4)
    if length < 8:
        return bytes([first | length])
    words = (length.bit_length() - 3 + 6) // 7
    out = bytearray([first | 0x08 | (length >> (7 * words))])
    for i in range(words - 1, -1, -1):
        out.append(((length >> (7 * i)) & 0x7F) | (0x80 if i else 0))
    return bytes(out)


def encode_name(name: str) -> bytes:
    """The bytes of a symbol: names are file-system bytes (surrogateescape UTF-8)."""
    return os.fsencode(name)


def decode_name(raw: bytes) -> str:
    """Inverse of :func:`encode_name`."""
    return os.fsdecode(raw)


class Encoder:
    """Encodes values while keeping the volume's dictionary in step with the reader's.

    The dictionary numbering is that of nanos ``src/runtime/tuple.c``: an immediate tuple or
    vector is numbered before its contents, an immediate symbol after its bytes.  Symbols are
    shared across all records of a volume; tuples and vectors by object identity.
    """

    __slots__ = ("count", "_symbols", "_objects", "_keepalive")

    def __init__(self) -> None:
        self.count = 0
        self._symbols: dict[bytes, int] = {}
        self._objects: dict[int, int] = {}
        # Identity keys are only valid while the object lives; hold on to every object that
        # has been numbered so that ``id()`` values are never reused.
        self._keepalive: list[object] = []

    def copy(self) -> Encoder:
        """A copy of the dictionary state, to try an encoding and roll it back."""
        other = Encoder()
        other.count = self.count
        other._symbols = dict(self._symbols)
        other._objects = dict(self._objects)
        other._keepalive = list(self._keepalive)
        return other

    def index_of(self, obj: object) -> int | None:
        """The dictionary index of a tuple or vector already written, else None."""
        return self._objects.get(id(obj))

    def name(self, out: bytearray, name: str) -> None:
        """Append a symbol in name position (a reference if it was seen before)."""
        # Hot path: short headers are written inline (see encode_header for the general form).
        raw = name.encode("utf-8", "surrogateescape")
        index = self._symbols.get(raw)
        if index is not None:
            if index < 8:
                out.append(index)
            elif index < 1024:
                out.append(0x08 | (index >> 7))
                out.append(index & 0x7F)
            else:
                out += encode_header(False, TYPE_BUFFER, index)
            return
        n = len(raw)
        if n < 8:
            out.append(0x80 | n)
        elif n < 1024:
            out.append(0x88 | (n >> 7))
            out.append(n & 0x7F)
        else:
            out += encode_header(True, TYPE_BUFFER, n)
        out += raw
        self.count += 1
        self._symbols[raw] = self.count

    def new_index(self) -> int:
        """Number a tuple that will never be referred to by identity (a fresh ``{}``)."""
        self.count += 1
        return self.count

    def value(self, out: bytearray, value: Any) -> None:
        """Append one value (recursively for tuples and vectors)."""
        if isinstance(value, str):
            raw = value.encode("utf-8", "surrogateescape")
            n = len(raw)
            if n < 8:
                out.append(0xC0 | n)
            elif n < 1024:
                out.append(0xC8 | (n >> 7))
                out.append(n & 0x7F)
            else:
                out += encode_header(True, TYPE_STRING, n)
            out += raw
        elif isinstance(value, dict):
            index = self._objects.get(id(value))
            if index is not None:
                out += encode_header(False, TYPE_TUPLE, 0)
                out += encode_varint(index)
                return
            self._number(value)
            n = len(value)
            if n < 8:
                out.append(0x90 | n)
            else:
                out += encode_header(True, TYPE_TUPLE, n)
            for key, item in value.items():
                self.name(out, key)
                self.value(out, item)
        elif value is None:
            out += NULL_BYTES
        elif isinstance(value, bool):
            raise InvalidInput(
                f"cannot store the boolean {value!r} in a Nanos manifest",
                hint='write flags as strings, for example "t"',
            )
        elif isinstance(value, int):
            if value < 0:
                out.append(0xB1)
                out += encode_varint(-value)
            else:
                out.append(0xB0)
                out += encode_varint(value)
        elif isinstance(value, list | tuple):
            index = self._objects.get(id(value))
            if index is not None:
                out += encode_header(False, TYPE_VECTOR, 0)
                out += encode_varint(index)
                return
            self._number(value)
            out += encode_header(True, TYPE_VECTOR, len(value))
            for item in value:
                self.value(out, item)
        elif isinstance(value, bytes | bytearray):
            out += encode_header(True, TYPE_BUFFER, len(value))
            out += value
        else:
            raise InvalidInput(
                f"cannot store a value of type {type(value).__name__} in a Nanos manifest"
            )

    def update(self, out: bytearray, target: object, name: str, value: Any) -> None:
        """Append an entity-attribute-value update: ``target[name] = value``.

        ``target`` must be a tuple already written to this volume.
        """
        index = self._objects.get(id(target))
        if index is None:
            raise ValueError("update of a tuple that was never written")
        out += encode_header(False, TYPE_TUPLE, 1)
        out += encode_varint(index)
        self.name(out, name)
        self.value(out, value)

    def _number(self, obj: object) -> None:
        self.count += 1
        self._objects[id(obj)] = self.count
        self._keepalive.append(obj)


def encode_record(value: Any, encoder: Encoder | None = None) -> bytes:
    """Encode one value as a record, with a fresh dictionary unless one is given."""
    out = bytearray()
    (encoder or Encoder()).value(out, value)
    return bytes(out)


# --- decoding -------------------------------------------------------------------------------


class DecodedTuple(dict[str, Any]):
    """A tuple read from a volume.  A plain dict, but hashable by identity for link detection."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, dict) and dict.__eq__(self, other))


class DecodedVector(list[Any]):
    """A vector read from a volume."""

    __slots__ = ()


class _Deleted:
    """The "no value" buffer (``80``) that deletes an attribute."""


DELETE = _Deleted()

# Nesting deeper than this is not produced by any writer and would only come from corrupt data.
MAX_DEPTH = 200


class Decoder:
    """Decodes records with one dictionary shared across a whole volume's log."""

    def __init__(self) -> None:
        self.dictionary: list[Any] = [None]  # index 0 is never assigned

    def decode(
        self, data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None
    ) -> Any:
        """Decode one record from ``data[pos:end]`` and return its value.

        Raises :class:`ImageFormatError` on any malformed input.
        """
        self._data = data
        self._end = len(data) if end is None else end
        self._pos = pos
        try:
            return self._value(0)
        except IndexError as exc:
            raise ImageFormatError("a metadata record ends in the middle of a value") from exc

    @property
    def position(self) -> int:
        """Offset just past the last decoded record."""
        return self._pos

    def _byte(self) -> int:
        if self._pos >= self._end:
            raise ImageFormatError("a metadata record ends in the middle of a value")
        b = self._data[self._pos]
        self._pos += 1
        return b

    def _varint(self) -> int:
        value = 0
        for _ in range(10):
            c = self._byte()
            value = (value << 7) | (c & 0x7F)
            if not c & 0x80:
                return value
        raise ImageFormatError("a varint in a metadata record is longer than 64 bits")

    def _header(self) -> tuple[bool, int, int]:
        b = self._byte()
        length = b & 7
        if b & 8:
            for _ in range(10):
                c = self._byte()
                length = (length << 7) | (c & 0x7F)
                if not c & 0x80:
                    break
            else:
                raise ImageFormatError("a value header in a metadata record is too long")
        return bool(b & 0x80), (b >> 4) & 7, length

    def _take(self, n: int) -> bytes:
        if n > self._end - self._pos:
            raise ImageFormatError("a metadata record ends in the middle of a value")
        raw = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return raw

    def _lookup(self, index: int, kind: str) -> Any:
        if index <= 0 or index >= len(self.dictionary):
            raise ImageFormatError(f"a metadata record refers to unknown {kind} #{index}")
        return self.dictionary[index]

    def _name(self) -> str:
        immediate, _type, length = self._header()
        if immediate:
            name = decode_name(self._take(length))
            self.dictionary.append(name)
            return name
        found = self._lookup(length, "symbol")
        if not isinstance(found, str):
            raise ImageFormatError(f"a metadata record uses #{length} as a name, but it is not one")
        return found

    def _value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ImageFormatError("metadata is nested too deeply")
        immediate, type_, length = self._header()
        if type_ == TYPE_TUPLE:
            if immediate:
                tup = DecodedTuple()
                self.dictionary.append(tup)
            else:
                tup = self._lookup(self._varint(), "tuple")
                if not isinstance(tup, DecodedTuple):
                    raise ImageFormatError("a tuple reference names something that is not a tuple")
            for _ in range(length):
                key = self._name()
                item = self._value(depth + 1)
                if item is DELETE:
                    tup.pop(key, None)
                else:
                    tup[key] = item
            return tup
        if type_ == TYPE_VECTOR:
            if immediate:
                vec = DecodedVector()
                self.dictionary.append(vec)
                for _ in range(length):
                    vec.append(self._value(depth + 1))
                return vec
            vec = self._lookup(self._varint(), "vector")
            if not isinstance(vec, DecodedVector):
                raise ImageFormatError("a vector reference names something that is not a vector")
            for i in range(length):
                item = self._value(depth + 1)
                if i < len(vec):
                    vec[i] = item
                else:
                    vec.append(item)
            return vec
        if type_ == TYPE_INTEGER:
            if not immediate:
                raise ImageFormatError("an integer in a metadata record is in reference form")
            magnitude = self._varint()
            return -magnitude if length & 1 else magnitude
        if type_ == TYPE_STRING:
            if not immediate:
                found = self._lookup(length, "string")
                if not isinstance(found, str):
                    raise ImageFormatError("a string reference names something that is not one")
                return found
            return self._take(length).decode("utf-8", "surrogateescape")
        if type_ in (5, 6, 7):
            raise ImageFormatError(f"unknown value type {type_} in a metadata record")
        # Type 0: a buffer.  By length: empty deletes, a single 00 is null, else raw bytes.
        if not immediate:
            found = self._lookup(length, "symbol")
            return found
        raw = self._take(length)
        if length == 0:
            return DELETE
        if raw == b"\x00":
            return None
        return raw


def canonical(value: Any) -> Any:
    """Turn decoded values into plain dicts, lists and scalars (for comparisons and JSON)."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def to_text(value: Any) -> str:
    """Render a value in the manifest text syntax Nanos's own tools use: ``(key:value ...)``."""
    if isinstance(value, Mapping):
        if not value:
            return "()"
        inner = " ".join(f"{_quote(k, _NAME_SPECIAL)}:{to_text(v)}" for k, v in value.items())
        return f"({inner})"
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return "[" + " ".join(to_text(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, int):
        return str(value)
    return _quote(str(value), _VALUE_SPECIAL)


# Appendix B of the spec: unquoted names stop at ( ) [ ] : | / and whitespace; unquoted
# values only at ( ) [ ] and whitespace.  Quotes, backslashes and '#' are quoted in both.
_NAME_SPECIAL = frozenset('()[]:|/"\\# \t\r\n')
_VALUE_SPECIAL = frozenset('()[]"\\# \t\r\n')


def _quote(text: str, special: frozenset[str]) -> str:
    if text and not any(c in special for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'

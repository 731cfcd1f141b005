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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from pyops.errors import ImageFormatError, InvalidInput
from pyops.limits import TUPLE_DEPTH

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


def decode_name(raw: bytes) -> str:
    """The name of a symbol: names are file-system bytes (surrogateescape UTF-8)."""
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

    def value_deep(self, out: bytearray, value: Any) -> None:
        """:meth:`value` without recursion, for values nested too deeply for the stack.

        The bytes and the dictionary numbering are those of :meth:`value`.
        """
        stack: list[Iterator[Any]] = [iter((value,))]
        while stack:
            item = next(stack[-1], _END)
            if item is _END:
                stack.pop()
            elif isinstance(item, dict) and id(item) not in self._objects:
                self._number(item)
                n = len(item)
                out += bytes([0x90 | n]) if n < 8 else encode_header(True, TYPE_TUPLE, n)
                stack.append(self._tuple_items(out, item))
            elif isinstance(item, list | tuple) and id(item) not in self._objects:
                self._number(item)
                out += encode_header(True, TYPE_VECTOR, len(item))
                stack.append(iter(item))
            else:
                self.value(out, item)  # a scalar or a reference: no recursion

    def _tuple_items(self, out: bytearray, value: dict[str, Any]) -> Iterator[Any]:
        for key, item in value.items():
            self.name(out, key)
            yield item

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


_END = object()


def encode_record(value: Any, encoder: Encoder | None = None) -> bytes:
    """Encode one value as a record, with a fresh dictionary unless one is given."""
    out = bytearray()
    (encoder or Encoder()).value_deep(out, value)
    return bytes(out)


# --- decoding -------------------------------------------------------------------------------


class DecodedTuple(dict[str, Any]):
    """A tuple read from a volume: a plain dict that knows how deep it was found."""

    __slots__ = ("level",)
    level: int
    """How deep the decoder placed it (see :class:`Decoder`)."""


class DecodedVector(list[Any]):
    """A vector read from a volume."""

    __slots__ = ("level",)
    level: int


class _Deleted:
    """The "no value" buffer (``80``) that deletes an attribute."""


DELETE = _Deleted()

# Nesting is counted in levels: every tuple and vector is one level, except a directory's
# ``children`` tuple, which shares its directory's level (so a folder chain N deep is about
# N levels). Deeper than TUPLE_DEPTH is refused.


def _step(parent_is_tuple: bool, key: str | None) -> int:
    return 0 if parent_is_tuple and key == "children" else 1


class Decoder:
    """Decodes records with one dictionary shared across a whole volume's log.

    Decoding is iterative: no input, however deep, makes it recurse.  Each tuple and
    vector records the level it was placed at (a record's own value at level 1, an update's
    items below their target's level), and nesting deeper than
    :data:`~pyops.limits.TUPLE_DEPTH` levels is refused as it is decoded.  Until a tuple
    or vector is written as the value of another by reference, each has one parent, made
    before it: the values form trees and those levels are exact.  From then on (hard
    links, or hostile input) ``shared`` is True, and only :func:`check_structure` of the
    finished value can tell cycles and depth.
    """

    def __init__(self) -> None:
        self.dictionary: list[Any] = [None]  # index 0 is never assigned
        self.shared = False

    def decode(
        self, data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None
    ) -> Any:
        """Decode one record from ``data[pos:end]`` and return its value.

        Raises :class:`ImageFormatError` on any malformed input and
        :class:`~pyops.errors.LimitExceeded` for a value nested too deeply.
        """
        self._data = data
        self._end = len(data) if end is None else end
        self._pos = pos
        try:
            return self._value(TUPLE_DEPTH.value())
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

    def _container(self, immediate: bool, type_: int) -> DecodedTuple | DecodedVector:
        if type_ == TYPE_TUPLE:
            if immediate:
                tup = DecodedTuple()
                self.dictionary.append(tup)
                return tup
            found = self._lookup(self._varint(), "tuple")
            if not isinstance(found, DecodedTuple):
                raise ImageFormatError("a tuple reference names something that is not a tuple")
            return found
        if immediate:
            vec = DecodedVector()
            self.dictionary.append(vec)
            return vec
        found = self._lookup(self._varint(), "vector")
        if not isinstance(found, DecodedVector):
            raise ImageFormatError("a vector reference names something that is not a vector")
        return found

    def _scalar(self, immediate: bool, type_: int, length: int) -> Any:
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
            return self._lookup(length, "symbol")
        raw = self._take(length)
        if length == 0:
            return DELETE
        if raw == b"\x00":
            return None
        return raw

    def _value(self, limit: int) -> Any:
        # Open containers: [container, items left, current key (tuples), level, next index].
        frames: list[list[Any]] = []
        while True:
            immediate, type_, length = self._header()
            value: Any
            if type_ == TYPE_TUPLE or type_ == TYPE_VECTOR:
                container = self._container(immediate, type_)
                if frames:
                    parent = frames[-1]
                    level = parent[3] + _step(isinstance(parent[0], DecodedTuple), parent[2])
                    if not immediate:
                        self.shared = True  # a second parent: see check_structure
                else:
                    level = 1 if immediate else container.level  # an update: below its target
                if immediate:
                    container.level = level
                if level > limit:
                    raise TUPLE_DEPTH.exceeded("the nesting of metadata in a record", level)
                if length:
                    key = self._name() if type_ == TYPE_TUPLE else None
                    frames.append([container, length, key, level, 0])
                    continue
                value = container
            else:
                value = self._scalar(immediate, type_, length)
            # Store the value in the innermost open container; close those now complete.
            while frames:
                frame = frames[-1]
                container = frame[0]
                if isinstance(container, DecodedTuple):
                    if value is DELETE:
                        container.pop(frame[2], None)
                    else:
                        container[frame[2]] = value
                else:
                    index = frame[4]
                    if index < len(container):
                        container[index] = value
                    else:
                        container.append(value)
                    frame[4] = index + 1
                frame[1] -= 1
                if frame[1]:
                    if isinstance(container, DecodedTuple):
                        frame[2] = self._name()
                    break
                frames.pop()
                value = container
            else:
                return value


# Shared tuples are how hard links are stored; shared tuples nested in each other would
# make the written-out form (JSON, the manifest text) exponentially long.
_MAX_EXPANSION = 1_000_000
_SATURATED = 1 << 62


_CONTAINERS = (dict, list)


def _edges(node: Any) -> list[tuple[Any, int]]:
    """The tuples and vectors inside ``node``, each with the levels its edge adds."""
    if isinstance(node, dict):
        return [(v, k != "children") for k, v in node.items() if isinstance(v, _CONTAINERS)]
    return [(v, 1) for v in node if isinstance(v, _CONTAINERS)]


def check_structure(value: Any, what: str = "the image's metadata") -> None:
    """Refuse decoded values that no walker could finish: cycles, nesting deeper than
    :data:`~pyops.limits.TUPLE_DEPTH` levels, or shared tuples nested in each other so
    that writing them out would be exponentially long.

    Records can update tuples decoded earlier, so a structure is checked once it is
    complete (for a volume, after its whole log).  One pass, without recursion.
    """
    if not isinstance(value, _CONTAINERS):
        return
    limit = TUPLE_DEPTH.value()
    done: dict[int, tuple[int, int]] = {}  # id -> (levels it spans, values written out)
    on_path = {id(value)}
    # [node, its edges, next edge, its level, its height so far, its size so far, step in]
    frames: list[list[Any]] = [[value, _edges(value), 0, 1, 1, 1, 0]]
    while frames:
        frame = frames[-1]
        edges = frame[1]
        level = frame[3]
        index = frame[2]
        while index < len(edges):
            child, step = edges[index]
            index += 1
            key = id(child)
            got = done.get(key)
            if got is None:
                if key in on_path:
                    raise ImageFormatError(f"{what} is cyclic: a tuple or vector contains itself")
                if level + step > limit:
                    raise TUPLE_DEPTH.exceeded(f"{what}: its nesting", level + step)
                inner = _edges(child)
                if inner:
                    frame[2] = index
                    on_path.add(key)
                    frames.append([child, inner, 0, level + step, 1, 1, step])
                    break
                got = done[key] = (1, 1)  # holds no tuple or vector
            height, size = got
            if level + step + height - 1 > limit:
                raise TUPLE_DEPTH.exceeded(f"{what}: its nesting", level + step + height - 1)
            if height + step > frame[4]:
                frame[4] = height + step
            frame[5] = min(frame[5] + size, _SATURATED)
        else:
            frames.pop()
            node = frame[0]
            on_path.discard(id(node))
            done[id(node)] = (frame[4], frame[5])
            if frames:
                parent = frames[-1]
                parent[4] = max(parent[4], frame[4] + frame[6])
                parent[5] = min(parent[5] + frame[5], _SATURATED)
    size = done[id(value)][1]
    if size > _MAX_EXPANSION + 16 * len(done):
        raise ImageFormatError(
            f"{what} nests shared tuples in each other: written out it would hold "
            f"{size:,} values, from {len(done):,} distinct ones"
        )


def canonical(value: Any) -> Any:
    """Turn decoded values into plain dicts, lists and scalars (for comparisons and JSON).

    Iterative; a value shared by several parents stays one object; a cycle is an
    :class:`ImageFormatError`.
    """
    if not isinstance(value, dict | list):
        return value
    top: dict[str, Any] | list[Any] = {} if isinstance(value, dict) else []
    made: dict[int, Any] = {id(value): top}
    on_path = {id(value)}
    stack: list[tuple[Any, Any, Iterator[Any]]] = [(value, top, _items(value))]
    while stack:
        source, out, items = stack[-1]
        for key, item in items:
            if isinstance(item, dict | list):
                ident = id(item)
                copy = made.get(ident)
                if copy is None:
                    copy = {} if isinstance(item, dict) else []
                    made[ident] = copy
                    on_path.add(ident)
                    _put(out, key, copy)
                    stack.append((item, copy, _items(item)))
                    break
                if ident in on_path:
                    raise ImageFormatError(
                        "the image's metadata is cyclic: a tuple contains itself"
                    )
                item = copy
            _put(out, key, item)
        else:
            stack.pop()
            on_path.discard(id(source))
    return top


def _items(value: Any) -> Iterator[tuple[Any, Any]]:
    return iter(value.items()) if isinstance(value, dict) else ((None, v) for v in value)


def _put(out: Any, key: Any, item: Any) -> None:
    if isinstance(out, dict):
        out[key] = item
    else:
        out.append(item)


class _Emit(str):
    """Text that :func:`to_text` writes as it is."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _Leave:
    ident: int


def to_text(value: Any) -> str:
    """Render a value in the manifest text syntax Nanos's own tools use: ``(key:value ...)``.

    Iterative; a cycle is an :class:`ImageFormatError`.
    """
    out: list[str] = []
    on_path: set[int] = set()
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Emit):
            out.append(item)
        elif isinstance(item, _Leave):
            on_path.discard(item.ident)
        elif isinstance(item, Mapping) or (
            isinstance(item, Sequence) and not isinstance(item, str | bytes | bytearray)
        ):
            if not item:
                out.append("()" if isinstance(item, Mapping) else "[]")
                continue
            ident = id(item)
            if ident in on_path:
                raise ImageFormatError("the image's metadata is cyclic: a tuple contains itself")
            on_path.add(ident)
            todo: list[Any] = []
            if isinstance(item, Mapping):
                todo.append(_Emit("("))
                for i, (key, inner) in enumerate(item.items()):
                    todo.append(_Emit(("" if i == 0 else " ") + _quote(key, _NAME_SPECIAL) + ":"))
                    todo.append(inner)
                todo.append(_Emit(")"))
            else:
                todo.append(_Emit("["))
                for i, inner in enumerate(item):
                    if i:
                        todo.append(_Emit(" "))
                    todo.append(inner)
                todo.append(_Emit("]"))
            todo.append(_Leave(ident))
            todo.reverse()
            stack.extend(todo)
        elif item is None:
            out.append("null")
        elif isinstance(item, bytes):
            out.append("0x" + item.hex())
        elif isinstance(item, int):
            out.append(str(item))
        else:
            out.append(_quote(str(item), _VALUE_SPECIAL))
    return "".join(out)


# Appendix B of the spec: unquoted names stop at ( ) [ ] : | / and whitespace; unquoted
# values only at ( ) [ ] and whitespace.  Quotes, backslashes and '#' are quoted in both.
_NAME_SPECIAL = frozenset('()[]:|/"\\# \t\r\n')
_VALUE_SPECIAL = frozenset('()[]"\\# \t\r\n')


def _quote(text: str, special: frozenset[str]) -> str:
    if text and not any(c in special for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'

"""Nanos's manifest text: the ``(key:value children:(...))`` language ``mkfs`` reads.

The grammar is that of nanos ``src/runtime/tuple_parser.c``, the parser Nanos's ``mkfs``
runs on its standard input and on each ``-t`` argument (nanos-image-format.md Appendix B):

- **Whitespace** is space, tab, CR and LF. ``#`` starts a comment to the end of the line,
  wherever whitespace is skipped (so ``a#b`` is a name, but ``a:#b`` is a comment).
- A **tuple** is ``(``, then ``name:value`` entries, then ``)``. Whitespace may come before
  a name, between a name and its ``:``, and after a value; none is needed after a quoted
  value (``(a:"x"b:y)``). A name given twice keeps its last value.
- A **name** runs up to one of ``( ) [ ] : | /`` or whitespace, or is quoted: ``"..."``,
  where ``\\x`` stands for ``x`` (any character: ``\\n`` is ``n``). It may be empty. Only
  ``:`` may follow it.
- A **value** is a tuple (``(`` right after the ``:``), a vector (``[`` right after the
  ``:``) or a string. Whitespace after the ``:`` is skipped for strings only, so ``a: b``
  is ``"b"`` but ``a: (b:c)`` is an error. An unquoted string runs up to one of ``( ) [ ]``
  or whitespace, so it may hold ``:``, ``|``, ``/``, ``#`` and ``"``; it is empty when one
  of those comes first (``(a:)``). Quoted strings are as quoted names.
- A **vector** is ``[``, values, ``]``. After a value, ``]`` must come at once to end the
  vector: whitespace before it adds an empty string (``[a ]`` is ``["a", ""]``).
- The text holds one or more tuples, whitespace and comments around them; ``mkfs`` takes
  the last one.

Every scalar is a string; tuples become ``dict`` (in text order), vectors ``list``.

Where ``mkfs`` would misbehave, the text is refused instead, with the line and column of
the fault: text that is not UTF-8 (``mkfs`` garbles it), a NUL character, text that ends
inside a tuple (``mkfs`` silently drops the unfinished tuple), and ``)`` inside a vector
(on which ``mkfs`` recurses until it crashes). Nesting is bounded by
:data:`~pyops.limits.TUPLE_DEPTH` (counted as the image's metadata is: a ``children``
tuple shares its directory's level) and the text's size by
:data:`~pyops.limits.MANIFEST_TEXT_BYTES`. The parser never recurses.
"""

from __future__ import annotations

import re
from typing import Any

from pyops.errors import InvalidInput
from pyops.limits import MANIFEST_TEXT_BYTES, TUPLE_DEPTH

_WHITESPACE = re.compile(r"[ \t\r\n]*")
_NAME = re.compile(r"[^()\[\]:|/ \t\r\n]*")  # a '"' opens a quoted name only at its start
_VALUE = re.compile(r"[^()\[\] \t\r\n]*")
_QUOTED = re.compile(r'[^"\\]*')
_SURROGATE = re.compile("[\ud800-\udfff]")

# Parser states: what the next character is read as.
_TOP = 0  # between top-level tuples
_ENTRY = 1  # in a tuple, before a name or its ')'
_COLON = 2  # after a name
_VALUE_START = 3  # right after ':' (or where a vector's element starts)
_VECTOR_START = 4  # right after '['
_VECTOR_NEXT = 5  # in a vector, right after an element


class _Frame:
    """An open tuple or vector: its value, the name being set (tuples), where it opened."""

    __slots__ = ("value", "key", "start", "level")

    def __init__(self, value: dict[str, Any] | list[Any], start: int, level: int) -> None:
        self.value = value
        self.key = ""
        self.start = start
        self.level = level


class _Text:
    """The text being parsed, and errors that say where in it they are."""

    def __init__(self, text: str, what: str) -> None:
        self.text = text
        self.what = what

    def where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {column}"

    def error(self, pos: int, message: str, hint: str | None = None) -> InvalidInput:
        return InvalidInput(f"{self.what}, {self.where(pos)}: {message}", hint=hint)

    def skip(self, pos: int) -> int:
        """Skip whitespace and comments from ``pos``."""
        text = self.text
        while True:
            pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
            if pos < len(text) and text[pos] == "#":
                end = text.find("\n", pos)
                pos = len(text) if end < 0 else end + 1
                continue
            return pos

    def quoted(self, pos: int) -> tuple[str, int]:
        """The string of a quoted name or value whose opening '"' is just before ``pos``."""
        text = self.text
        start = pos - 1
        pieces: list[str] = []
        while True:
            match = _QUOTED.match(text, pos)
            assert match is not None
            pieces.append(match.group())
            pos = match.end()
            if pos >= len(text):
                raise self.error(start, "this quoted string is never closed with '\"'")
            if text[pos] == '"':
                return "".join(pieces), pos + 1
            if pos + 1 >= len(text):  # a backslash at the very end
                raise self.error(start, "this quoted string is never closed with '\"'")
            pieces.append(text[pos + 1])
            pos += 2


def _show(char: str) -> str:
    return repr(char) if char.isprintable() and char != " " else f"{char!r} (U+{ord(char):04X})"


def _no_colon(source: _Text, pos: int, name_pos: int, name: str) -> InvalidInput:
    char = source.text[pos]
    if pos == name_pos:  # no name at all: a character that cannot start one
        hint = "quote names holding ( ) [ ] : | / or spaces"
        if char in "([":
            hint = "a tuple or vector value must follow its ':' at once: name:(...), name:[...]"
        return source.error(pos, f"expected a name or ')', found {_show(char)}", hint=hint)
    return source.error(
        pos,
        f"expected ':' after the name {name!r} (at {source.where(name_pos)}), found {_show(char)}",
        hint="entries are name:value; quote names holding ( ) [ ] : | / or spaces",
    )


def decode_text(data: bytes | str, what: str = "the manifest") -> str:
    """The text of a manifest given as bytes: UTF-8, without NUL, within the size limit."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    MANIFEST_TEXT_BYTES.check(size, what)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start].decode("utf-8", "replace")
            where = _Text(before, what).where(len(before))
            raise InvalidInput(
                f"{what}, {where}: the text is not UTF-8 (byte 0x{data[exc.start]:02x})",
                hint="write the manifest in UTF-8; Nanos's mkfs garbles other encodings",
            ) from None
    else:
        text = data
        lone = _SURROGATE.search(text)
        if lone is not None:
            raise _Text(text, what).error(lone.start(), "the text is not UTF-8 (a lone surrogate)")
    nul = text.find("\0")
    if nul >= 0:
        raise _Text(text, what).error(nul, "the text contains a NUL character")
    return text


def parse_tuples(data: bytes | str, what: str = "the manifest") -> list[dict[str, Any]]:
    """Every top-level tuple of a manifest text, in order (Nanos's mkfs uses the last one).

    ``what`` names the text in errors ("the manifest", "the -t tuple"). Raises
    :class:`InvalidInput` naming the line and column of the first fault, and
    :class:`~pyops.errors.LimitExceeded` for text too large or too deeply nested.
    """
    source = _Text(decode_text(data, what), what)
    text = source.text
    end = len(text)
    limit = TUPLE_DEPTH.value()
    tops: list[dict[str, Any]] = []
    frames: list[_Frame] = []
    state = _TOP
    pos = 0
    name_pos = 0

    def ended() -> InvalidInput:
        inner = frames[-1]
        kind = "tuple" if isinstance(inner.value, dict) else "vector"
        close = ")" if kind == "tuple" else "]"
        return source.error(
            inner.start,
            f"the text ends before the {kind} opened here is closed",
            hint=f"add the missing {close!r} (and check the others before it)",
        )

    def open_frame(value: dict[str, Any] | list[Any], at: int) -> None:
        if frames:
            parent = frames[-1]
            step = 0 if isinstance(parent.value, dict) and parent.key == "children" else 1
            level = parent.level + step
        else:
            level = 1
        if level > limit:
            raise TUPLE_DEPTH.exceeded(f"{what}, {source.where(at)}: its nesting", level)
        frames.append(_Frame(value, at, level))

    while True:
        if state == _ENTRY:
            pos = source.skip(pos)
            if pos >= end:
                raise ended()
            char = text[pos]
            if char == ")":
                pos += 1
                value: Any = frames.pop().value
            else:
                name_pos = pos
                if char == '"':
                    name, pos = source.quoted(pos + 1)
                else:
                    match = _NAME.match(text, pos)
                    assert match is not None
                    name, pos = match.group(), match.end()
                frames[-1].key = name
                state = _COLON
                continue
        elif state == _COLON:
            pos = source.skip(pos)
            if pos >= end:
                raise ended()
            char = text[pos]
            if char != ":":
                raise _no_colon(source, pos, name_pos, frames[-1].key)
            pos += 1
            state = _VALUE_START
            continue
        elif state == _VALUE_START:
            if pos >= end:
                raise ended()
            char = text[pos]
            if char == "(":
                open_frame({}, pos)
                pos += 1
                state = _ENTRY
                continue
            if char == "[":
                open_frame([], pos)
                pos += 1
                state = _VECTOR_START
                continue
            pos = source.skip(pos)
            if pos >= end:
                raise ended()
            if text[pos] == '"':
                value, pos = source.quoted(pos + 1)
            else:
                match = _VALUE.match(text, pos)
                assert match is not None
                value, pos = match.group(), match.end()
                if pos >= end:
                    raise ended()
        elif state == _VECTOR_START:
            pos = source.skip(pos)
            state = _VECTOR_NEXT
            continue
        elif state == _VECTOR_NEXT:
            if pos >= end:
                raise ended()
            char = text[pos]
            if char == "]":
                pos += 1
                value = frames.pop().value
            elif char == ")":
                raise source.error(
                    pos,
                    f"')' inside the vector opened at {source.where(frames[-1].start)}",
                    hint="a vector ends with ']'",
                )
            else:
                pos = source.skip(pos)
                state = _VALUE_START
                continue
        else:  # _TOP
            pos = source.skip(pos)
            if pos >= end:
                break
            char = text[pos]
            if char != "(":
                raise source.error(
                    pos,
                    f"expected '(' to open a tuple, found {_show(char)}",
                    hint="a manifest is one tuple: (children:(...) program:/path ...)",
                )
            open_frame({}, pos)
            pos += 1
            state = _ENTRY
            continue
        # A value is complete: store it in the innermost open tuple or vector.
        if not frames:
            tops.append(value)
            state = _TOP
            continue
        parent = frames[-1]
        if isinstance(parent.value, dict):
            parent.value[parent.key] = value
            state = _ENTRY
        else:
            parent.value.append(value)
            state = _VECTOR_NEXT
    return tops


def parse_manifest(data: bytes | str, what: str = "the manifest") -> dict[str, Any]:
    """The root tuple of a manifest text: its last top-level tuple, as ``mkfs`` takes it."""
    tops = parse_tuples(data, what)
    if not tops:
        raise InvalidInput(
            f"{what} holds no tuple",
            hint="a manifest is one tuple: (children:(...) program:/path ...)",
        )
    return tops[-1]


__all__ = ["decode_text", "parse_manifest", "parse_tuples"]

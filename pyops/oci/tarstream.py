"""A layer's tar stream, read member by member, strictly and without seeking.

What :mod:`tarfile` reads in its stream mode (``r|``), with its rules: ustar, GNU (long
names and link names) and POSIX (pax extended and global headers) formats; a header's
checksum, signed or unsigned; numbers in octal or GNU's base-256; a V7 directory as a
regular file whose name ends in ``/``; a bad or truncated header after the first member ends
the archive, as tarfile's ``next()`` does. What this module adds is what a hostile layer
needs, before any byte of it is believed:

- sparse files (GNU old format, pax 0.0, 0.1 and 1.0) are refused: they would be written
  whole;
- an extended header (pax or GNU long name) larger than ``LAYER_HEADER_BYTES`` is refused
  before it is read, and so are more than :data:`MAX_HEADER_CHAIN` of them in a row;
- a stream that ends after a complete member without the end-of-archive blocks (umoci
  0.4.7, umoci #436) is accepted with a warning, as Go's reader accepts it.

It reads the stream once, in order: a member's data is read through :meth:`TarStream.read`
before the next header, and whatever the caller leaves is skipped. It is several times
faster than :mod:`tarfile` on layers of small files, whose cost is per member.
"""

from __future__ import annotations

import logging
import re
import struct
import tarfile
from typing import Protocol

from pyops import limits
from pyops.errors import LayerError

log = logging.getLogger(__name__)

BLOCK = 512
MAX_HEADER_CHAIN = 16
"""Extended headers in a row before one member."""

_REGULAR = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))
_EXTENDED = frozenset((tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE))
_HEADERS = frozenset(
    (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
     tarfile.SOLARIS_XHDTYPE)
)  # fmt: skip
_GNU_TYPES = frozenset((tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.GNUTYPE_SPARSE))
_SUPPORTED = frozenset(tarfile.SUPPORTED_TYPES)
_ZERO_BLOCK = bytes(BLOCK)
_UNSIGNED = struct.Struct("148B8x356B")
_SIGNED = struct.Struct("148b8x356b")
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_PAX_NUMBERS = {"size": int, "mtime": float, "uid": int, "gid": int, "atime": float, "ctime": float}


class ByteSource(Protocol):
    def read(self, size: int, /) -> bytes: ...


class SkippingSource(ByteSource, Protocol):
    """A source that can pass over bytes without handing them out."""

    def skip(self, size: int, /) -> int:
        """Pass over up to ``size`` bytes (at least one unless at the end): how many."""
        ...


class _BadHeader(Exception):
    """A header that tarfile would not read either (bad checksum, invalid number)."""


def _nts(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def _nti(field: bytes) -> int:
    if field[0] in (0o200, 0o377):
        number = int.from_bytes(field[1:], "big")
        if field[0] == 0o377:
            number -= 256 ** (len(field) - 1)
        return number
    end = field.find(b"\0")
    text = (field if end < 0 else field[:end]).strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise _BadHeader("invalid header") from None


class TarStream:
    """The members of one tar stream; ``label`` names the layer in errors."""

    def __init__(self, source: ByteSource | SkippingSource, label: str) -> None:
        self._source = source
        self._pass = getattr(source, "skip", None)  # a SkippingSource's
        self._label = label
        self.offset = 0  # bytes of the stream read so far
        self._left = 0  # data bytes of the current member not read yet
        self._padding = 0  # and the padding after them
        self._global: dict[str, str] = {}
        self._header_limit = limits.LAYER_HEADER_BYTES.value()
        self.members = 0
        self.end_of_archive = 0
        """Where the end-of-archive blocks start (or the stream ended), once :meth:`next`
        returned None."""

    # -- reading --------------------------------------------------------------------------------

    def _exact(self, size: int) -> bytes:
        """``size`` bytes, fewer only at the end of the stream."""
        data = self._source.read(size)
        if len(data) < size and data:
            parts = [data]
            got = len(data)
            while got < size:
                more = self._source.read(size - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.offset += len(data)
        return data

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the current member's data (b"" at its end)."""
        if self._left <= 0:
            return b""
        data = self._source.read(min(size, self._left))
        self._left -= len(data)
        self.offset += len(data)
        return data

    def _skip(self) -> bool:
        """Skip the rest of the current member's data and its padding; False if the stream
        ended in the padding (umoci's last member)."""
        while self._left > 0:
            if self._pass is not None:
                count = self._pass(self._left)
                self._left -= count
                self.offset += count
            else:
                count = len(self.read(min(self._left, 1 << 16)))
            if not count:
                raise self._error(f"is truncated: a member's data ends at byte {self.offset:,}.")
        if self._padding:
            padding, self._padding = self._padding, 0
            if len(self._exact(padding)) < padding:
                return False
        return True

    def _error(self, what: str, hint: str | None = None) -> LayerError:
        return LayerError(f"{self._label} {what}", hint=hint)

    def _refused(self, what: str) -> LayerError:
        return self._error(what, hint="The image is malformed or malicious.")

    # -- members --------------------------------------------------------------------------------

    def next(self) -> tarfile.TarInfo | None:
        """The next member (its data is then read with :meth:`read`), None at the end."""
        if not self._skip():
            self._ended(self.offset, early=True)
            return None
        start = self.offset
        try:
            info = self._member(0)
        except _BadHeader as exc:
            if self.members == 0:
                raise self._error(f"is not a valid tar archive: {exc}.") from None
            self._ended(start)  # tarfile ends the archive at a bad header
            return None
        if info is None:
            return None
        self.members += 1
        return info

    def _ended(self, at: int, *, early: bool = False) -> None:
        if early:
            log.warning("%s: the tar ends without end-of-archive blocks", self._label)
        self.end_of_archive = at
        return None

    def _header(self) -> bytes | None:
        """The next header block; None at the end-of-archive marker or the stream's end."""
        start = self.offset
        block = self._exact(BLOCK)
        if len(block) < BLOCK:
            if self.members == 0 and start == 0:
                what = "it is empty" if not block else "its first header is cut short"
                raise self._error(f"is not a tar archive: {what}.")
            self._ended(start, early=True)
            return None
        if block == _ZERO_BLOCK:
            self._ended(start)
            return None
        return block

    def _member(self, chain: int) -> tarfile.TarInfo | None:
        block = self._header()
        if block is None:
            return None
        checksum = _nti(block[148:156])
        # The checksum field counts as 8 spaces; some old tars sum signed bytes.
        if checksum != 256 + sum(_UNSIGNED.unpack(block)) and checksum != 256 + sum(
            _SIGNED.unpack(block)
        ):
            raise _BadHeader("bad checksum")
        kind = block[156:157]
        size = _nti(block[124:136])
        name = _nts(block[0:100])
        if kind == tarfile.GNUTYPE_SPARSE:
            raise self._refused(self._sparse(name))
        if kind in _HEADERS:
            return self._extended(kind, size, name, chain)
        info = tarfile.TarInfo()
        info.type = kind
        info.mode = _nti(block[100:108])
        info.size = size
        info.mtime = _nti(block[136:148])
        info.linkname = _nts(block[157:257])
        info.devmajor = _nti(block[329:337])
        info.devminor = _nti(block[337:345])
        prefix = _nts(block[345:500])
        if kind == tarfile.AREGTYPE and name.endswith("/"):
            info.type = kind = tarfile.DIRTYPE  # a V7 directory
        if kind == tarfile.DIRTYPE:
            name = name.rstrip("/")
        if prefix and kind not in _GNU_TYPES:
            name = prefix + "/" + name
        info.name = name
        if self._global:
            self._apply_pax(info, self._global)
        self._start_data(info)
        return info

    def _start_data(self, info: tarfile.TarInfo) -> None:
        info.offset_data = self.offset
        has_data = info.type in _REGULAR or info.type not in _SUPPORTED
        size = max(info.size, 0) if has_data else 0
        self._left = size
        self._padding = -size % BLOCK

    def _extended(self, kind: bytes, size: int, name: str, chain: int) -> tarfile.TarInfo | None:
        if size < 0 or size > self._header_limit:
            raise self._refused(
                f"has an extended header of {size:,} bytes (at most {self._header_limit:,} are "
                f"read, {limits.LAYER_HEADER_BYTES.variable}); refused."
            )
        if chain >= MAX_HEADER_CHAIN:
            raise self._refused(f"has more than {MAX_HEADER_CHAIN} extended headers in a row.")
        data = self._exact(size + (-size % BLOCK))
        if len(data) < size:
            raise self._error("is truncated: it ends inside an extended header.")
        data = data[:size]
        pax: dict[str, str] | None = None
        if kind in _EXTENDED or kind == tarfile.XGLTYPE:
            pax = self._global if kind == tarfile.XGLTYPE else dict(self._global)
            self._parse_pax(data, pax)
        try:
            following = self._member(chain + 1)
        except _BadHeader as exc:
            raise self._error(
                f"is not a valid tar archive: {exc} after an extended header."
            ) from None
        if following is None:
            return None
        if kind == tarfile.GNUTYPE_LONGNAME:
            following.name = _nts(data)
            if following.type == tarfile.DIRTYPE:
                following.name = following.name.rstrip("/")
        elif kind == tarfile.GNUTYPE_LONGLINK:
            following.linkname = _nts(data)
        elif pax is not None and kind in _EXTENDED:
            if any(key.startswith("GNU.sparse.") for key in pax):
                raise self._refused(
                    self._sparse(pax.get("GNU.sparse.name") or pax.get("path") or following.name)
                )
            self._apply_pax(following, pax)
            self._start_data(following)
        return following

    def _parse_pax(self, data: bytes, into: dict[str, str]) -> None:
        pos = 0
        while match := _PAX_RECORD.match(data, pos):
            digits = match.group(1)
            length = int(digits) if len(digits) <= 18 else 0
            if length <= match.end(2) - match.start(1):
                raise self._refused("has an invalid pax header: a record's length is wrong.")
            keyword = match.group(2).decode("utf-8", "surrogateescape")
            value = data[match.end(2) + 1 : match.start(1) + length - 1]
            into[keyword] = value.decode("utf-8", "surrogateescape")
            pos += length

    @staticmethod
    def _apply_pax(info: tarfile.TarInfo, pax: dict[str, str]) -> None:
        for keyword, value in pax.items():
            if keyword == "path":
                info.name = value.rstrip("/")
            elif keyword == "linkpath":
                info.linkname = value
            elif keyword in ("size", "mtime"):
                try:
                    number = _PAX_NUMBERS[keyword](value)
                except ValueError:
                    number = 0
                setattr(info, keyword, number)

    @staticmethod
    def _sparse(name: str) -> str:
        return (
            f"has a sparse file {name!r}, which pyops does not unpack (it would be written whole)."
        )

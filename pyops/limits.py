"""Every limit pyops puts on untrusted input, in one place.

Images, registries, layers, ELF files and config files come from strangers. Each limit
below bounds the work or memory such input can cost; a user with a real need raises it with
the environment variable ``PYOPS_LIMIT_<NAME>``. An input over a limit is refused with
:class:`LimitExceeded`, whose text names the limit and how to raise it. The README's
"Limits" section lists them all (a test keeps it in step with :data:`ALL`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from pyops.errors import ConfigError, LimitExceeded


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: its name (``PYOPS_LIMIT_<name>``), default and what it counts."""

    name: str
    default: int
    what: str
    """What it counts, as in "at most N <what>"."""

    @property
    def variable(self) -> str:
        return f"PYOPS_LIMIT_{self.name}"

    def value(self) -> int:
        """The limit in force: the environment's value, or the default."""
        text = os.environ.get(self.variable)
        if text is None or text == "":
            return self.default
        text = text.strip().replace("_", "")
        if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) <= 0:
            raise ConfigError(
                f"{self.variable}={os.environ[self.variable]!r} is not a positive whole number",
                hint=f"set {self.variable} to a number, or unset it for the default "
                f"({self.default:,})",
            )
        return int(text)

    def exceeded(self, subject: str, amount: int | None = None) -> LimitExceeded:
        """The error for ``subject`` going over this limit (``amount``: how far, if known)."""
        limit = self.value()
        seen = f" ({amount:,})" if amount is not None else ""
        return LimitExceeded(
            f"{subject}{seen} is over the limit of {limit:,} {self.what} ({self.variable})",
            hint=f"if the input is trusted, raise the limit: {self.variable}=N (now {limit:,})",
        )

    def check(self, amount: int, subject: str) -> None:
        """Raise :meth:`exceeded` when ``amount`` is over the limit."""
        if amount > self.value():
            raise self.exceeded(subject, amount)


GiB = 1 << 30
MiB = 1 << 20

# Layers and images.
UNPACKED_BYTES = Limit("UNPACKED_BYTES", 64 * GiB, "bytes unpacked from an image's layers")
LAYER_RATIO = Limit("LAYER_RATIO", 1000, "times a layer's compressed size once unpacked")
LAYER_ENTRIES = Limit("LAYER_ENTRIES", 2_000_000, "entries in an image's layers")
TRAILING_BYTES = Limit("TRAILING_BYTES", 1 * MiB, "bytes after a layer's end-of-archive marker")
PATH_DEPTH = Limit("PATH_DEPTH", 1024, "folders deep in a path")
LAYER_HEADER_BYTES = Limit(
    "LAYER_HEADER_BYTES", 1 * MiB, "bytes in one extended (PAX or GNU long name) tar header"
)

# Registries.
MANIFESTS = Limit("MANIFESTS", 64, "manifests and indexes visited by one pull")
JSON_BYTES = Limit("JSON_BYTES", 4 * MiB, "bytes in a manifest, index, config or token answer")
JSON_DEPTH = Limit("JSON_DEPTH", 64, "levels of nesting in a JSON document")
MIN_RATE = Limit(
    "MIN_RATE", 16 * 1024, "bytes a second (the slowest download that is not given up)"
)
REQUEST_SECONDS = Limit("REQUEST_SECONDS", 60, "seconds for a request, besides its transfer")

# ELF files and the loader's configuration.
NEEDED = Limit("NEEDED", 4096, "DT_NEEDED entries in one ELF file")
OBJECTS = Limit("OBJECTS", 20_000, "libraries loaded by one program")
LOADER_FILE_BYTES = Limit(
    "LOADER_FILE_BYTES", 64 * MiB, "bytes in ld.so.cache, ld.so.conf or a loader file"
)
PATH_ELEMENTS = Limit(
    "PATH_ELEMENTS", 512, "elements in a search path (LD_LIBRARY_PATH, RUNPATH, a name)"
)

# Disk images.
TUPLE_DEPTH = Limit("TUPLE_DEPTH", 1100, "levels of nesting in an image's metadata")
FILE_BYTES = Limit("FILE_BYTES", 1 << 44, "bytes in one file of an image")
PACKAGE_DB_BYTES = Limit(
    "PACKAGE_DB_BYTES", 256 * MiB, "bytes in one file of an image's dpkg or apk database"
)
MANIFEST_TEXT_BYTES = Limit(
    "MANIFEST_TEXT_BYTES", 256 * MiB, "bytes in a Nanos manifest text (mkfs's input)"
)

ALL: tuple[Limit, ...] = (
    UNPACKED_BYTES,
    LAYER_RATIO,
    LAYER_ENTRIES,
    TRAILING_BYTES,
    PATH_DEPTH,
    LAYER_HEADER_BYTES,
    MANIFESTS,
    JSON_BYTES,
    JSON_DEPTH,
    MIN_RATE,
    REQUEST_SECONDS,
    NEEDED,
    OBJECTS,
    LOADER_FILE_BYTES,
    PATH_ELEMENTS,
    TUPLE_DEPTH,
    FILE_BYTES,
    PACKAGE_DB_BYTES,
    MANIFEST_TEXT_BYTES,
)


def json_depth(data: bytes | str) -> int:
    """How deeply the arrays and objects of a JSON text nest, without parsing it."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json(data: bytes | str, subject: str) -> Any:
    """Parse untrusted JSON within :data:`JSON_BYTES` and :data:`JSON_DEPTH`.

    Raises :class:`LimitExceeded` for a document over a limit and :class:`ValueError`
    (``json.JSONDecodeError`` or Python's limit on the digits of an integer) for one that
    is not JSON; callers turn the latter into their own error.
    """
    JSON_BYTES.check(len(data), subject)
    # Cheap test first: a document cannot nest deeper than it has brackets.
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    brackets = raw.count(b"[") + raw.count(b"{")
    if brackets > JSON_DEPTH.value():
        JSON_DEPTH.check(json_depth(data), f"{subject}: its nesting")
    try:
        return json.loads(data)
    except RecursionError as exc:  # pragma: no cover - the depth check comes first
        raise JSON_DEPTH.exceeded(f"{subject}: its nesting") from exc

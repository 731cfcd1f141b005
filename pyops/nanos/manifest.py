"""The configuration Nanos reads from the root tuple of the root filesystem.

Besides ``children`` (the root directory), the kernel reads ``program``, ``arguments``,
``environment``, ``cwd``, ``klibs`` and many optional keys (nanos-image-format.md section 4).
:class:`Manifest` models the common ones and passes any other key through verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyops.errors import ImageFormatError, InvalidInput
from pyops.nanos.tuples import canonical

# Keys that mkfs consumes or that describe the tree itself, never configuration.
_RESERVED = frozenset({"children", "boot", "imagesize"})
_MODELLED = frozenset({"program", "arguments", "environment", "cwd", "klibs"})


@dataclass(frozen=True, slots=True)
class Manifest:
    """The root-tuple configuration of a Nanos image.

    ``extra`` holds any other root keys (``debugsyscalls``, ``mounts``, ``en1``, ...), whose
    values are TFS values: strings, ints, None for flags, and nested dicts and lists.
    """

    program: str | None = None
    arguments: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    klibs: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.program is not None and (not self.program or "\0" in self.program):
            raise InvalidInput(f"invalid program path {self.program!r}")
        for name in self.environment:
            if not name or "=" in name or "\0" in name:
                raise InvalidInput(
                    f"invalid environment variable name {name!r}",
                    hint="names cannot be empty or contain '=' or NUL",
                )
        for key in self.extra:
            if key in _RESERVED or key in _MODELLED:
                raise InvalidInput(
                    f"the manifest key {key!r} cannot be passed through",
                    hint=f"{key} is set by pyops itself"
                    if key in _MODELLED
                    else f"{key} describes the file tree, not the configuration",
                )
            if not key or "\0" in key:
                raise InvalidInput(f"invalid manifest key {key!r}")

    def check_writable(self) -> None:
        """Refuse text Nanos cannot be given: a NUL ends a C string early, and a lone
        surrogate (from an undecodable host string) has no UTF-8 encoding."""
        texts: list[tuple[str, str]] = [("the program", self.program or "")]
        texts += [(f"argument {i}", a) for i, a in enumerate(self.arguments)]
        texts += [(f"the environment variable {k}", v) for k, v in self.environment.items()]
        texts += [("the environment variable name", k) for k in self.environment]
        texts.append(("cwd", self.cwd or ""))
        for what, text in texts:
            if "\0" in text:
                raise InvalidInput(
                    f"{what} contains a NUL character: {text!r}",
                    hint="Nanos passes these as C strings; remove the NUL",
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(
                    f"{what} is not valid text: {text!r}",
                    hint="it holds bytes that are not UTF-8; give it as UTF-8 text",
                ) from None

    def root_items(self) -> dict[str, Any]:
        """The root-tuple keys (besides ``children``), sorted by name for reproducible images."""
        items: dict[str, Any] = {}
        if self.program is not None:
            items["program"] = self.program
        if self.arguments:
            items["arguments"] = list(self.arguments)
        if self.environment:
            items["environment"] = {k: self.environment[k] for k in sorted(self.environment)}
        if self.cwd is not None:
            items["cwd"] = self.cwd
        if self.klibs is not None:
            items["klibs"] = self.klibs
        for key, value in self.extra.items():
            items[key] = _copy_value(value)
        return {k: items[k] for k in sorted(items)}

    @classmethod
    def from_root(cls, root: Mapping[str, Any]) -> Manifest:
        """Read the configuration out of a decoded root tuple."""
        program = root.get("program")
        arguments = root.get("arguments", ())
        if isinstance(arguments, Mapping):  # the v4 form: a tuple keyed "0", "1", ...
            arguments = [arguments[k] for k in sorted(arguments, key=_int_key)]
        elif not isinstance(arguments, list | tuple):
            raise ImageFormatError("the manifest's arguments are not a list")
        environment = root.get("environment", {})
        if not isinstance(environment, Mapping):
            raise ImageFormatError("the manifest's environment is not a tuple")
        extra = {
            k: canonical(v) for k, v in root.items() if k not in _RESERVED and k not in _MODELLED
        }
        return cls(
            program=_text(program, "program"),
            arguments=tuple(_text(a, "argument") or "" for a in arguments),
            environment={
                str(k): _text(v, "environment value") or "" for k, v in environment.items()
            },
            cwd=_text(root.get("cwd"), "cwd"),
            klibs=_text(root.get("klibs"), "klibs"),
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-friendly data."""
        return canonical(self.root_items())  # type: ignore[no-any-return]


def _int_key(key: str) -> tuple[int, str]:
    # str.isdigit() also accepts digits int() refuses, such as "²".
    return (int(key), key) if key.isascii() and key.isdigit() and len(key) < 19 else (1 << 62, key)


def _text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str | int):
        return str(value)
    raise ImageFormatError(f"the manifest's {what} is not a string")


def _copy_value(value: Any) -> Any:
    """A fresh copy, so that no two root keys share a tuple (which would encode a reference)."""
    if isinstance(value, Mapping):
        return {str(k): _copy_value(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return [_copy_value(v) for v in value]
    return value

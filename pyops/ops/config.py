"""Ops's ``config.json``: read with Ops's rules, into typed settings.

Like Ops (ops-reference.md section 2.1, ``ConvertJSONToConfig``), keys match
case-insensitively and an unknown key is an error naming it.  Differences, on purpose:

- types are checked with a message naming the key (Ops prints Go's decoder error);
- ``ManifestPassthrough`` numbers and booleans become strings instead of failing;
- an absolute ``Files`` entry is read from that path (Ops reads every entry from the cwd);
- Ops keys that only matter to clouds or to features pyops does not have yet are accepted
  and ignored, with a log message, so an Ops config keeps working.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyops.errors import ConfigError
from pyops.limits import parse_json

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """``RunConfig``: how to boot the image."""

    ports: tuple[str, ...] = ()
    udp_ports: tuple[str, ...] = ()
    memory: str | None = None
    cpus: int | None = None
    accel: bool | None = None
    verbose: bool | None = None
    image_name: str | None = None
    mounts: tuple[str, ...] = ()
    """``RunConfig.Mounts``: ``VOLUME:/path`` strings, as ``--mounts`` takes them."""


@dataclass(frozen=True, slots=True)
class OpsConfig:
    """The settings of one ``config.json`` (None or empty: not given)."""

    program: str | None = None
    args: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    dirs: tuple[str, ...] = ()
    map_dirs: Mapping[str, str] = field(default_factory=dict)
    kernel: str | None = None
    boot: str | None = None
    klibs: tuple[str, ...] = ()
    manifest_passthrough: Mapping[str, Any] = field(default_factory=dict)
    base_volume_size: int | None = None
    name_servers: tuple[str, ...] = ()
    target_root: str | None = None
    nanos_version: str | None = None
    debugflags: tuple[str, ...] = ()
    no_trace: tuple[str, ...] = ()
    reboot_on_exit: bool = False
    mounts: Mapping[str, str] = field(default_factory=dict)
    """``Mounts``: volume name (or UUID) -> guest folder."""
    run: RunSettings = field(default_factory=RunSettings)
    base_dir: Path = Path(".")
    """The directory of the config file (Ops's ``LocalFilesParentDirectory``)."""


# Ops keys pyops reads, by lowercase name -> field
_TOP = {
    "program": "program",
    "args": "args",
    "env": "env",
    "files": "files",
    "dirs": "dirs",
    "mapdirs": "map_dirs",
    "kernel": "kernel",
    "boot": "boot",
    "klibs": "klibs",
    "manifestpassthrough": "manifest_passthrough",
    "basevolumesz": "base_volume_size",
    "nameservers": "name_servers",
    "targetroot": "target_root",
    "nanosversion": "nanos_version",
    "mounts": "mounts",
    "debugflags": "debugflags",
    "notrace": "no_trace",
    "rebootonexit": "reboot_on_exit",
    "runconfig": "run",
    "localfilesparentdirectory": "base_dir",
}
_RUN = {
    "ports": "ports",
    "udpports": "udp_ports",
    "memory": "memory",
    "cpus": "cpus",
    "accel": "accel",
    "verbose": "verbose",
    "imagename": "image_name",
    "mounts": "mounts",
}
# Keys of Ops's types.Config that pyops accepts but does not act on (yet).
_IGNORED_TOP = {
    "programpath", "disableargscopy", "klibdir", "uefi", "uefiboot", "tfsv4",
    "builddir", "nightlybuild", "force", "version", "language", "description", "volumesdir",
    "packagebaseurl", "packagemanifesturl", "home", "cloudconfig", "targetconfig",
}  # fmt: skip
_IGNORED_RUN = {
    "debug", "gdbport", "bridged", "bridgename", "bridgeipaddress", "tapname", "ipaddress",
    "ipv6address", "netmask", "gateway", "nics", "instancename", "instancegroup", "kernel",
    "vga", "qmp", "mgmt", "background", "backgrounddetach", "atexit", "gpus",
    "gputype", "showdebug", "showerrors", "showwarnings", "json", "canipforward",
    "attachvolumeoninstancecreate", "volumesizeingb", "threadspercore",
}  # fmt: skip


def parse_size(text: str, what: str = "size") -> int:
    """``100``, ``512k``, ``64M``, ``2g`` (powers of 1024) in bytes."""
    m = re.fullmatch(r"\s*([0-9]{1,20})\s*([kKmMgGtT]?)\s*", text)
    if not m:
        raise ConfigError(
            f"invalid {what} {text!r}", hint="write a number of bytes, or one with k, m, g or t"
        )
    unit = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    size = int(m.group(1)) * unit
    if size > MAX_SIZE:
        raise ConfigError(
            f"{what} {text!r} is too large", hint=f"at most {MAX_SIZE >> 40} TiB (an MBR disk)"
        )
    return size


# The largest disk an MBR partition table can describe (2^32 sectors of 512 bytes).
MAX_SIZE = (1 << 32) * 512


def load_config(path: str | Path) -> OpsConfig:
    """Read an Ops ``config.json``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read it ({exc})") from exc
    try:
        data = parse_json(text, str(p))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{p}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{p}: invalid JSON ({exc})") from exc
    return parse_config(data, base_dir=p.parent, source=str(p))


def parse_config(data: Any, *, base_dir: Path = Path("."), source: str = "config") -> OpsConfig:
    """Turn decoded JSON into :class:`OpsConfig`, with Ops's key rules."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the configuration must be a JSON object")
    values: dict[str, Any] = {"base_dir": base_dir}
    for key, value in data.items():
        lower = key.lower()
        name = _TOP.get(lower)
        if name is None:
            if lower in _IGNORED_TOP:
                log.info("%s: %s is not used by pyops; ignored", source, key)
                continue
            raise ConfigError(
                f"{source}: unknown key {key!r}",
                hint="check its spelling against Ops's config.json reference",
            )
        if name in values and name != "base_dir":
            raise ConfigError(f"{source}: {key!r} is given twice (keys ignore case)")
        values[name] = _convert(name, key, value, source, base_dir)
    return OpsConfig(**values)


def _convert(name: str, key: str, value: Any, source: str, base_dir: Path) -> Any:
    where = f"{source}: {key}"
    if name in ("program", "kernel", "boot", "target_root", "nanos_version"):
        return _string(value, where)
    if name in ("args", "files", "dirs", "klibs", "name_servers", "debugflags", "no_trace"):
        items = _strings(value, where)
        return items
    if name in ("env", "map_dirs", "mounts"):
        return _string_map(value, where)
    if name == "manifest_passthrough":
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object")
        return {str(k): _passthrough(v, f"{where}.{k}") for k, v in value.items()}
    if name == "base_volume_size":
        return parse_size(_string(value, where), "BaseVolumeSz")
    if name == "reboot_on_exit":
        return _bool(value, where)
    if name == "base_dir":
        return (base_dir / _string(value, where)).resolve()
    if name == "run":
        return _run(value, where)
    raise AssertionError(name)  # pragma: no cover


def _run(value: Any, where: str) -> RunSettings:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        lower = key.lower()
        name = _RUN.get(lower)
        if name is None:
            if lower in _IGNORED_RUN:
                log.info("%s.%s is not used by pyops; ignored", where, key)
                continue
            raise ConfigError(f"{where}: unknown key {key!r}")
        sub = f"{where}.{key}"
        if name in ("ports", "udp_ports", "mounts"):
            out[name] = _strings(item, sub)
        elif name in ("memory", "image_name"):
            out[name] = _string(item, sub)
        elif name == "cpus":
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                raise ConfigError(f"{sub} must be a whole number")
            out[name] = item or None
        else:
            out[name] = _bool(item, sub)
    return RunSettings(**out)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {_json_type(value)}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{where} must be a list of strings",
            hint='for example ["8080"], with numbers quoted' if "Port" in where else None,
        )
    return tuple(value)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where} must be an object whose values are strings")
    return {str(k): v for k, v in value.items()}


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false")
    return value


def _passthrough(value: Any, where: str) -> Any:
    """Manifest values are strings, lists and tuples; numbers and booleans become strings."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [_passthrough(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _passthrough(v, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: null cannot be stored in a Nanos manifest")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

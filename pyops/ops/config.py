"""Ops's ``config.json``: read with Ops's rules, into typed settings.

Like Ops (ops-reference.md section 2, ``cmd/flags_config.go: ConvertJSONToConfig``):

- keys match case-insensitively, folded as Go's decoder folds them;
- a key Ops's ``types.Config`` does not have is an error naming it, at the top level and in
  every object Ops decodes into a struct: ``RunConfig`` (and its ``Nics``), ``CloudConfig``
  (and its ``RootVolume`` and ``Tags``);
- every value must have the type of Ops's field, also for the keys pyops does not act on
  (those are accepted and ignored, with a log line, so an Ops config keeps working);
- ``null`` does what Go's decoder does with it: nothing for a single value, empty for a
  list or an object;
- the default config (``OPS_DEFAULT_CONFIG``, else ``~/.opsrc``) is read leniently and the
  file is merged over it as Ops merges them (:func:`load_ops_config`);
- ``ops_render_config=true`` expands ``$VAR`` and ``${VAR}`` in the file first, with Go's
  ``os.ExpandEnv`` rules (:func:`expand_env`).

Differences, on purpose:

- types are checked with a message naming the key (Ops prints Go's decoder error);
- a key given twice (in any spelling) is an error (Go keeps the last);
- ``ManifestPassthrough`` numbers and booleans become strings instead of failing;
- an absolute ``Files`` entry is read from that path (Ops reads every entry from the cwd);
- an invalid ``BaseVolumeSz`` is an error (Ops ignores it without a word);
- ``RunConfig.Memory`` and ``RunConfig.Accel`` of the default config are used (Ops's
  ``NewConfig`` overwrites them with ``2G`` and true after reading it);
- ``LocalFilesParentDirectory`` in the file is used, relative to the file's folder (Ops
  always replaces it with the file's folder).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyops.errors import ConfigError
from pyops.limits import JSON_BYTES, parse_json

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
    klib_dir: str | None = None
    """``KlibDir``: a host folder the klibs are taken from before the release's own."""
    package_manifest_url: str | None = None
    """``PackageManifestURL``: the index of Ops's package repository (pyops.ops.repository)."""
    package_base_url: str | None = None
    """``PackageBaseURL``: where the repository's packages are fetched from."""
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


# The kinds of value Ops's fields have (Go's types); a struct's kind is its name below, a
# list of structs "[]" and its name.
_STRING, _BOOL, _INT, _STRINGS, _STRING_MAP, _OBJECT = (
    "string", "bool", "int", "strings", "string map", "object",
)  # fmt: skip

# Ops's types/config.go, field by field, as its JSON names are spelled: Config, RunConfig,
# ProviderConfig (CloudConfig), CloudVolume, Tag, TagAttribute and Nic. RunConfig's
# VirtfsShares is not here: its tag is json:"-", so Go's decoder does not know it either.
_STRUCTS: dict[str, dict[str, str]] = {
    "Config": {
        "Args": _STRINGS, "DisableArgsCopy": _BOOL, "BaseVolumeSz": _STRING, "Boot": _STRING,
        "UefiBoot": _STRING, "Uefi": _BOOL, "BuildDir": _STRING, "CloudConfig": "ProviderConfig",
        "TargetConfig": _STRING_MAP, "Debugflags": _STRINGS, "Dirs": _STRINGS,
        "Env": _STRING_MAP, "Files": _STRINGS, "Force": _BOOL, "home": _STRING,
        "Kernel": _STRING, "KlibDir": _STRING, "Klibs": _STRINGS, "MapDirs": _STRING_MAP,
        "Mounts": _STRING_MAP, "NameServers": _STRINGS, "NanosVersion": _STRING,
        "NightlyBuild": _BOOL, "NoTrace": _STRINGS, "ManifestPassthrough": _OBJECT,
        "Program": _STRING, "ProgramPath": _STRING, "RebootOnExit": _BOOL,
        "RunConfig": "RunConfig", "LocalFilesParentDirectory": _STRING, "TargetRoot": _STRING,
        "TFSv4": _BOOL, "Version": _STRING, "Language": _STRING, "Description": _STRING,
        "VolumesDir": _STRING, "PackageBaseURL": _STRING, "PackageManifestURL": _STRING,
    },
    "RunConfig": {
        "Accel": _BOOL, "AtExit": _STRING, "Bridged": _BOOL, "BridgeIPAddress": _STRING,
        "BridgeName": _STRING, "CanIPForward": _BOOL, "CPUs": _INT, "GPUs": _INT,
        "GPUType": _STRING, "Debug": _BOOL, "Gateway": _STRING, "GdbPort": _INT,
        "ImageName": _STRING, "InstanceGroup": _STRING, "InstanceName": _STRING,
        "IPAddress": _STRING, "IPv6Address": _STRING, "Kernel": _STRING, "Memory": _STRING,
        "Mgmt": _STRING, "Vga": _BOOL, "Mounts": _STRINGS,
        "AttachVolumeOnInstanceCreate": _BOOL, "NetMask": _STRING, "Nics": "[]Nic",
        "Background": _BOOL, "BackgroundDetach": _BOOL, "Ports": _STRINGS, "QMP": _BOOL,
        "ShowDebug": _BOOL, "ShowErrors": _BOOL, "ShowWarnings": _BOOL, "JSON": _BOOL,
        "TapName": _STRING, "UDPPorts": _STRINGS, "Verbose": _BOOL, "VolumeSizeInGb": _INT,
        "ThreadsPerCore": _INT,
    },
    "ProviderConfig": {
        "BucketName": _STRING, "BucketNamespace": _STRING, "ConfidentialVM": _BOOL,
        "DedicatedHostID": _STRING, "DomainName": _STRING, "StaticIP": _STRING,
        "EnableIPv6": _BOOL, "Flavor": _STRING, "ImageType": _STRING, "ImageName": _STRING,
        "InstanceProfile": _STRING, "KMS": _STRING, "Platform": _STRING, "ProjectID": _STRING,
        "RootVolume": "CloudVolume", "SecurityGroup": _STRING, "SkipImportVerify": _BOOL,
        "Spot": _BOOL, "Subnet": _STRING, "Tags": "[]Tag", "UserData": _STRING,
        "VPC": _STRING, "Zone": _STRING,
    },
    "CloudVolume": {
        "name": _STRING, "iops": _INT, "size": _INT, "throughput": _INT, "typeof": _STRING,
    },
    "Tag": {"key": _STRING, "value": _STRING, "attribute": "TagAttribute"},
    "TagAttribute": {
        "image_label": _BOOL, "instance_label": _BOOL, "instance_network": _BOOL,
        "instance_metadata": _BOOL,
    },
    "Nic": {
        "IPAddress": _STRING, "IPv6Address": _STRING, "NetMask": _STRING, "Gateway": _STRING,
        "BridgeName": _STRING,
    },
}  # fmt: skip

# Go's encoding/json matches a key to a field with bytes.EqualFold: ASCII case, plus the
# two non-ASCII letters whose simple case folding reaches an ASCII one.
_FOLD = str.maketrans(
    {**{chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)}, "\u017f": "s", "\u212a": "k"}
)


def _fold(key: str) -> str:
    return key.translate(_FOLD)


_BY_FOLDED = {struct: {_fold(name): name for name in fields} for struct, fields in _STRUCTS.items()}

# The Ops fields pyops acts on -> OpsConfig / RunSettings fields. The other fields of
# _STRUCTS are accepted, checked and ignored.
_TOP = {
    "Program": "program",
    "Args": "args",
    "Env": "env",
    "Files": "files",
    "Dirs": "dirs",
    "MapDirs": "map_dirs",
    "Kernel": "kernel",
    "Boot": "boot",
    "Klibs": "klibs",
    "KlibDir": "klib_dir",
    "PackageManifestURL": "package_manifest_url",
    "PackageBaseURL": "package_base_url",
    "ManifestPassthrough": "manifest_passthrough",
    "BaseVolumeSz": "base_volume_size",
    "NameServers": "name_servers",
    "TargetRoot": "target_root",
    "NanosVersion": "nanos_version",
    "Mounts": "mounts",
    "Debugflags": "debugflags",
    "NoTrace": "no_trace",
    "RebootOnExit": "reboot_on_exit",
    "RunConfig": "run",
    "LocalFilesParentDirectory": "base_dir",
}
_RUN = {
    "Ports": "ports",
    "UDPPorts": "udp_ports",
    "Memory": "memory",
    "CPUs": "cpus",
    "Accel": "accel",
    "Verbose": "verbose",
    "ImageName": "image_name",
    "Mounts": "mounts",
}
# Fields of Ops's NewConfig that it resets after reading the default config.
_RESET_DEFAULTS = ("LocalFilesParentDirectory",)

_INT64 = 1 << 63


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

RENDER_VARIABLE = "ops_render_config"
"""Set to ``true`` (exactly), it has config files' ``$VAR`` and ``${VAR}`` expanded."""
DEFAULT_CONFIG_VARIABLE = "OPS_DEFAULT_CONFIG"
"""The default config file, instead of ``~/.opsrc``."""


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> OpsConfig:
    """Read an Ops ``config.json`` (alone: :func:`load_ops_config` adds the defaults).

    With ``ops_render_config=true`` in ``environ`` (default: this process's environment),
    its environment variables are expanded first, as Ops's ``unWarpConfig`` does."""
    p = Path(path)
    data = _read_config(p, os.environ if environ is None else environ)
    return parse_config(data, base_dir=p.parent, source=str(p))


def load_ops_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: str | Path | None = None,
) -> OpsConfig:
    """The configuration Ops's commands work with: the default config with the file at
    ``path`` (``-c``; None: none) merged over it.

    The default config is ``$OPS_DEFAULT_CONFIG`` when that is set, else ``HOME/.opsrc``
    when it exists (Ops's ``lepton/config.go: NewConfig``); ``environ`` and ``home``
    default to this process's environment and home folder. It is read leniently, as Ops
    reads it: unknown keys are ignored (with a log line), while values must still have
    their field's type. A missing ``OPS_DEFAULT_CONFIG`` file is only a warning (Ops
    prints an error and goes on); any other problem with the default config is an error
    naming it. The file is then decoded over the defaults the way Go's decoder fills a
    struct already filled (:func:`merge_config_data`), so the file wins key by key;
    relative paths are the file's, or the current folder's without a file.
    """
    env = os.environ if environ is None else environ
    defaults_path = default_config_path(env, home)
    defaults: dict[str, Any] = {}
    if defaults_path is not None:
        try:
            raw = _read_json(defaults_path)
        except _Unreadable as exc:
            if not (exc.missing and env.get(DEFAULT_CONFIG_VARIABLE)):
                raise ConfigError(str(exc), hint=exc.hint) from None
            log.warning("%s (set by %s); no default config used", exc, DEFAULT_CONFIG_VARIABLE)
        else:
            defaults = _normalise(raw, "Config", str(defaults_path), "", strict=False)
            for name in _RESET_DEFAULTS:
                defaults.pop(name, None)
            # its values are checked (and their errors name it) before the merge
            _to_config(defaults, Path("."), str(defaults_path))
    if path is None:
        return _to_config(defaults, Path("."), str(defaults_path or "defaults"))
    p = Path(path)
    data = _normalise(_read_config(p, env), "Config", str(p), "", strict=True)
    return _to_config(_merge(defaults, data, "Config"), p.parent, str(p))


def default_config_path(
    environ: Mapping[str, str] | None = None, home: str | Path | None = None
) -> Path | None:
    """Ops's default config file: ``$OPS_DEFAULT_CONFIG`` when set (even to a missing
    file), else ``HOME/.opsrc`` when that exists, else None."""
    env = os.environ if environ is None else environ
    named = env.get(DEFAULT_CONFIG_VARIABLE, "")
    if named:
        return Path(named)
    try:
        folder = Path(home) if home is not None else Path.home()
    except RuntimeError:  # no home folder can be found
        return None
    opsrc = folder / ".opsrc"
    return opsrc if opsrc.exists() else None


def merge_config_data(defaults: Any, data: Any, *, source: str = "config") -> dict[str, Any]:
    """The JSON object Ops ends with when it decodes the object ``data`` into a config
    already filled from ``defaults`` (Go's ``encoding/json`` into a filled struct): ``data``
    wins key by key; objects Ops decodes into structs (``RunConfig``, ``CloudConfig``...)
    merge field by field and maps (``Env``, ``MapDirs``, ``Mounts``,
    ``ManifestPassthrough``...) key by key; lists are replaced; ``null`` empties a list or
    a map and leaves anything else as it was. Unknown keys are dropped from ``defaults``
    and refused in ``data``; keys come back spelled as Ops's fields."""
    base = _normalise(defaults, "Config", "defaults", "", strict=False)
    return _merge(base, _normalise(data, "Config", source, "", strict=True), "Config")


def parse_config(data: Any, *, base_dir: Path = Path("."), source: str = "config") -> OpsConfig:
    """Turn decoded JSON into :class:`OpsConfig`, with Ops's key rules."""
    return _to_config(_normalise(data, "Config", source, "", strict=True), base_dir, source)


def merge_ports(configured: Sequence[str], given: Sequence[str]) -> tuple[str, ...]:
    """The ports forwarded: config.json's, then each of ``given`` (``-p``, a comma list
    split) that is not among them yet, as Ops's ``RunLocalInstanceCommandFlags.MergeToConfig``
    joins them. The guest's ``OPS_PORT`` is these, joined by commas."""
    merged = list(configured)
    for item in given:
        for port in item.split(","):
            if port not in merged:
                merged.append(port)
    return tuple(merged)


def expand_env(text: str, environ: Mapping[str, str], *, limit: int | None = None) -> str:
    """``text`` with ``$NAME`` and ``${NAME}`` replaced by their values in ``environ``
    (empty when unset), by Go's ``os.ExpandEnv`` rules, which Ops's ``ops_render_config``
    uses: a name is letters, digits and ``_``, or one of ``*#$@!?-`` and a digit alone
    (``$1``, ``$$``); ``${...}`` takes anything up to the first ``}``; ``${}`` and an
    unclosed ``${`` are dropped; a ``$`` before anything else stays. There is no escape.

    The result is refused (:class:`~pyops.errors.LimitExceeded`) once longer than
    ``limit`` characters (default: the JSON_BYTES limit)."""
    cap = JSON_BYTES.value() if limit is None else limit
    out: list[str] = []
    size = 0
    i = 0
    n = len(text)
    while True:
        j = text.find("$", i)
        if j < 0 or j + 1 >= n:
            out.append(text[i:])
            break
        out.append(text[i:j])
        size += j - i
        name, width = _shell_name(text, j + 1)
        if name is not None:
            value = environ.get(name, "")
            out.append(value)
            size += len(value)
        elif width == 0:
            out.append("$")
            size += 1
        if size > cap:
            raise JSON_BYTES.exceeded("the config with its variables expanded")
        i = j + 1 + width
    result = "".join(out)
    if len(result) > cap:
        raise JSON_BYTES.exceeded("the config with its variables expanded", len(result))
    return result


_SPECIAL = frozenset("*#$@!?-0123456789")
_NAME = re.compile(r"[A-Za-z0-9_]*")


def _shell_name(text: str, start: int) -> tuple[str | None, int]:
    """Go's ``getShellName`` on ``text[start:]`` (not empty): the name (None for none) and
    how many characters it takes."""
    first = text[start]
    if first == "{":
        if start + 2 < len(text) and text[start + 1] in _SPECIAL and text[start + 2] == "}":
            return text[start + 1], 3
        end = text.find("}", start + 1)
        if end < 0:
            return None, 1  # bad syntax: "${" is dropped
        if end == start + 1:
            return None, 2  # bad syntax: "${}" is dropped
        return text[start + 1 : end], end - start + 1
    if first in _SPECIAL:
        return first, 1
    m = _NAME.match(text, start)
    width = m.end() - start if m else 0
    return (text[start : start + width] or None), width


class _Unreadable(Exception):
    def __init__(self, message: str, *, missing: bool = False, hint: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing
        self.hint = hint


def _read_text(path: Path) -> str:
    """The file's text, read no further than the JSON_BYTES limit allows."""
    limit = JSON_BYTES.value()
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise _Unreadable(f"{path}: no such config file", missing=True) from None
    except OSError as exc:
        raise _Unreadable(f"{path}: cannot read it ({exc.strerror or exc})") from None
    JSON_BYTES.check(len(data), str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unreadable(
            f"{path}: cannot read it (not UTF-8 at byte {exc.start})",
            hint="save the file as UTF-8",
        ) from None


def _read_json(path: Path, environ: Mapping[str, str] | None = None) -> Any:
    text = _read_text(path)
    if environ is not None and environ.get(RENDER_VARIABLE) == "true":
        text = expand_env(text, environ)
    try:
        return parse_json(text, str(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            hint=None
            if environ is None or environ.get(RENDER_VARIABLE) == "true" or "$" not in text
            else f"to expand its environment variables, set {RENDER_VARIABLE}=true",
        ) from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{path}: invalid JSON ({exc})") from exc


def _read_config(path: Path, environ: Mapping[str, str]) -> Any:
    try:
        return _read_json(path, environ)
    except _Unreadable as exc:
        raise ConfigError(str(exc), hint=exc.hint) from None


def _normalise(value: Any, struct: str, source: str, where: str, *, strict: bool) -> dict[str, Any]:
    """The JSON object ``value`` decoded as Ops's struct ``struct``: keys spelled as its
    fields, each value checked against its field's type. An unknown key is refused
    (``strict``) or dropped."""
    at = f"{source}: {where}" if where else source
    if not isinstance(value, dict):
        what = "the configuration" if not where else where
        raise ConfigError(f"{source}: {what} must be a JSON object, not {_json_type(value)}")
    fields = _STRUCTS[struct]
    by_folded = _BY_FOLDED[struct]
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = by_folded.get(_fold(key))
        if name is None:
            if strict:
                raise ConfigError(f"{at}: unknown key {key!r}", hint=_suggest(key, fields))
            log.info("%s: unknown key %r ignored", at, key)
            continue
        if name in out:
            raise ConfigError(f"{at}: {key!r} is given twice (keys ignore case)")
        sub = f"{where}.{key}" if where else key
        out[name] = _checked(item, fields[name], source, sub, strict=strict)
    return out


def _checked(value: Any, kind: str, source: str, where: str, *, strict: bool) -> Any:
    """``value`` if it fits Ops's field type ``kind`` (null fits every type)."""
    if value is None:
        return None
    at = f"{source}: {where}"
    if kind == _STRING:
        if not isinstance(value, str):
            raise ConfigError(f"{at} must be a string, not {_json_type(value)}")
    elif kind == _BOOL:
        if not isinstance(value, bool):
            raise ConfigError(f"{at} must be true or false, not {_json_type(value)}")
    elif kind == _INT:
        if not isinstance(value, int) or isinstance(value, bool) or not -_INT64 <= value < _INT64:
            raise ConfigError(f"{at} must be a whole number, not {_json_type(value)}")
    elif kind == _STRINGS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"{at} must be a list of strings",
                hint='for example ["8080"], with numbers quoted' if "Port" in where else None,
            )
    elif kind == _STRING_MAP:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{at} must be an object whose values are strings")
    elif kind == _OBJECT:
        if not isinstance(value, dict):
            raise ConfigError(f"{at} must be an object, not {_json_type(value)}")
    elif kind.startswith("[]"):
        if not isinstance(value, list):
            raise ConfigError(f"{at} must be a list of objects, not {_json_type(value)}")
        return [
            _normalise(v, kind[2:], source, f"{where}[{i}]", strict=strict)
            for i, v in enumerate(value)
        ]
    else:
        return _normalise(value, kind, source, where, strict=strict)
    return value


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], struct: str) -> dict[str, Any]:
    """``over`` decoded by Go into the struct ``base`` describes (see merge_config_data)."""
    fields = _STRUCTS[struct]
    out = dict(base)
    for name, value in over.items():
        kind = fields[name]
        old = out.get(name)
        if kind in _STRUCTS:
            if value is not None:
                out[name] = _merge(old, value, kind) if isinstance(old, dict) else value
        elif kind in (_STRING_MAP, _OBJECT):
            out[name] = None if value is None else {**(old or {}), **value}
        elif kind == _STRINGS or kind.startswith("[]"):
            out[name] = value
        elif value is not None:
            out[name] = value
    return out


def _to_config(data: Mapping[str, Any], base_dir: Path, source: str) -> OpsConfig:
    """The OpsConfig of a normalised top-level object."""
    values: dict[str, Any] = {"base_dir": base_dir}
    for name, value in data.items():
        target = _TOP.get(name)
        if target is None:
            _ignored(source, name, value)
            continue
        if value is None:
            continue
        where = f"{source}: {name}"
        if target == "run":
            values["run"] = _run_settings(value, source)
        else:
            converted = _convert(target, value, where, base_dir)
            if converted is not None:
                values[target] = converted
    return OpsConfig(**values)


def _ignored(source: str, name: str, value: Any) -> None:
    if value is None:
        return
    if name == "CloudConfig" and isinstance(value, dict):
        for key in value:
            log.info("%s: CloudConfig.%s is for clouds, not used by pyops; ignored", source, key)
    else:
        log.info("%s: %s is not used by pyops; ignored", source, name)


def _convert(target: str, value: Any, where: str, base_dir: Path) -> Any:
    if target in (
        "program",
        "kernel",
        "boot",
        "target_root",
        "nanos_version",
        "klib_dir",
        "package_manifest_url",
        "package_base_url",
    ):
        return value or None  # "" is Ops's "not given"
    if target in ("args", "files", "dirs", "klibs", "name_servers", "debugflags", "no_trace"):
        return tuple(value)
    if target in ("env", "map_dirs", "mounts"):
        return {str(k): v for k, v in value.items()}
    if target == "manifest_passthrough":
        return {str(k): _passthrough(v, f"{where}.{k}") for k, v in value.items()}
    if target == "base_volume_size":
        return parse_size(value, "BaseVolumeSz") if value else None
    if target == "reboot_on_exit":
        return bool(value)
    if target == "base_dir":
        return (base_dir / value).resolve()
    raise AssertionError(target)  # pragma: no cover


def _run_settings(value: Mapping[str, Any], source: str) -> RunSettings:
    out: dict[str, Any] = {}
    for name, item in value.items():
        target = _RUN.get(name)
        if target is None:
            if item is not None:
                log.info("%s: RunConfig.%s is not used by pyops; ignored", source, name)
            continue
        if item is None:
            continue
        if target in ("ports", "udp_ports", "mounts"):
            out[target] = tuple(item)
        elif target in ("memory", "image_name"):
            out[target] = item or None
        elif target == "cpus":
            out[target] = item if item > 0 else None  # Ops passes -smp only above 0
        else:
            out[target] = item
    return RunSettings(**out)


def _suggest(key: str, fields: Mapping[str, str]) -> str:
    if len(key) <= 64:
        close = difflib.get_close_matches(_fold(key), [_fold(f) for f in fields], n=1)
        if close:
            name = next(f for f in fields if _fold(f) == close[0])
            return f"did you mean {name!r}? Keys are Ops's config.json fields"
    return "check its spelling against Ops's config.json reference"


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
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

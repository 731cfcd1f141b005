"""OCI and Docker manifests, indexes and image configs as typed values; platform choice.

References: OCI image-spec ``manifest.md``, ``image-index.md``, ``descriptor.md``,
``config.md`` and ``media-types.md``; Docker's "Image Manifest V2, Schema 2".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyops import arch, limits
from pyops.errors import (
    InvalidInput,
    InvalidReference,
    LimitExceeded,
    PlatformNotFound,
    RegistryError,
)
from pyops.oci.reference import check_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
"""The ``Accept`` header for manifests: all four current types and nothing else.

Registry 2.8.2 answers a missing or partial ``Accept`` with a 404 for OCI content or with a
converted schema 1 manifest for the wrong platform (reference doc section 3.2).
"""

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

SUPPORTED_LAYER_TYPES = frozenset({LAYER_TAR, LAYER_GZIP, DOCKER_LAYER_GZIP})
"""Layer media types pyops can apply (plain tar and gzip)."""

MAX_MANIFEST_SIZE = limits.JSON_BYTES.default
"""The default limit on manifests, indexes and configs; the one in force is
``limits.JSON_BYTES.value()``."""

_PORT = re.compile(r"([0-9]{1,5})(?:/(tcp|udp|sctp))?", re.ASCII | re.IGNORECASE)

MAX_BLOB_SIZE = (1 << 63) - 1
"""The largest size a descriptor may declare (a signed 64-bit number, as in Go)."""

MAX_INDEX_DEPTH = 4
"""How deep nested indexes may go before pyops gives up."""

_ATTESTATION = "attestation-manifest"


@dataclass(frozen=True, slots=True)
class Platform:
    """An ``os/architecture[/variant]`` triple, with Go names (``amd64``, ``arm64``)."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``linux/amd64`` or ``linux/arm64/v8``."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidInput(
                f"{text!r} is not a platform.", hint="Write os/arch[/variant], e.g. linux/amd64."
            )
        return cls(parts[0].lower(), _normalise_arch(parts[1].lower()), _variant(parts, 2))

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


DEFAULT_PLATFORM = Platform("linux", "amd64")
"""What Nanos runs everywhere (x86-64), and what an image is taken for when the host's own
architecture is not among its platforms."""


def default_platforms(host: arch.Arch | None = None) -> tuple[Platform, ...]:
    """The platforms to try, in order, when none is asked for, as Docker on the host
    (default: this machine) chooses: the host's own architecture when the image has it,
    else amd64. Only architectures Nanos runs on are tried."""
    host = host if host is not None else arch.host()
    own = Platform("linux", host.value) if host is not None and host.nanos else None
    return tuple(dict.fromkeys(p for p in (own, DEFAULT_PLATFORM) if p is not None))


def _variant(parts: list[str], index: int) -> str | None:
    return parts[index].lower() if len(parts) > index and parts[index] else None


def _normalise_arch(name: str) -> str:
    # containerd's platforms.Normalize: common non-Go spellings.
    found = arch.find(name)
    return found.value if found is not None else name


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor: what a blob or manifest is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> Descriptor:
        """Validate a descriptor object taken from the JSON document ``where``.

        Every field is type-checked; a wrong one is a RegistryError naming it.
        """
        if not isinstance(data, dict):
            raise RegistryError(f"{where}: a descriptor is not a JSON object.")
        media_type = _optional_str(data, "mediaType", where, "a descriptor's")
        digest = data.get("digest")
        if not isinstance(digest, str):
            raise RegistryError(f"{where}: a descriptor's 'digest' is not a string.")
        try:
            check_digest(digest)
        except InvalidReference as exc:
            raise RegistryError(f"{where}: {exc}") from exc
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB_SIZE:
            raise RegistryError(
                f"{where}: descriptor {digest}: 'size' is not a whole number from 0 to "
                f"{MAX_BLOB_SIZE}."
            )
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            platform=_platform(data.get("platform"), f"{where}: descriptor {digest}"),
            annotations=_string_map(data.get("annotations"), where, "annotations"),
            urls=_strings(data.get("urls"), where, "urls"),
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_str(doc: Mapping[str, Any], key: str, where: str, whose: str = "") -> str:
    """``doc[key]`` as a string ("" when absent or null); anything else is refused."""
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        owner = f"{whose} " if whose else ""
        raise RegistryError(f"{where}: {owner}'{key}' is not a string.")
    return value


def _platform(value: Any, where: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RegistryError(f"{where}: 'platform' is not a JSON object.")
    os_name = _optional_str(value, "os", where, "platform")
    architecture = _optional_str(value, "architecture", where, "platform")
    variant = _optional_str(value, "variant", where, "platform")
    _optional_str(value, "os.version", where, "platform")
    _strings(value.get("os.features"), where, "platform.os.features")
    _strings(value.get("features"), where, "platform.features")
    return Platform(os_name, architecture, variant or None)


def _string_map(value: Any, where: str, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RegistryError(f"{where}: {key} is not an object of strings.")
    return dict(value)


@dataclass(frozen=True, slots=True)
class ImageIndex:
    """A multi-platform index (OCI image index or Docker manifest list)."""

    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """A single-platform image manifest (OCI or Docker schema 2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config that say what to run and on which platform."""

    architecture: str
    os: str
    variant: str | None = None
    env: tuple[str, ...] = ()
    """``KEY=VALUE`` strings, in order (a later duplicate wins)."""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    diff_ids: tuple[str, ...] = ()
    """sha256 of each layer after decompression, in layer order."""

    @classmethod
    def from_json(cls, data: bytes, *, where: str = "image config") -> ImageConfig:
        """Parse an image config blob (OCI ``config.md``; the ``config`` object may be null).

        Every field used is type-checked; a wrong one is a RegistryError naming it.
        """
        doc = _load_object(data, where)
        inner = doc.get("config")
        if inner is None:
            inner = {}
        if not isinstance(inner, dict):
            raise RegistryError(f"{where}: 'config' is not a JSON object.")
        rootfs = doc.get("rootfs")
        if rootfs is None:
            rootfs = {}
        if not isinstance(rootfs, dict):
            raise RegistryError(f"{where}: 'rootfs' is not a JSON object.")
        diff_ids = _strings(rootfs.get("diff_ids"), where, "rootfs.diff_ids")
        for diff_id in diff_ids:
            try:
                check_digest(diff_id)
            except InvalidReference as exc:
                raise RegistryError(f"{where}: rootfs.diff_ids: {exc}") from exc
        return cls(
            architecture=_optional_str(doc, "architecture", where),
            os=_optional_str(doc, "os", where),
            variant=_optional_str(doc, "variant", where) or None,
            env=_strings(inner.get("Env"), where, "config.Env"),
            entrypoint=_strings(inner.get("Entrypoint"), where, "config.Entrypoint"),
            cmd=_strings(inner.get("Cmd"), where, "config.Cmd"),
            working_dir=_optional_str(inner, "WorkingDir", where, "config"),
            user=_optional_str(inner, "User", where, "config"),
            exposed_ports=_ports(inner.get("ExposedPorts"), where),
            labels=_string_map(inner.get("Labels"), where, "config.Labels"),
            diff_ids=diff_ids,
        )

    @property
    def platform(self) -> Platform:
        """The platform the config declares."""
        return Platform(self.os, self.architecture, self.variant)


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistryError(f"{where}: {key} is not a list of strings.")
    return tuple(value)


def _ports(value: Any, where: str) -> tuple[str, ...]:
    """``ExposedPorts``: an object keyed by ``PORT[/tcp|udp|sctp]`` (ASCII digits, 1-65535)."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise RegistryError(f"{where}: config.ExposedPorts is not a JSON object.")
    for key in value:
        match = _PORT.fullmatch(key)
        if match is None or not 0 < int(match.group(1)) <= 65535:
            raise RegistryError(
                f"{where}: config.ExposedPorts has {key[:40]!r}, which is not PORT/PROTOCOL "
                "(a port from 1 to 65535, and tcp, udp or sctp)."
            )
    return tuple(sorted(value))


def _load_object(data: bytes, where: str) -> dict[str, Any]:
    """Parse an untrusted JSON object within ``limits.JSON_BYTES`` and ``limits.JSON_DEPTH``."""
    try:
        doc = limits.parse_json(data, where)
    except LimitExceeded:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RegistryError(f"{where} is not a JSON object.")
    return doc


def parse_manifest(
    data: bytes, content_type: str | None, *, where: str = "manifest"
) -> ImageIndex | ImageManifest:
    """Parse manifest bytes into an index or a manifest.

    ``content_type`` is the HTTP ``Content-Type`` (parameters after ``;`` are ignored). OCI
    manifests may lack ``mediaType`` (umoci writes none), so the header decides; when both
    are present they must agree (OCI ``manifest.md``). Schema 1 and artifacts are refused.
    """
    doc = _load_object(data, where)
    header = (content_type or "").split(";", 1)[0].strip().lower()
    if header in ("application/json", "application/octet-stream", "text/plain"):
        header = ""
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise RegistryError(f"{where}: mediaType is not a string.")
    if header and body_type and header != body_type:
        raise RegistryError(
            f"{where}: the registry said {header} but the document says {body_type}."
        )
    media_type = body_type or header
    if not media_type:
        # Last resort (reference doc section 3.2): tell the kinds apart by shape.
        if "manifests" in doc:
            media_type = OCI_INDEX
        elif "config" in doc and "layers" in doc:
            media_type = OCI_MANIFEST
    version = doc.get("schemaVersion")
    if version is not None and (not _is_int(version) or version not in (1, 2)):
        raise RegistryError(f"{where}: schemaVersion is {str(version)[:20]!r}, not 2.")
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED) or version == 1:
        raise RegistryError(
            f"{where} is a Docker schema 1 manifest, which is deprecated and not supported.",
            hint="Re-push the image with a current tool (schema 2 or OCI).",
        )
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise RegistryError(f"{where}: the index has no 'manifests' list.")
        return ImageIndex(media_type, tuple(Descriptor.from_dict(e, where=where) for e in entries))
    if media_type in MANIFEST_TYPES:
        artifact = _optional_str(doc, "artifactType", where)
        if artifact:
            raise RegistryError(
                f"{where} is an OCI artifact ({artifact[:100]}), not a runnable image."
            )
        config = Descriptor.from_dict(doc.get("config"), where=where)
        if config.media_type not in CONFIG_TYPES:
            raise RegistryError(
                f"{where}: the config has media type {config.media_type!r}; "
                "this is an artifact, not a runnable image."
            )
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise RegistryError(f"{where}: the manifest has no 'layers' list.")
        return ImageManifest(
            media_type, config, tuple(Descriptor.from_dict(e, where=where) for e in layers)
        )
    raise RegistryError(f"{where} has an unknown media type {media_type[:100]!r}.")


def _variant_preference(wanted: Platform) -> list[str | None]:
    """Acceptable variants for ``wanted``, best first (containers/image platform_matcher.go)."""
    arch, variant = wanted.architecture, wanted.variant
    if arch == "arm64":
        # Images say both "arm64" and "arm64/v8"; containerd treats them as equal.
        return [variant] if variant not in (None, "v8") else ["v8", None]
    if arch == "arm":
        order = ["v8", "v7", "v6", "v5"]
        start = order.index(variant) if variant in order else 1
        return [*order[start:], None]
    if arch == "amd64":
        # v2..v4 are micro-architecture levels; only take them when asked for.
        levels = ["v4", "v3", "v2", "v1"]
        if variant in levels:
            return [*levels[levels.index(variant) :], None]
        return [None, "v1"]
    return [variant] if variant else [None]


def platform_rank(candidate: Platform | None, wanted: Platform) -> int | None:
    """How well ``candidate`` fits ``wanted``: 0 is best, ``None`` means it does not fit."""
    if candidate is None or candidate.os != wanted.os:
        return None
    if _normalise_arch(candidate.architecture) != wanted.architecture:
        return None
    preference = _variant_preference(wanted)
    try:
        return preference.index(candidate.variant)
    except ValueError:
        return None


def iter_platform_candidates(index: ImageIndex, wanted: Platform) -> Iterator[Descriptor]:
    """Descriptors of ``index`` that fit ``wanted``, best first, in index order on ties.

    Unknown media types and BuildKit attestation entries are skipped, as the OCI image-index
    spec asks. Nested indexes are yielded too; the caller fetches and recurses into them.
    """
    ranked: list[tuple[int, int, Descriptor]] = []
    for position, desc in enumerate(index.manifests):
        if desc.media_type not in INDEX_TYPES | MANIFEST_TYPES and desc.media_type:
            continue
        if desc.annotations.get("vnd.docker.reference.type") == _ATTESTATION:
            continue
        if desc.media_type in INDEX_TYPES and desc.platform is None:
            ranked.append((0, position, desc))
            continue
        rank = platform_rank(desc.platform, wanted)
        if rank is not None:
            ranked.append((rank, position, desc))
    for _, _, desc in sorted(ranked, key=lambda item: (item[0], item[1])):
        yield desc


def describe_platforms(index: ImageIndex) -> str:
    """A short list of the platforms an index offers, for error messages."""
    names = sorted(
        {
            str(d.platform)
            for d in index.manifests
            if d.platform is not None
            and d.annotations.get("vnd.docker.reference.type") != _ATTESTATION
        }
    )
    return ", ".join(names) or "none"


def check_config_platform(config: ImageConfig, wanted: Platform, *, image: str) -> None:
    """Refuse an image whose config declares another os or architecture than ``wanted``.

    For single-platform images this is the only platform information there is (reference doc
    section 3.4). A config without os/architecture is accepted.
    """
    if not config.os and not config.architecture:
        return
    if config.os != wanted.os or _normalise_arch(config.architecture) != wanted.architecture:
        raise PlatformNotFound(
            f"image {image} is for {config.platform}, not {wanted}.",
            hint="Pick an image built for that platform, or pass --platform.",
        )


def config_platform(config: ImageConfig, *, image: str) -> Platform:
    """The platform a single-platform image's config declares (amd64 when it declares none),
    when Nanos runs it: an image asked for without a platform is taken as it is, as Docker
    takes it (with a warning there)."""
    if not config.os and not config.architecture:
        return DEFAULT_PLATFORM
    found = arch.find(config.architecture)
    if config.os != "linux" or found is None or not found.nanos:
        raise PlatformNotFound(
            f"image {image} is for {config.platform}; Nanos runs linux/amd64 and linux/arm64.",
            hint="Pick an image built for one of those.",
        )
    return Platform("linux", found.value, config.variant or None)

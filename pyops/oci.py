"""OCI and Docker manifests, indexes and image configs as typed values; platform choice.

References: OCI image-spec ``manifest.md``, ``image-index.md``, ``descriptor.md``,
``config.md`` and ``media-types.md``; Docker's "Image Manifest V2, Schema 2".
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyops.errors import InvalidInput, InvalidReference, PlatformNotFound, RegistryError
from pyops.reference import check_digest

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
_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"

SUPPORTED_LAYER_TYPES = frozenset({LAYER_TAR, LAYER_GZIP, DOCKER_LAYER_GZIP})
"""Layer media types pyops can apply (plain tar and gzip)."""

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""Manifests, indexes and configs larger than this are refused before parsing."""

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
"""What Nanos runs, whatever the host is."""


def _variant(parts: list[str], index: int) -> str | None:
    return parts[index].lower() if len(parts) > index and parts[index] else None


def _normalise_arch(arch: str) -> str:
    # containerd's platforms.Normalize: common non-Go spellings.
    return {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386"}.get(arch, arch)


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
        """Validate a descriptor object taken from the JSON document ``where``."""
        if not isinstance(data, dict):
            raise RegistryError(f"{where}: a descriptor is not a JSON object.")
        media_type = data.get("mediaType", "")
        digest = data.get("digest")
        size = data.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise RegistryError(f"{where}: a descriptor lacks a digest or a media type.")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RegistryError(f"{where}: descriptor {digest} has no valid size.")
        try:
            check_digest(digest)
        except InvalidReference as exc:
            raise RegistryError(f"{where}: {exc}") from exc
        platform = None
        raw_platform = data.get("platform")
        if isinstance(raw_platform, dict):
            platform = Platform(
                str(raw_platform.get("os", "")),
                str(raw_platform.get("architecture", "")),
                str(raw_platform["variant"]) if raw_platform.get("variant") else None,
            )
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict):
            annotations = {}
        urls = data.get("urls") or []
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            platform=platform,
            annotations={str(k): str(v) for k, v in annotations.items()},
            urls=tuple(str(u) for u in urls) if isinstance(urls, list) else (),
        )


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
        """Parse an image config blob (OCI ``config.md``; the ``config`` object may be null)."""
        doc = _load_object(data, where)
        inner = doc.get("config") or {}
        if not isinstance(inner, dict):
            raise RegistryError(f"{where}: 'config' is not a JSON object.")
        rootfs = doc.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        labels = inner.get("Labels") or {}
        return cls(
            architecture=str(doc.get("architecture", "")),
            os=str(doc.get("os", "")),
            variant=str(doc["variant"]) if doc.get("variant") else None,
            env=_strings(inner.get("Env"), where, "Env"),
            entrypoint=_strings(inner.get("Entrypoint"), where, "Entrypoint"),
            cmd=_strings(inner.get("Cmd"), where, "Cmd"),
            working_dir=str(inner.get("WorkingDir") or ""),
            user=str(inner.get("User") or ""),
            exposed_ports=tuple(sorted(inner.get("ExposedPorts") or {})),
            labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
            diff_ids=_strings(diff_ids, where, "rootfs.diff_ids"),
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


def _load_object(data: bytes, where: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_SIZE:
        raise RegistryError(f"{where} is larger than {MAX_MANIFEST_SIZE} bytes; refused.")
    try:
        doc = json.loads(data)
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
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED) or doc.get("schemaVersion") == 1:
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
        if doc.get("artifactType"):
            raise RegistryError(
                f"{where} is an OCI artifact ({doc['artifactType']}), not a runnable image."
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
    raise RegistryError(f"{where} has an unknown media type {media_type!r}.")


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

"""Pulling an image into the store: manifest, platform choice, config and layers.

The recipe: resolve the reference to a single-platform manifest (recursing through indexes),
fetch and check the config, then download the layers in parallel into the content-addressed
store. Blobs already in the store cost no download.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from pyops import limits
from pyops.errors import LayerError, PlatformNotFound, RegistryError
from pyops.oci.auth import Credentials, load_docker_credentials
from pyops.oci.net import HttpClient
from pyops.oci.reference import ImageRef
from pyops.oci.registry import FetchedManifest, RegistryBlobStream, RegistryClient
from pyops.oci.schema import (
    DOCKER_FOREIGN_LAYER,
    INDEX_TYPES,
    LAYER_ZSTD,
    MAX_INDEX_DEPTH,
    SUPPORTED_LAYER_TYPES,
    Descriptor,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    Platform,
    check_config_platform,
    config_platform,
    default_platforms,
    describe_platforms,
    iter_platform_candidates,
    parse_manifest,
)
from pyops.oci.store import ArrivingBlob, Cancel, Store
from pyops.progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 3
"""Layers downloaded at once (Docker's default)."""

_POLL = 0.2
"""Seconds the main thread waits for the layer threads at a time, so that Ctrl-C, which
Python delivers to the main thread only, is seen at once."""


@dataclass
class _Visits:
    """Counts the manifests and indexes one pull fetches (``limits.MANIFESTS``)."""

    name: str
    count: int = 0

    def visit(self, reference: str) -> None:
        self.count += 1
        limits.MANIFESTS.check(self.count, f"{self.name}: the manifests and indexes to visit")


class LayerConsumer(Protocol):
    """Takes an image's layers while they download (``pull(consumer=...)``).

    :meth:`start` is called once the config is checked, before any layer; :meth:`layer` once
    per layer, in the manifest's order, in the calling thread, as soon as that layer and all
    before it are in the store (a cached layer at once), while later layers still download.
    An exception from either stops the pull and its downloads.
    """

    def start(self, config: ImageConfig, layers: Sequence[Descriptor]) -> None: ...

    def layer(self, number: int, path: Path) -> None: ...


@runtime_checkable
class StreamingLayerConsumer(LayerConsumer, Protocol):
    """A :class:`LayerConsumer` that also takes a layer while it downloads: when the layers
    before it are taken and its download has started, :meth:`layer_arriving` is called
    instead of :meth:`~LayerConsumer.layer`, with the layer's bytes as they arrive (read to
    their end, they are the whole blob, verified; a failed download raises its error in
    the reader). ``path`` is where the blob will be once it is complete.
    """

    def layer_arriving(self, number: int, path: Path, arriving: ArrivingBlob) -> None: ...


@dataclass(frozen=True, slots=True)
class PulledImage:
    """An image whose manifest, config and layers are all in the store, verified."""

    ref: ImageRef
    """The reference as asked for."""
    digest: str
    """Digest of the single-platform manifest (pin it with ``ref.with_digest(digest)``)."""
    manifest: ImageManifest
    config: ImageConfig
    platform: Platform
    """The platform pulled (the config declares the same os and architecture)."""
    config_path: Path
    layers: tuple[Path, ...]
    """Layer blobs in the store, base layer first."""


def pull(
    ref: ImageRef | str,
    *,
    store: Store | None = None,
    platform: Platform | str | None = None,
    credentials: Credentials | None = None,
    insecure: bool = False,
    progress: Progress = NULL_PROGRESS,
    http: HttpClient | None = None,
    workers: int = DEFAULT_WORKERS,
    use_docker_config: bool = True,
    consumer: LayerConsumer | None = None,
) -> PulledImage:
    """Pull ``ref`` for ``platform`` into ``store``.

    Without a platform, the image is taken as Docker on this host takes it: an index's
    entry for the host's own architecture when it has one, else its ``linux/amd64`` one
    (:func:`~pyops.oci.schema.default_platforms`); a single-platform image as it is, if
    Nanos runs it. :attr:`PulledImage.platform` says which was taken.

    Credentials are ``credentials`` if given, else those of ``~/.docker/config.json`` (unless
    ``use_docker_config`` is false), else none. A ``consumer`` takes each layer as soon as
    it is there (see :class:`LayerConsumer`): from-docker unpacks while it downloads.
    Errors name the image: ``ManifestNotFound``, ``AuthError``, ``PlatformNotFound``,
    ``DigestMismatch``, ``NetworkError``, ``LayerError``.
    """
    image = ImageRef.parse(ref) if isinstance(ref, str) else ref
    asked = Platform.parse(platform) if isinstance(platform, str) else platform
    choices = (asked,) if asked is not None else default_platforms()
    store = store or Store.default()
    if credentials is None and use_docker_config:
        credentials = load_docker_credentials(image.registry)
    client = RegistryClient(image.api_host, credentials=credentials, insecure=insecure, http=http)
    name = str(image)

    digest, manifest, chosen = _resolve_manifest(client, store, image, choices, name)
    log.info("%s: manifest %s", name, digest)
    config_desc = manifest.config
    # The config is read into memory: refuse a large one before downloading a byte of it.
    limits.JSON_BYTES.check(config_desc.size, f"{name}: the image config's declared size")
    config_path = store.ensure_blob(
        config_desc.digest,
        config_desc.size,
        lambda offset: client.open_blob(
            image.repository, config_desc.digest, offset, image=name, size=config_desc.size
        ),
        label=f"{name} config",
    )
    config = ImageConfig.from_json(config_path.read_bytes(), where=f"{name}: image config")
    if chosen is None and asked is None:
        chosen = config_platform(config, image=name)
    wanted = chosen or choices[0]
    check_config_platform(config, wanted, image=name)
    _check_layer_types(manifest, name)
    if config.diff_ids and len(config.diff_ids) != len(manifest.layers):
        raise RegistryError(
            f"{name}: the config lists {len(config.diff_ids)} layers, the manifest "
            f"{len(manifest.layers)}."
        )
    if consumer is not None:
        consumer.start(config, manifest.layers)
    layers = _download_layers(client, store, image, manifest, name, progress, workers, consumer)
    return PulledImage(image, digest, manifest, config, wanted, config_path, layers)


def _fetch(
    client: RegistryClient,
    store: Store,
    image: ImageRef,
    reference: str,
    name: str,
    visits: _Visits,
    size: int | None = None,
) -> FetchedManifest:
    """A manifest by tag or digest; by digest it comes from the store when it is there.

    Each call counts against ``limits.MANIFESTS``; ``size`` (the descriptor's) is checked
    against ``limits.JSON_BYTES`` before any download.
    """
    visits.visit(reference)
    if size is not None:
        limits.JSON_BYTES.check(size, f"{name}: manifest {reference}: its declared size")
    if ":" in reference and store.has_blob(reference, size):
        path = store.blob_path(reference)
        limits.JSON_BYTES.check(path.stat().st_size, f"{name}: manifest {reference}")
        return FetchedManifest(store.read_blob(reference), "", reference)
    fetched = client.fetch_manifest(image.repository, reference, image=name, size=size)
    store.put_blob(fetched.data, fetched.digest)
    return fetched


def _resolve_manifest(
    client: RegistryClient,
    store: Store,
    image: ImageRef,
    choices: tuple[Platform, ...],
    name: str,
) -> tuple[str, ImageManifest, Platform | None]:
    """The single-platform manifest for the first of ``choices`` the image has, and that
    platform (None for a single-platform image: its config says)."""
    visits = _Visits(name)
    fetched = _fetch(client, store, image, image.reference, name, visits)
    document = parse_manifest(fetched.data, fetched.media_type, where=f"{name}: manifest")
    if isinstance(document, ImageManifest):
        return fetched.digest, document, None
    for wanted in choices:
        found = _select(client, store, image, document, wanted, name, 1, visits)
        if found is not None:
            return found[0], found[1], wanted
    asked = " or ".join(str(p) for p in choices)
    raise PlatformNotFound(
        f"{name} has no image for {asked} (it has: {describe_platforms(document)}).",
        hint="Pick another platform with --arch or --platform, or another image.",
    )


def _select(
    client: RegistryClient,
    store: Store,
    image: ImageRef,
    index: ImageIndex,
    wanted: Platform,
    name: str,
    depth: int,
    visits: _Visits,
) -> tuple[str, ImageManifest] | None:
    """The first manifest of ``index`` (or of an index nested in it) that fits ``wanted``."""
    if depth > MAX_INDEX_DEPTH:
        raise RegistryError(f"{name}: indexes are nested more than {MAX_INDEX_DEPTH} deep.")
    for desc in iter_platform_candidates(index, wanted):
        fetched = _fetch(client, store, image, desc.digest, name, visits, desc.size)
        media_type = fetched.media_type or desc.media_type
        document = parse_manifest(fetched.data, media_type, where=f"{name}: manifest {desc.digest}")
        if isinstance(document, ImageManifest):
            return desc.digest, document
        if desc.media_type in INDEX_TYPES or isinstance(document, ImageIndex):
            found = _select(client, store, image, document, wanted, name, depth + 1, visits)
            if found is not None:
                return found
    return None


def _check_layer_types(manifest: ImageManifest, name: str) -> None:
    for number, layer in enumerate(manifest.layers, start=1):
        if layer.media_type in SUPPORTED_LAYER_TYPES:
            continue
        if layer.media_type == LAYER_ZSTD or layer.media_type.endswith("+zstd"):
            raise LayerError(
                f"{name}: layer {number} is compressed with zstd ({layer.media_type}), which "
                "pyops cannot decompress.",
                hint="Use an image with gzip layers (skopeo copy --dest-compress-format gzip).",
            )
        if layer.media_type == DOCKER_FOREIGN_LAYER or "nondistributable" in layer.media_type:
            raise LayerError(
                f"{name}: layer {number} is a foreign (non-distributable) layer "
                f"({layer.media_type}); pyops does not fetch those.",
            )
        raise LayerError(f"{name}: layer {number} has an unknown media type {layer.media_type!r}.")


def _download_layers(
    client: RegistryClient,
    store: Store,
    image: ImageRef,
    manifest: ImageManifest,
    name: str,
    progress: Progress,
    workers: int,
    consumer: LayerConsumer | None = None,
) -> tuple[Path, ...]:
    """Download the layers (each distinct digest once), ``workers`` at a time, handing each
    to ``consumer`` as soon as it and those before it are there."""
    total = len(manifest.layers)
    unique: dict[str, tuple[int, Descriptor]] = {}
    for number, layer in enumerate(manifest.layers, start=1):
        unique.setdefault(layer.digest, (number, layer))
    paths: dict[str, Path] = {}
    missing = [(n, d) for n, d in unique.values() if not store.has_blob(d.digest, d.size)]
    for _, desc in unique.values():
        if store.has_blob(desc.digest, desc.size):
            paths[desc.digest] = store.blob_path(desc.digest)

    cancel = Cancel()
    streaming = isinstance(consumer, StreamingLayerConsumer)
    arriving = {d.digest: ArrivingBlob(d.size) for _, d in missing} if streaming else {}

    def fetch(number: int, desc: Descriptor) -> Path:
        def opener(offset: int) -> RegistryBlobStream:
            return client.open_blob(
                image.repository, desc.digest, offset, image=name, size=desc.size, cancel=cancel
            )

        return store.ensure_blob(
            desc.digest,
            desc.size,
            opener,
            label=f"{name} layer {number}/{total} {desc.digest[7:19]}",
            progress=progress,
            cancel=cancel,
            arriving=arriving.get(desc.digest),
        )

    delivered = 0

    def deliver() -> None:
        # A streaming consumer takes a layer still downloading; it returns once the layer is
        # complete, while the later layers go on downloading.
        nonlocal delivered
        while delivered < total:
            digest = manifest.layers[delivered].digest
            if digest in paths:
                if consumer is not None:
                    consumer.layer(delivered + 1, paths[digest])
            elif isinstance(consumer, StreamingLayerConsumer) and digest in arriving:
                consumer.layer_arriving(delivered + 1, store.blob_path(digest), arriving[digest])
            else:
                return
            delivered += 1

    if missing:  # the downloads start before a cached layer is handed over
        _run_all(fetch, missing, paths, workers, cancel, deliver)
    deliver()
    return tuple(paths[layer.digest] for layer in manifest.layers)


def _run_all(
    fetch: Callable[[int, Descriptor], Path],
    missing: list[tuple[int, Descriptor]],
    paths: dict[str, Path],
    workers: int,
    cancel: Cancel,
    arrived: Callable[[], None],
) -> None:
    """Run ``fetch`` for each missing layer in threads; the first error or a Ctrl-C stops all.

    Each finished download goes into ``paths`` at once, and ``arrived`` is called (in this
    thread) once the downloads are started and after each round that finished one; an error
    it raises stops the downloads too.

    The main thread never blocks uninterruptibly: it polls the threads every :data:`_POLL`
    seconds. On an error or ``KeyboardInterrupt`` it sets ``cancel`` (which the threads check
    per chunk, and which wakes a read waiting on the network) and waits only for them to stop.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="pyops-layer")
    try:
        futures: dict[Future[Path], str] = {pool.submit(fetch, n, d): d.digest for n, d in missing}
        pending = set(futures)
        arrived()
        while pending:
            done, pending = wait(pending, timeout=_POLL, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    raise error
                paths[futures[future]] = future.result()
            if done:
                arrived()
    except BaseException:
        cancel.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

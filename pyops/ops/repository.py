"""Ops's package repository: its index, and packages fetched from it.

The index is Ops's ``manifest.json`` (Version 2: ``{"Version": 2, "Packages": [{"name",
"namespace", "version", "language", "description", "sha256", "arch"}, ...]}``), at
``PackageManifestURL`` (config.json) or ``OPS_PACKAGE_MANIFEST_URL`` (which wins, as in Ops's
``GetPackageList``), by default ``https://repo.ops.city/v2/manifest.json``. A copy is kept in
``packages/manifest.json``, where Ops keeps it, and used when the index cannot be reached.

A package ``NAMESPACE/NAME:VERSION`` is fetched from ``PackageBaseURL`` /
``OPS_PACKAGE_BASE_URL`` (default ``https://repo.ops.city/v2/packages``) as Ops fetches it
(``DownloadPackage``): ``<base>/<ns>/<name>/<version>.tar.gz`` (``.../<version>/arm64.tar.gz``
for arm64) over http(s), ``<base>/<ns>/<name>_<version>.tar.gz`` from a ``file://`` mirror.
Unlike Ops, which checks the SHA-256 only after unpacking some of it (and against another
server's answer), the tarball's SHA-256 is checked against the index before anything is
unpacked; it is then unpacked as an image layer is (nothing lands outside the package), into
``packages/<arch>/<ns>/<name>_<version>``, where ``pkg load`` finds it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyops import home as _home
from pyops import limits
from pyops.arch import Arch
from pyops.errors import DigestMismatch, NetworkError, PackageError, PyopsError
from pyops.progress import NULL_PROGRESS, Progress

if TYPE_CHECKING:
    from pyops.oci.net import HttpClient
    from pyops.ops.package import Package

log = logging.getLogger(__name__)

DEFAULT_MANIFEST_URL = "https://repo.ops.city/v2/manifest.json"
DEFAULT_BASE_URL = "https://repo.ops.city/v2/packages"
MANIFEST_URL_ENV = "OPS_PACKAGE_MANIFEST_URL"
BASE_URL_ENV = "OPS_PACKAGE_BASE_URL"
INDEX_FILE = "manifest.json"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


@dataclass(frozen=True, slots=True)
class RepoPackage:
    """One entry of the index."""

    namespace: str
    name: str
    version: str
    sha256: str
    arch: Arch = Arch.AMD64
    language: str = ""
    description: str = ""

    @property
    def identifier(self) -> str:
        """``NAMESPACE/NAME:VERSION``, as ``pkg get`` and ``pkg load`` take it."""
        return f"{self.namespace}/{self.name}:{self.version}"

    @property
    def folder(self) -> str:
        """Its folder below ``packages/<arch>/``: ``NAMESPACE/NAME_VERSION``."""
        return f"{self.namespace}/{self.name}_{self.version}"

    def to_dict(self) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "arch": str(self.arch),
            "language": self.language,
            "description": self.description,
            "sha256": self.sha256,
        }


def manifest_url(config_url: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Where the index is: ``OPS_PACKAGE_MANIFEST_URL``, else config.json's, else Ops's."""
    environ = os.environ if env is None else env
    return environ.get(MANIFEST_URL_ENV) or (config_url or "").strip() or DEFAULT_MANIFEST_URL


def base_url(config_url: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Where packages are: ``OPS_PACKAGE_BASE_URL``, else config.json's, else Ops's."""
    environ = os.environ if env is None else env
    return environ.get(BASE_URL_ENV) or (config_url or "").strip() or DEFAULT_BASE_URL


def index_path(home: Path | str | None = None) -> Path:
    """The kept copy of the index: ``packages/manifest.json``, as Ops keeps it."""
    return _home.root(home) / "packages" / INDEX_FILE


# --- the index -------------------------------------------------------------------------------


def load_index(
    url: str | None = None,
    *,
    home: Path | str | None = None,
    client: HttpClient | None = None,
) -> list[RepoPackage]:
    """The index, fetched from ``url`` (default: :func:`manifest_url`) and kept; the kept
    copy when the index cannot be reached (with a warning), or an error saying both."""
    url = url or manifest_url()
    cached = index_path(home)
    try:
        data = _fetch(url, client, limits.JSON_BYTES.value(), "the package index")
    except (NetworkError, OSError) as exc:
        if not cached.is_file():
            raise PackageError(
                f"the package index at {_shown(url)} cannot be reached ({exc}), and there is "
                "no copy of it here yet",
                hint=f"check the network, or set {MANIFEST_URL_ENV} to a mirror (file:// works)",
            ) from exc
        log.warning(
            "%s cannot be reached (%s); using the index kept in %s", _shown(url), exc, cached
        )
        return parse_index(cached.read_bytes(), str(cached))
    packages = parse_index(data, _shown(url))  # a bad index is refused before it is kept
    from pyops import atomic

    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(cached, data)
    return packages


def parse_index(data: bytes, where: str) -> list[RepoPackage]:
    """The entries of an index document; anything malformed is an error naming it."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError(f"{where} is not a package index (not JSON: {exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("Packages"), list):
        raise PackageError(f"{where} is not a package index (no Packages list)")
    version = document.get("Version")
    if version not in (2, None):
        raise PackageError(
            f"{where} is a version {version!r} package index; pyops reads version 2",
            hint="point OPS_PACKAGE_MANIFEST_URL at a version 2 index (Ops's v2/manifest.json)",
        )
    found = []
    for number, entry in enumerate(document["Packages"], start=1):
        if not isinstance(entry, dict):
            raise PackageError(f"{where}: package {number} is not an object")
        fields = {str(k).lower(): v for k, v in entry.items()}
        text = {k: v for k, v in fields.items() if isinstance(v, str)}
        try:
            namespace, name, pkg_version = text["namespace"], text["name"], text["version"]
        except KeyError as exc:
            raise PackageError(f"{where}: package {number} has no {exc.args[0]}") from None
        for part in (namespace, name, pkg_version):
            if not _PART.fullmatch(part):
                raise PackageError(f"{where}: package {number} has an invalid name {part!r}")
        sha = text.get("sha256", "").lower()
        if not _SHA256.fullmatch(sha):
            raise PackageError(f"{where}: package {namespace}/{name} has no valid sha256")
        from pyops import arch as _arch

        entry_arch = _arch.find(text.get("arch") or "amd64")
        if entry_arch is None or not entry_arch.nanos:
            log.info("%s: skipping %s/%s for %s", where, namespace, name, text.get("arch"))
            continue
        found.append(
            RepoPackage(
                namespace,
                name,
                pkg_version,
                sha,
                entry_arch,
                text.get("language", ""),
                text.get("description", ""),
            )
        )
    return found


def search(packages: Sequence[RepoPackage], term: str) -> list[RepoPackage]:
    """The entries whose name (or namespace/name) matches ``term``: a regular expression,
    as Ops's search takes it, case-insensitive; plain text where it is not one."""
    try:
        pattern = re.compile(term, re.IGNORECASE)
    except re.error:
        pattern = re.compile(re.escape(term), re.IGNORECASE)
    return [p for p in packages if pattern.search(f"{p.namespace}/{p.name}")]


def find(packages: Sequence[RepoPackage], identifier: str, arch: Arch) -> RepoPackage:
    """The entry ``NAMESPACE/NAME:VERSION`` (no version, or ``latest``: the newest) for
    ``arch``."""
    namespace, _, rest = identifier.rpartition("/")
    name, _, version = rest.partition(":")
    candidates = [
        p
        for p in packages
        if p.name == name and (p.namespace == namespace or not namespace) and p.arch == arch
    ]
    if version and version != "latest":
        candidates = [p for p in candidates if p.version == version]
    if not candidates:
        other = [p for p in packages if p.name == name and p.arch != arch]
        extra = f" (there is one for {other[0].arch})" if other else ""
        raise PackageError(
            f"the package index has no {identifier} for {arch}{extra}",
            hint="pyops pkg search NAME shows what there is",
        )
    from pyops.nanos.release import version_key

    return max(candidates, key=lambda p: version_key(p.version))


# --- fetching a package ----------------------------------------------------------------------


def package_url(entry: RepoPackage, base: str | None = None) -> str:
    """Where Ops fetches ``entry`` from (see the module documentation)."""
    base = (base or base_url()).rstrip("/")
    if base.startswith("file://"):
        suffix = (
            f"_{entry.version}.tar.gz"
            if entry.arch == Arch.AMD64
            else f"_{entry.version}/arm64.tar.gz"
        )
        return f"{base}/{entry.namespace}/{entry.name}{suffix}"
    tail = ".tar.gz" if entry.arch == Arch.AMD64 else "/arm64.tar.gz"
    return f"{base}/{entry.namespace}/{entry.name}/{entry.version}{tail}"


def get_package(
    identifier: str,
    *,
    arch: Arch | None = None,
    home: Path | str | None = None,
    index_url: str | None = None,
    base: str | None = None,
    client: HttpClient | None = None,
    progress: Progress = NULL_PROGRESS,
) -> Package:
    """``pkg get``: the repository package ``identifier`` for ``arch`` (default: the host's,
    else amd64), fetched and unpacked unless it is here already."""
    from pyops.ops.package import add_package, default_arch, load_package, repository_packages_dir

    wanted = arch or default_arch()
    entry = find(load_index(index_url, home=home, client=client), identifier, wanted)
    folder = repository_packages_dir(home, wanted) / entry.folder
    if (folder / "package.manifest").is_file():
        return load_package(entry.identifier, home, wanted)
    root = repository_packages_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    tarball = root / f".download-{entry.namespace}-{entry.name}_{entry.version}-{wanted}.tar.gz"
    try:
        _download(package_url(entry, base), tarball, entry, client, progress)
        folder.parent.mkdir(parents=True, exist_ok=True)
        add_package(tarball, name=folder.name, into=folder.parent)
    finally:
        tarball.unlink(missing_ok=True)
    return load_package(entry.identifier, home, wanted)


def _download(
    url: str, dest: Path, entry: RepoPackage, client: HttpClient | None, progress: Progress
) -> None:
    """``url`` into ``dest``, whose SHA-256 must be the index's, or nothing is kept."""
    import hashlib

    expected = entry.sha256
    if url.startswith("file://"):
        source = Path(url.removeprefix("file://"))
        try:
            with open(source, "rb") as src, open(dest, "wb") as copy:
                shutil.copyfileobj(src, copy, 1 << 20)
        except OSError as exc:
            dest.unlink(missing_ok=True)
            raise PackageError(
                f"{entry.identifier}: cannot read {source} ({exc.strerror})"
            ) from exc
    else:
        from pyops.oci.net import HttpClient, HttpStatusError, RangedOpener, open_ranged
        from pyops.oci.store import resume_download

        http = client or HttpClient()
        with open(dest, "w+b") as out:
            out.truncate(0)
            try:
                first, size = open_ranged(http, url)
            except HttpStatusError as exc:
                raise PackageError(
                    f"{entry.identifier}: {_shown(url)} answers HTTP {exc.status}",
                    hint=f"check {BASE_URL_ENV} (or PackageBaseURL), the mirror of the packages",
                ) from exc
            if size is None:
                first.close()
                raise PackageError(f"{_shown(url)} does not say how large the package is")
            limits.UNPACKED_BYTES.check(size, f"{entry.identifier}: its declared size")
            opener = RangedOpener(http, url, first, size)
            try:
                resume_download(
                    out,
                    dest,
                    size,
                    opener,
                    digest=f"sha256:{expected}",
                    name=f"package {entry.identifier}",
                    progress=progress,
                )
            except DigestMismatch as exc:
                dest.unlink(missing_ok=True)
                raise _tampered(entry) from exc
            except PyopsError:
                dest.unlink(missing_ok=True)
                raise
            finally:
                opener.close()
            return
    with open(dest, "rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if actual != expected:
        dest.unlink(missing_ok=True)
        raise _tampered(entry)


def _tampered(entry: RepoPackage) -> PackageError:
    return PackageError(
        f"{entry.identifier}: the tarball's SHA-256 is not the index's ({entry.sha256}); it "
        "was discarded, nothing was installed",
        hint="the mirror or the index is wrong or was tampered with",
    )


def _fetch(url: str, client: HttpClient | None, limit: int, what: str) -> bytes:
    if url.startswith("file://"):
        path = Path(url.removeprefix("file://"))
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    else:
        from pyops.oci.net import HttpClient

        http = client or HttpClient()
        with http.request("GET", url) as response:
            if response.status != 200:
                raise NetworkError(f"HTTP {response.status}")
            data = response.read(limit + 1)
    if len(data) > limit:
        raise PackageError(f"{what} at {_shown(url)} is larger than {limit} bytes")
    return data


def _shown(url: str) -> str:
    from pyops.oci.net import redact

    return redact(url)


def describe(entry: RepoPackage) -> dict[str, Any]:
    """What ``pkg describe`` shows of an index entry."""
    return {**entry.to_dict(), "identifier": entry.identifier, "url": package_url(entry)}

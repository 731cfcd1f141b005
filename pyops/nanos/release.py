"""Nanos releases (kernel, boot.img, UEFI loader, klibs) in the pyops cache.

A release is installed at ``$PYOPS_HOME/releases/<version>/`` (``PYOPS_HOME`` defaults to
``~/.pyops``) and holds ``kernel.img``, ``boot.img``, ``bootx64.efi`` and ``klibs/<name>``,
all unpacked from one release tarball, so a kernel is never paired with the boot loader or
klibs of another version (reference doc section 4.3).

Each release is for one architecture, which its kernel's ELF header states. The arm64 one
(Nanos's ``virt`` platform, ``nanos-release-linux-<version>-virt.tar.gz``) has no boot.img
and is installed beside the x86-64 one as ``releases/<version>-arm/``, the folder name Ops
gives it in ``~/.ops``.

Releases come from the official location (section 4.1), from ``PYOPS_RELEASE_URL`` when set,
or from a tarball or folder given by the user (``pyops kernel install --from``) for machines
without internet. Every installation is unpacked into a hidden temporary folder inside the
releases folder, checked, and renamed into place: a cut download or a bad tarball leaves
nothing that looks like a release.

Unlike Ops, which fetches ``latest.txt`` on every command, the latest version is cached in
``releases/latest.json`` for :data:`LATEST_TTL` seconds, and an installed version is used
without any network access.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pyops import home as _home
from pyops.arch import Arch
from pyops.errors import InvalidInput, NetworkError, PyopsError, ReleaseError
from pyops.progress import NULL_PROGRESS, Progress

if TYPE_CHECKING:
    from pyops.oci.net import HttpClient, HttpResponse

# pyops.oci.net (the HTTP stack, about 0.1 s to import) and pyops.nanos.disk (the image writer) are
# imported by the functions that download or check a release: choosing an installed release,
# all that ``pyops build`` and ``pyops run`` usually do here, needs neither.

log = logging.getLogger(__name__)

DEFAULT_RELEASE_URL = "https://storage.googleapis.com/nanos/release"
"""Where Nanos publishes ``latest.txt`` and ``<ver>/nanos-release-linux-<ver>.tar.gz``."""

RELEASE_URL_ENV = "PYOPS_RELEASE_URL"
"""Environment variable replacing :data:`DEFAULT_RELEASE_URL` (a mirror, or a test server)."""

LATEST_TTL = 6 * 3600
"""Seconds a fetched ``latest.txt`` is trusted before it is asked for again."""

INSTALL_HINT = (
    "On a machine with internet, run `pyops kernel install`; without internet, copy a release "
    "tarball (nanos-release-linux-VERSION.tar.gz) here and run "
    "`pyops kernel install --from TARBALL`."
)
ARM_SUFFIX = "-arm"
"""What an arm64 release's folder name adds to its version (as Ops names it)."""

NIGHTLY = "nightly"
"""The version name of Nanos's nightly build (``<base>/nightly/nanos-nightly-linux.tar.gz``,
installed as ``releases/nightly``, as Ops keeps it in ``~/.ops/nightly``)."""

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_TARBALL_NAME = re.compile(
    r"nanos-(?:release-linux-(?P<version>.+?)|(?P<nightly>nightly)-linux)(?P<virt>-virt)?"
    r"\.(?:tar\.gz|tgz|tar)"
)
_FOLDER_NAME = re.compile(
    r"(?:nanos-release-linux-)?(?P<version>\d+(?:\.\d+)+)(?P<arm>-arm|-virt)?"
)
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_LATEST_LIMIT = 256
_MD5_LIMIT = 4096
_CHUNK = 1 << 16


@dataclass(frozen=True)
class NanosRelease:
    """One installed Nanos release: its version, architecture and the paths of its parts."""

    version: str
    path: Path
    kernel: Path
    boot_img: Path | None
    """x86-64's boot loader; an arm64 release has none."""
    klibs: dict[str, Path] = field(default_factory=dict, hash=False)
    efi: Path | None = None
    arch: Arch = Arch.AMD64

    @classmethod
    def from_folder(cls, path: Path, version: str) -> NanosRelease:
        """Describe the release unpacked in ``path`` (no content checks beyond the kernel's
        architecture; see install)."""
        from pyops.nanos.boot import kernel_arch

        kernel = path / "kernel.img"
        boot_img = path / "boot.img"
        reinstall = f"reinstall it: pyops kernel install --force {version}"
        if not kernel.is_file():
            raise ReleaseError(
                f"Nanos release {version} at {path} has no kernel.img", hint=reinstall
            )
        _, arch = kernel_arch(kernel)
        if arch == Arch.AMD64 and not boot_img.is_file():
            raise ReleaseError(f"Nanos release {version} at {path} has no boot.img", hint=reinstall)
        klib_dir = path / "klibs"
        klibs: dict[str, Path] = {}
        if klib_dir.is_dir():
            klibs = {p.name: p for p in sorted(klib_dir.iterdir()) if p.is_file()}
        efis = sorted(p for p in path.glob("*.efi") if p.is_file())
        return cls(
            version,
            path,
            kernel,
            boot_img if arch == Arch.AMD64 else None,
            klibs,
            efis[0] if efis else None,
            arch,
        )

    @property
    def label(self) -> str:
        """How messages name it: ``0.1.55`` for x86-64, ``0.1.55 (arm64)`` for arm64."""
        return self.version if self.arch == Arch.AMD64 else f"{self.version} ({self.arch})"

    def klib(self, name: str) -> Path:
        """The path of klib ``name``; a ReleaseError names the klibs this release has."""
        try:
            return self.klibs[name]
        except KeyError:
            available = ", ".join(sorted(self.klibs)) or "none"
            raise ReleaseError(
                f"Nanos release {self.version} has no klib {name!r} (available: {available})"
            ) from None


# --- versions and paths ----------------------------------------------------------------------


def check_version(version: str) -> str:
    """Return ``version`` if it can name a release (it becomes a folder name and a URL part)."""
    if not _VERSION.fullmatch(version) or ".." in version:
        raise InvalidInput(
            f"{version!r} is not a Nanos version",
            hint="write a release number such as 0.1.55",
        )
    return version


def version_key(version: str) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """Sort key putting ``0.1.9`` before ``0.1.10``; commit hashes sort before numbered ones."""
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", version))
    numbered = 1 if version[:1].isdigit() else 0
    return numbered, parts


def releases_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """``<home>/releases``, where ``home`` defaults to the pyops cache (``PYOPS_HOME``)."""
    return _home.releases_dir(home)


def release_url(base_url: str | None = None) -> str:
    """The base URL of releases: the argument, else ``PYOPS_RELEASE_URL``, else the default."""
    return (base_url or os.environ.get(RELEASE_URL_ENV) or DEFAULT_RELEASE_URL).rstrip("/")


def tarball_name(version: str, arch: Arch = Arch.AMD64) -> str:
    """The file name of the release tarball of ``version`` for ``arch``."""
    check_arch(arch)
    virt = "-virt" if arch == Arch.ARM64 else ""
    if version == NIGHTLY:
        return f"nanos-nightly-linux{virt}.tar.gz"
    return f"nanos-release-linux-{version}{virt}.tar.gz"


def folder_name(version: str, arch: Arch = Arch.AMD64) -> str:
    """The name of the folder release ``version`` for ``arch`` is installed in."""
    check_arch(arch)
    return check_version(version) + (ARM_SUFFIX if arch == Arch.ARM64 else "")


def check_arch(arch: Arch) -> Arch:
    """``arch``, if Nanos runs on it."""
    if not arch.nanos:
        raise InvalidInput(
            f"Nanos does not run on {arch}", hint="Nanos runs on amd64 (x86-64) and arm64"
        )
    return arch


def version_from_name(path: str | os.PathLike[str]) -> str | None:
    """The version a tarball or folder name states, or None when the name says nothing."""
    return _name_facts(path)[0]


def arch_from_name(path: str | os.PathLike[str]) -> Arch | None:
    """The architecture a tarball or folder name states (``-virt`` or ``-arm``: arm64), or
    None when it says nothing (the kernel then decides)."""
    return _name_facts(path)[1]


def _name_facts(path: str | os.PathLike[str]) -> tuple[str | None, Arch | None]:
    name = os.path.basename(os.path.normpath(os.fspath(path)))
    m = _TARBALL_NAME.fullmatch(name)
    if m:
        version = NIGHTLY if m.group("nightly") else check_version(m.group("version"))
        return version, Arch.ARM64 if m.group("virt") else None
    m = _FOLDER_NAME.fullmatch(name)
    if m:
        return m.group("version"), Arch.ARM64 if m.group("arm") else None
    return None, None


# --- the installed releases ------------------------------------------------------------------


def installed_releases(
    home: str | os.PathLike[str] | None = None, arch: Arch | None = None
) -> list[NanosRelease]:
    """The releases in the cache (of ``arch``, or all), oldest first by version order (the
    newest is ``[-1]``; of two of the same version, x86-64 comes first)."""
    root = releases_dir(home)
    if not root.is_dir():
        return []
    found = []
    # In Ops's layout the releases are among the home's other folders (images, packages...).
    among_others = _home.layout(home) == _home.OPS
    for entry in root.iterdir():
        # Hidden names are installs or removals in progress; they are never releases.
        if entry.name.startswith(".") or not entry.is_dir() or not _VERSION.fullmatch(entry.name):
            continue
        if among_others and not (entry / "kernel.img").is_file():
            continue
        version = entry.name.removesuffix(ARM_SUFFIX)
        named = Arch.ARM64 if entry.name.endswith(ARM_SUFFIX) else Arch.AMD64
        try:
            release = NanosRelease.from_folder(entry, version)
        except PyopsError as exc:
            log.warning("ignoring %s: %s", entry, exc)
            continue
        if release.arch != named:
            log.warning("ignoring %s: its kernel is for %s", entry, release.arch)
        elif arch is None or release.arch == arch:
            found.append(release)
    return sorted(found, key=lambda r: (version_key(r.version), r.arch != Arch.AMD64))


def find_installed(
    version: str, home: str | os.PathLike[str] | None = None, arch: Arch = Arch.AMD64
) -> NanosRelease | None:
    """The installed release ``version`` for ``arch``, or None."""
    folder = releases_dir(home) / folder_name(version, arch)
    if not folder.is_dir():
        return None
    release = NanosRelease.from_folder(folder, version)
    if release.arch != arch:
        raise ReleaseError(
            f"{folder} holds an {release.arch} kernel, not an {arch} one",
            hint=f"reinstall it: pyops kernel install --force --arch {arch} {version}",
        )
    return release


def remove_release(
    version: str, *, home: str | os.PathLike[str] | None = None, arch: Arch = Arch.AMD64
) -> Path:
    """Delete an installed release and return the folder it was in."""
    root = releases_dir(home)
    name = folder_name(version, arch)
    folder = root / name
    if not folder.is_dir():
        raise ReleaseError(
            f"Nanos release {version} for {arch} is not installed",
            hint=_installed_hint(home, arch),
        )
    # Renamed first, so a removal cut halfway never leaves a folder that looks installed.
    doomed = Path(tempfile.mkdtemp(dir=root, prefix=f".rm-{name}-"))
    os.replace(folder, doomed / name)
    shutil.rmtree(doomed, ignore_errors=True)
    return folder


def _installed_hint(home: str | os.PathLike[str] | None, arch: Arch | None = None) -> str:
    versions = [r.label for r in installed_releases(home, arch)]
    return f"installed: {', '.join(versions)}" if versions else "no release is installed"


# --- installing from a tarball or a folder ---------------------------------------------------


def install_release_from(
    path: str | os.PathLike[str],
    *,
    version: str | None = None,
    home: str | os.PathLike[str] | None = None,
) -> NanosRelease:
    """Install a release tarball or unpacked release folder; return the installed release.

    The version comes from the name (``nanos-release-linux-VERSION.tar.gz``, or a folder named
    after it or after the bare version), or from ``version`` when the name says nothing. The
    architecture is the kernel's (a ``-virt`` name must hold an arm64 one). A release
    already installed under that version and architecture is replaced.
    """
    source = Path(path)
    named, named_arch = _name_facts(source)
    if version is not None:
        check_version(version)
        if named is not None and named != version:
            raise InvalidInput(
                f"{source.name} is release {named}, but version {version} was asked for",
                hint="leave out --version, or rename the file",
            )
    chosen = version or named
    if chosen is None:
        raise InvalidInput(
            f"cannot tell the Nanos version of {source}: its name does not say it",
            hint="give it with --version, or name the file nanos-release-linux-VERSION.tar.gz",
        )
    if source.is_dir():
        fill: Callable[[Path], None] = lambda tmp: _copy_folder(source, tmp)  # noqa: E731
    elif not source.exists():
        raise ReleaseError(f"{source}: no such file or folder")
    else:
        fill = lambda tmp: _unpack_tarball(source, tmp)  # noqa: E731
    return _install(source, chosen, home, fill, named_arch)


def _install(
    source: Path,
    version: str,
    home: str | os.PathLike[str] | None,
    fill: Callable[[Path], None],
    expected: Arch | None = None,
) -> NanosRelease:
    """Fill a temporary folder in the releases folder, check it, and rename it into place
    (its name: :func:`folder_name` of the version and the kernel's architecture, which
    must be ``expected`` when that is given)."""
    root = releases_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".install-{version}-"))
    try:
        fill(tmp)
        content = _release_root(tmp, source)
        _normalise(content)
        arch = _validate(content, source, expected)
        name = folder_name(version, arch)
        final = root / name
        if final.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside.
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".old-{name}-"))
            os.replace(final, old / name)
            os.replace(content, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(content, final)
        log.info("installed Nanos %s (%s) in %s", version, arch, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return NanosRelease.from_folder(final, version)


def _release_root(tmp: Path, source: Path) -> Path:
    """The folder holding the kernel: the top, or one folder every member is in."""
    if (tmp / "kernel.img").exists() or (tmp / "stage3.img").exists():
        return tmp
    entries = list(tmp.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        inner = entries[0]
        if (inner / "kernel.img").exists() or (inner / "stage3.img").exists():
            return inner
    raise ReleaseError(
        f"{source} is not a Nanos release: it has no kernel.img",
        hint="a release tarball holds kernel.img, boot.img and klibs/ at its root",
    )


def _normalise(folder: Path) -> None:
    """Give old releases (``stage3.img``, no ``kernel.img``) today's layout, as Ops does."""
    if not (folder / "kernel.img").exists() and (folder / "stage3.img").exists():
        os.replace(folder / "stage3.img", folder / "kernel.img")


def _validate(folder: Path, source: Path, expected: Arch | None = None) -> Arch:
    """The architecture of a release; refuses one whose kernel, boot.img or klibs are not
    what Nanos needs, or whose kernel is not for ``expected``."""
    from pyops.nanos.boot import check_kernel, kernel_arch, load_boot_image

    prefix = f"{folder}{os.sep}"
    try:
        for entry in folder.rglob("*"):
            # A link must not lead out of the release, even through other links.
            if entry.is_symlink() and not _inside(entry.resolve(), folder):
                raise ReleaseError(f"{entry} links outside the release")
        _, arch = kernel_arch(folder / "kernel.img")
        if expected is not None and arch != expected:
            raise ReleaseError(
                f"its name says {expected}, but kernel.img is an {arch.uname} kernel"
            )
        if arch == Arch.AMD64:
            if not (folder / "boot.img").exists():
                raise ReleaseError(f"{folder / 'boot.img'} is missing (x86-64 releases have one)")
            load_boot_image(folder / "boot.img")
        klibs = folder / "klibs"
        if klibs.is_dir():
            for klib in sorted(klibs.iterdir()):
                check_kernel(klib, "klib", arch)
        elif klibs.exists():
            raise ReleaseError(f"{klibs} is not a folder")
        return arch
    except PyopsError as exc:
        # The temporary folder's name means nothing to the user: speak of the parts instead.
        reason = str(exc).replace(prefix, "")
        raise ReleaseError(
            f"{source} is not a valid Nanos release: {reason}", hint=exc.hint
        ) from exc


def _inside(path: Path, root: Path) -> bool:
    return path == root.resolve() or path.is_relative_to(root.resolve())


def _copy_folder(source: Path, tmp: Path) -> None:
    """Copy an unpacked release; links are copied as links and checked in :func:`_validate`."""
    try:
        shutil.copytree(source, tmp, symlinks=True, dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:
        raise ReleaseError(f"cannot copy the release folder {source}: {exc}") from exc


def _unpack_tarball(source: Path, tmp: Path) -> None:
    """Unpack a release tarball into ``tmp``, refusing members that would land outside it.

    Absolute names, ``..`` and links leading out are refused; hard links become copies;
    device nodes and FIFOs are ignored, as Ops does. Symbolic links are made last, after every
    file has been written, so no file is ever written through a link.
    """
    links: list[tuple[Path, str]] = []
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                rel = _member_path(member.name, source)
                if rel is None:
                    continue
                target = tmp / rel
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    _write_member(tar, member, target)
                elif member.issym():
                    _check_link(rel, member.linkname, source, member.name)
                    links.append((target, member.linkname))
                elif member.islnk():
                    linked = _member_path(member.linkname, source)
                    if linked is None or not (tmp / linked).is_file():
                        raise ReleaseError(
                            f"{source}: hard link {member.name} points to "
                            f"{member.linkname!r}, which is not an earlier file of the tarball"
                        )
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(tmp / linked, target)
                else:
                    log.debug("%s: ignoring %s (not a file, folder or link)", source, member.name)
    except tarfile.ReadError as exc:
        raise ReleaseError(
            f"{source} is not a release tarball (not a readable tar archive: {exc})",
            hint="give nanos-release-linux-VERSION.tar.gz as published, or an unpacked folder",
        ) from exc
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ReleaseError(f"{source} is truncated or corrupt ({exc})") from exc
    for target, linkname in links:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent.resolve() != (tmp.resolve() / target.parent.relative_to(tmp)):
            raise ReleaseError(f"{source}: the link {target.name} would be made through a link")
        os.symlink(linkname, target)


def _member_path(name: str, source: Path) -> str | None:
    """The tar member name as a safe relative path, or None for the top folder itself."""
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise ReleaseError(f"{source}: member {name!r} has an absolute path; refused")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError(f"{source}: member {name!r} leads outside the release; refused")
    return "/".join(parts) or None


def _check_link(rel: str, linkname: str, source: Path, name: str) -> None:
    target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), linkname))
    if linkname.startswith("/") or target == ".." or target.startswith("../"):
        raise ReleaseError(
            f"{source}: member {name!r} links to {linkname!r}, outside the release; refused"
        )


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    data = tar.extractfile(member)
    if data is None:  # pragma: no cover - isfile() members always have data
        raise ReleaseError(f"cannot read {member.name} from the tarball")
    with data, open(target, "xb") as out:
        shutil.copyfileobj(data, out, _CHUNK)
    # Only the permission bits, never set-id bits from an archive.
    os.chmod(target, (member.mode & 0o755) | 0o600)


# --- downloading -----------------------------------------------------------------------------


def latest_version(
    *,
    home: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    client: HttpClient | None = None,
    ttl: float = LATEST_TTL,
    refresh: bool = False,
    fallback: bool = False,
) -> str:
    """The latest Nanos version, from ``latest.txt``, cached for ``ttl`` seconds.

    When the network fails, a cached answer of any age is used rather than failing. When
    there is such an answer, or ``fallback`` says the caller has one of its own, a failed
    request is not retried: the answer at hand beats waiting on a network that is down.
    """
    base = release_url(base_url)
    cache = releases_dir(home) / "latest.json"
    cached = _read_latest_cache(cache, base)
    if cached is not None and not refresh and 0 <= time.time() - cached[1] < ttl:
        return cached[0]
    from pyops.oci.net import HttpClient, redact

    url = f"{base}/latest.txt"
    if client is None:
        client = HttpClient(retries=0) if cached is not None or fallback else HttpClient()
    try:
        with client.request("GET", url) as response:
            if response.status != 200:
                raise NetworkError(f"{redact(url)} answered HTTP {response.status}")
            body = _decoded(response, response.read(_LATEST_LIMIT))
    except NetworkError as exc:
        if cached is not None:
            log.warning("%s; using the latest version seen before, %s", exc, cached[0])
            return cached[0]
        raise
    version = body.decode("ascii", "replace").strip()
    try:
        check_version(version)
    except InvalidInput:
        raise ReleaseError(
            f"{redact(url)} does not hold a Nanos version: {version[:40]!r}"
        ) from None
    from pyops import atomic

    record = json.dumps({"version": version, "fetched": time.time(), "url": base}).encode()
    try:
        with atomic.reporting_disk_full(cache, len(record)):
            cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(cache, record)
    except OSError as exc:  # a cache that cannot be written costs a request next time
        log.warning("cannot record the latest version in %s: %s", cache, exc)
    return version


def _read_latest_cache(cache: Path, base: str) -> tuple[str, float] | None:
    from pyops import limits
    from pyops.errors import LimitExceeded

    try:
        with cache.open("rb") as file:
            data = limits.parse_json(file.read(_LATEST_LIMIT * 16), f"{cache}")
        version, fetched, url = data["version"], float(data["fetched"]), data["url"]
    except (OSError, ValueError, KeyError, TypeError, LimitExceeded, OverflowError):
        return None
    if fetched != fetched:  # NaN
        return None
    # An answer from another mirror says nothing about this one.
    if url != base or not isinstance(version, str) or not _VERSION.fullmatch(version):
        return None
    return version, fetched


def _decoded(response: HttpResponse, body: bytes, limit: int = _MD5_LIMIT) -> bytes:
    # HttpResponse gives bytes as sent; a small text file may be served gzip-encoded. At most
    # ``limit`` bytes are decompressed: a few hundred bytes of gzip can unpack to megabytes.
    from pyops.oci.net import redact

    if response.headers.get("Content-Encoding", "").strip().lower() == "gzip":
        try:
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, limit)
        except (OSError, EOFError, zlib.error) as exc:
            raise NetworkError(f"{redact(response.url)}: bad gzip encoding ({exc})") from exc
    return body


def download_release(
    version: str,
    *,
    home: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    client: HttpClient | None = None,
    progress: Progress = NULL_PROGRESS,
    arch: Arch = Arch.AMD64,
) -> NanosRelease:
    """Download release ``version`` for ``arch`` and install it (replacing an installed copy).

    The tarball is downloaded by the blob store's download loop (hashed as it is written,
    resumed with ``Range`` after a cut, under the same deadline): into
    ``releases/.download-<version>.partial``, which a cut connection, a deadline or Ctrl-C
    leaves as the resume point of the next try, and anything else removes.
    """
    from pyops.errors import Cancelled, LimitExceeded
    from pyops.oci.net import HttpClient
    from pyops.oci.store import locked_partial

    check_version(version)
    base = release_url(base_url)
    http = client or HttpClient()
    url = f"{base}/{version}/{tarball_name(version, arch)}"
    # Nanos's release script publishes an MD5 next to each tarball; Ops ignores it. We check it
    # when it is there: it catches a truncated or corrupted download (it is no signature: it
    # comes from the same server). Old releases have none, so its absence is not an error.
    expected_md5 = _fetch_md5(http, url.removesuffix(".tar.gz") + ".md5")
    root = releases_dir(home)
    from pyops import atomic

    with atomic.reporting_disk_full(root):
        root.mkdir(parents=True, exist_ok=True)
    partial = root / f".download-{folder_name(version, arch)}.partial"
    keep = False
    try:
        with locked_partial(partial) as handle:
            try:
                _download(
                    http, url, version, handle, progress, expected_md5=expected_md5, path=partial
                )
            except (NetworkError, LimitExceeded, Cancelled, KeyboardInterrupt):
                keep = True  # a sound resume point for the next try
                raise
            return _install(
                Path(tarball_name(version, arch)),
                version,
                home,
                lambda tmp: _unpack_tarball(partial, tmp),
                arch,
            )
    finally:
        if not keep:
            partial.unlink(missing_ok=True)


def _fetch_md5(http: HttpClient, url: str) -> str | None:
    from pyops.oci.net import redact

    with http.request("GET", url) as response:
        if response.status != 200:
            log.info("%s: HTTP %d; the download will not be checked", redact(url), response.status)
            return None
        text = _decoded(response, response.read(_MD5_LIMIT)).decode("ascii", "replace")
    m = _MD5.search(text)
    if m is None:
        raise ReleaseError(f"{redact(url)} does not hold an MD5 checksum")
    return m.group(0).lower()


def _download(
    http: HttpClient,
    url: str,
    version: str,
    out: IO[bytes],
    progress: Progress,
    *,
    expected_md5: str | None = None,
    path: Path | None = None,
) -> str:
    """Complete the download of ``url`` into ``out`` (a partial file, resumed from its end).

    Goes through :func:`pyops.oci.store.resume_download`, the loop blobs use (each chunk written
    and hashed in one pass, ``Range`` resume after a cut, the request deadline); the MD5 is
    checked when ``expected_md5`` is given, the size (``Content-Length``) always. Returns the
    MD5 of the content.
    """
    from pyops.errors import DigestMismatch
    from pyops.oci.net import HttpStatusError, RangedOpener, open_ranged, redact
    from pyops.oci.store import resume_download

    have = out.seek(0, os.SEEK_END)
    try:
        first, size = open_ranged(http, url, have)
    except HttpStatusError as exc:
        if exc.status == 404:
            raise ReleaseError(
                f"there is no Nanos release {version} at {redact(url)}",
                hint="check the version (pyops kernel install with no version gets the latest)",
            ) from exc
        raise
    if size is None:
        first.close()
        raise ReleaseError(
            f"{redact(url)} does not say how large the release is (no Content-Length), so its "
            "download cannot be checked",
            hint="install from a tarball with --from",
        )

    opener = RangedOpener(http, url, first, size)
    key = f"nanos-{version}"
    progress.start(key, f"nanos {version}", size)
    name = f"the download of Nanos {version}"
    try:
        actual = resume_download(
            out,
            path or releases_dir() / f".download-{version}.partial",
            size,
            opener,
            digest=f"md5:{expected_md5}" if expected_md5 else None,
            algorithm="md5",
            name=name,
            progress=progress,
            key=key,
        )
    except DigestMismatch as exc:
        raise ReleaseError(
            f"{name} is corrupt: its MD5 is not the published one, {expected_md5}; it was "
            "discarded",
            hint="try again; if it keeps failing, install from a tarball with --from",
        ) from exc
    finally:
        progress.finish(key)
        opener.close()
    return actual.partition(":")[2]


# --- choosing a release ----------------------------------------------------------------------


def get_release(
    version: str | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: Progress = NULL_PROGRESS,
    base_url: str | None = None,
    client: HttpClient | None = None,
    arch: Arch = Arch.AMD64,
) -> NanosRelease:
    """The release for ``arch`` to build with, downloading it only when it is not installed.

    ``version=None`` means the latest release (``latest.txt``, cached) when ``download`` is
    true, falling back to the newest installed one when the network is unreachable; with
    ``download=False`` it means the newest installed release. A version that is installed is
    used without any network access.
    """
    hint = _install_hint(check_arch(arch))
    if version is not None:
        found = find_installed(version, home, arch)
        if found is not None:
            return found
        if not download:
            raise ReleaseError(
                f"Nanos release {version} for {arch} is not installed "
                f"({_installed_hint(home, arch)})",
                hint=_install_hint(arch, version),
            )
        return _download_or_explain(version, home, base_url, client, progress, arch)
    installed = installed_releases(home, arch)
    if not download:
        if installed:
            return installed[-1]
        raise ReleaseError(f"no Nanos release for {arch} is installed", hint=hint)
    try:
        latest = latest_version(
            home=home, base_url=base_url, client=client, fallback=bool(installed)
        )
    except NetworkError as exc:
        if installed:
            log.warning("%s; using Nanos %s, the newest installed", exc, installed[-1].version)
            return installed[-1]
        raise ReleaseError(
            f"no Nanos release for {arch} is installed, and the latest cannot be found: {exc}",
            hint=hint,
        ) from exc
    found = find_installed(latest, home, arch)
    if found is not None:
        return found
    return _download_or_explain(latest, home, base_url, client, progress, arch)


def _install_hint(arch: Arch, version: str | None = None) -> str:
    """:data:`INSTALL_HINT` for ``arch`` (and ``version``)."""
    command = "install" + (f" --arch {arch}" if arch != Arch.AMD64 else "")
    command += f" {version}" if version else ""
    return INSTALL_HINT.replace("install`", f"{command}`").replace(
        "nanos-release-linux-VERSION.tar.gz", tarball_name("VERSION", arch)
    )


def _download_or_explain(
    version: str,
    home: str | os.PathLike[str] | None,
    base_url: str | None,
    client: HttpClient | None,
    progress: Progress,
    arch: Arch,
) -> NanosRelease:
    try:
        return download_release(
            version, home=home, base_url=base_url, client=client, progress=progress, arch=arch
        )
    except NetworkError as exc:
        raise ReleaseError(
            f"Nanos release {version} for {arch} is not installed and cannot be downloaded: {exc}",
            hint=_install_hint(arch, version),
        ) from exc


def release_info(release: NanosRelease) -> Mapping[str, object]:
    """A JSON-ready description of ``release`` (used by ``pyops kernel list --json``)."""
    return {
        "version": release.version,
        "arch": str(release.arch),
        "path": os.fspath(release.path),
        "kernel": os.fspath(release.kernel),
        "boot_img": os.fspath(release.boot_img) if release.boot_img else None,
        "efi": os.fspath(release.efi) if release.efi else None,
        "klibs": sorted(release.klibs),
    }

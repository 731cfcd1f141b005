"""Local packages: a program and the files it needs, taken from an OCI image, in Ops's format.

A package is a folder ``PYOPS_HOME/local_packages/NAME/`` laid out as Ops lays out its own
(ops-reference.md section 5.1)::

    NAME/
    ├── package.manifest   JSON, Ops's config schema
    └── sysroot/           copied into the image root as it is

:func:`from_docker` makes one from an image: pull (cached blobs are reused), apply each layer
as soon as it is downloaded into a temporary root, find the program, resolve its closure
inside that root with the image's own environment, and keep what :mod:`pyops.ops.contents`
chooses (the closure, the run-time extras and data files, the working directory, the
interpreter's runtime, the owning system package and what its configuration names) in
``sysroot/`` at the same in-root paths, symlinks kept as symlinks. ``contents.json`` beside
the manifest records the reason for every path. ``copy=True`` keeps the whole root instead.

Where the temporary root goes is a matter of speed only; the package is the same byte for
byte either way (modes, times, hard links). Creating a file in a memory-backed folder costs
a small fraction of what it costs on a disk, so when a package keeps part of an image and
the host has a ``/dev/shm`` with room for twice the image (and as much memory available),
the root goes there and only what is kept is copied to the package store. Otherwise it is
made inside the package store, what is not kept is removed from it, and it is renamed into
``sysroot/``: nothing is written twice. Should the memory folder fill up anyway, the
unpacking starts over on disk. A host without ``/proc/meminfo`` or ``/dev/shm`` (macOS)
always unpacks on disk.

On a disk that does not tell apart names differing only in case or Unicode normalisation
(macOS's APFS by default), an image entry whose name folds onto another's is left out when
the layers are unpacked (:class:`~pyops.oci.layers.Unpacker`): the package is made all the
same when it keeps neither, and refused with :class:`~pyops.errors.CaseCollision`, naming
both, when it keeps one of them, or anything below one (``copy=True`` keeps everything).

Among the run-time extras, **not** ``/etc/resolv.conf``: in a container it is bind-mounted
by the runtime, so the copy in an image is empty or describes the machine that built it, and
the image builder writes its own from the name servers it is given (Ops: ``NameServers``).
The image's ``/etc/ld.so.cache`` is kept: a library the resolver found through it in a
directory the loader does not search by default is found the same way at run time
(registry-and-elf.md section 8.6). ``passwd`` matters: Ops writes a one-line ``passwd`` only
when the package has none, so the image's users survive.

``package.manifest`` follows Ops (section 5.2):

- ``Program`` is the program's canonical in-image path, every symlink resolved. An absolute
  ``Program`` tells Ops the file is already inside ``sysroot``, and Nanos makes
  ``/proc/self/exe`` point at exactly this path, from which glibc computes ``$ORIGIN``
  (registry-and-elf.md section 6.2), so it must not be a symlink;
- ``Args`` is the whole argv. ``argv[0]`` is the program as found (``/usr/bin/python3``, not
  ``python3.11``: multi-call programs look at it). When the image's own command line
  (``Entrypoint`` + ``Cmd``) runs the same program, its arguments follow, as ``docker run``
  would pass them; that is checked at ``argv[0]`` and, behind a wrapper entrypoint such as
  ``docker-entrypoint.sh``, at the first element of ``Cmd``;
- ``Version`` is the tag (or a short digest), ``Env`` the image's ``Env`` as a map (a later
  duplicate wins), ``Description`` names the image and its digest.

Ops decodes ``package.manifest`` strictly: one unknown top-level key makes ``ops pkg load``
fail (section 2.1). What Ops drops from the image config is therefore kept *inside* a field it
knows but does not use for packages: ``ManifestPassthrough`` (a free-form map that
``pkg load`` does not merge, section 5.2), under the single key ``pyops_image``::

    "ManifestPassthrough": {"pyops_image": {
        "Image": "...", "Digest": "sha256:...", "Platform": "linux/amd64",
        "Env": ["PATH=...", ...], "WorkingDir": "/app", "Entrypoint": [...], "Cmd": [...],
        "User": "..."}}

Only strings and lists of strings are used there, the only values Ops's manifest encoder
accepts, so a tool that did pass the map through would still write a valid (ignored) tuple.

Packages are written atomically: everything is built in a hidden folder of
``local_packages/``, on the same filesystem, and renamed into place; an existing package of
the same name is replaced only once the new one is complete. Folders left behind by a process
that died are removed by the next :func:`from_docker` or :func:`remove_package`.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyops import arch, atomic, rootfs
from pyops import home as _home
from pyops.arch import Arch
from pyops.elf.ldd import Resolver
from pyops.environ import parse_env
from pyops.errors import (
    CaseCollision,
    DiskFull,
    HostFileError,
    LibraryNotFound,
    PackageError,
    PyopsError,
)
from pyops.oci import folding, rootindex
from pyops.oci.auth import Credentials
from pyops.oci.layers import Unpacker, unpack_layers
from pyops.oci.net import HttpClient
from pyops.oci.pull import PulledImage, pull
from pyops.oci.reference import ImageRef
from pyops.oci.schema import Descriptor, ImageConfig, Platform
from pyops.oci.store import ArrivingBlob, Store
from pyops.ops.advice import Note, wrapper_note
from pyops.ops.build import CA_BUNDLES
from pyops.ops.contents import (
    CONTENTS_FILE,
    Contents,
    ImageRoot,
    Part,
    read_contents,
    select,
)
from pyops.progress import NULL_PROGRESS, Progress, step

__all__ = [
    "check_package_name",
    "MANIFEST_FILE",
    "Package",
    "default_package_name",
    "from_docker",
    "list_packages",
    "package_contents",
    "load_package",
    "packages_dir",
    "add_package",
    "from_run",
    "remove_package",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "package.manifest"
SYSROOT = "sysroot"
PYOPS_KEY = "pyops_image"
"""The key under ``ManifestPassthrough`` that holds what Ops drops from the image config."""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The PATH Docker uses when the image config sets none."""

# Files read by user and host-name lookups that a package leaves out (see the module doc).
_EXCLUDED_EXTRAS = frozenset({"/etc/resolv.conf"})

DATA_FILES = (*CA_BUNDLES, "/etc/ld.so.cache")
"""Files packaged with the closure when the image has them (see the module doc)."""

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")


@dataclass(frozen=True, slots=True)
class Package:
    """A package in the local store, as its ``package.manifest`` describes it."""

    name: str
    path: Path
    """The package folder (``sysroot/`` and ``package.manifest`` are inside)."""
    program: str
    """``Program``: an absolute path inside ``sysroot``, or Ops's ``<folder>/<exe>`` form."""
    args: tuple[str, ...] = ()
    """``Args``: the whole argv, argv[0] included."""
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    """``Env``: the environment the program runs with."""
    version: str = ""
    description: str = ""
    image: str = ""
    """The image the package was made from (empty for packages pyops did not make)."""
    digest: str = ""
    """The digest of the image's manifest for the platform packaged."""
    platform: str = ""
    working_dir: str = ""
    """The image's ``WorkingDir`` (``/`` when it has none)."""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    image_env: tuple[str, ...] = ()
    """The image's ``Env`` as ``KEY=VALUE`` strings, in order."""
    user: str = ""
    manifest: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """The whole ``package.manifest``, as read."""
    arch: Arch = Arch.AMD64
    """The architecture of its programs: the folder it is in (``local_packages/<arch>/``)."""
    notes: tuple[Note, ...] = field(default=(), hash=False, compare=False)
    """What the user should know about the package just made (:mod:`pyops.ops.advice`)."""

    @property
    def sysroot(self) -> Path:
        """The folder copied into the image root."""
        return self.path / SYSROOT

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the raw manifest)."""
        return {
            "name": self.name,
            "path": os.fspath(self.path),
            "program": self.program,
            "args": list(self.args),
            "env": dict(self.env),
            "version": self.version,
            "description": self.description,
            "image": self.image,
            "digest": self.digest,
            "platform": self.platform,
            "arch": str(self.arch),
            "working_dir": self.working_dir,
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "user": self.user,
        }


# ---------------------------------------------------------------------------------------
# Names and places


def packages_dir(home: Path | str | None = None, arch: Arch | None = None) -> Path:
    """``<home>/local_packages``, or its folder for ``arch`` (``local_packages/amd64``, as Ops
    lays it out); ``home`` defaults to ``PYOPS_HOME`` (or ``~/.pyops``)."""
    base = _home.packages_dir(home)
    return base / arch.value if arch is not None else base


PACKAGE_ARCHES = (Arch.AMD64, Arch.ARM64)
"""The architectures packages are kept for, each in its own folder."""


def default_arch() -> Arch:
    """The architecture a package name means when none is given: the host's own where Nanos
    runs on it, else amd64 (Ops's rule)."""
    host = arch.host()
    return host if host is not None and host.nanos else Arch.AMD64


def repository_packages_dir(home: Path | str | None = None, arch: Arch | None = None) -> Path:
    """``<home>/packages``, where Ops keeps the packages it fetched from its repository
    (``packages/<arch>/<namespace>/<name>_<version>``), or its folder for ``arch``."""
    base = _home.root(home) / "packages"
    return base / arch.value if arch is not None else base


def repository_package_paths(name: str) -> tuple[str, ...]:
    """The folders, below ``packages/<arch>/``, where Ops looks for repository package
    ``name`` (``NAMESPACE/NAME:VERSION``): ``NAMESPACE/NAME_VERSION``, then with a ``v``
    before the version (cmd/flags_pkg.go, PackagePath and buildAlternatePath)."""
    parts = name.split("/")
    if len(parts) > 2 or not all(parts):
        raise PackageError(
            f"{name!r} is not a package name.", hint="write NAME, or NAMESPACE/NAME:VERSION"
        )
    for part in parts:
        check_package_name(part.replace(":", "_", 1))
    slug = name.replace(":", "_")
    paths = [slug]
    if ":" in name:
        stem, version = name.rsplit(":", 1)
        paths.append(f"{stem}_v{version}")
    return tuple(paths)


def _package_folder(name: str, home: Path | str | None, wanted: Arch | None) -> Path | None:
    """Where package ``name`` is: in the folder of ``wanted``, or (when None) of
    :func:`default_arch` first, then of the others. A package an older pyops left directly
    in ``local_packages/`` counts as amd64. A name with a namespace or a version
    (``eyberg/node:20.5.0``) is one Ops fetched from its repository, in ``packages/``."""
    order = [wanted] if wanted is not None else [default_arch()]
    order += [a for a in PACKAGE_ARCHES if a not in order and wanted is None]
    if "/" in name or ":" in name:
        relative = repository_package_paths(name)
        for candidate in order:
            for path in relative:
                folder = repository_packages_dir(home, candidate) / path
                if (folder / MANIFEST_FILE).is_file():
                    return folder
        return None
    check_package_name(name)
    for candidate in order:
        folder = packages_dir(home, candidate) / name
        if folder.is_dir():
            return folder
        if candidate == Arch.AMD64 and name not in _ARCH_NAMES:
            legacy = packages_dir(home) / name
            if (legacy / MANIFEST_FILE).is_file():
                return legacy
    return None


_ARCH_NAMES = frozenset(a.value for a in Arch)


def _folder_arch(folder: Path, home: Path | str | None) -> Arch:
    """The architecture folder a package is in (amd64 for one left directly in
    ``local_packages/``)."""
    for base in (repository_packages_dir(home), packages_dir(home)):
        if folder.is_relative_to(base) and folder != base / folder.name:
            found = arch.find(folder.relative_to(base).parts[0])
            if found is not None:
                return found
    return Arch.AMD64


def check_package_name(name: str) -> str:
    """Return ``name`` if it can name a package folder; raise :class:`PackageError` if not."""
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise PackageError(
            f"{name!r} is not a valid package name.",
            hint="Use letters, digits and '.', '_', '+', '-', starting with a letter or digit.",
        )
    return name


def default_package_name(ref: ImageRef | str) -> str:
    """The repository's last component and the tag joined by ``_`` (``node:20`` → ``node_20``).

    A reference pinned by digest only gives the first 12 hex digits of the digest instead of
    the tag.
    """
    image = ImageRef.parse(ref) if isinstance(ref, str) else ref
    return f"{image.repository.rsplit('/', 1)[-1]}_{_version(image)}"


def _version(image: ImageRef) -> str:
    if image.tag is not None:
        return image.tag
    assert image.digest is not None  # ImageRef.parse gives a tag or a digest
    return image.digest.partition(":")[2][:12]


# ---------------------------------------------------------------------------------------
# Making a package from an image


def from_docker(
    ref: PulledImage | ImageRef | str,
    program: str | None = None,
    *,
    name: str | None = None,
    args: Sequence[str] = (),
    copy: bool = False,
    nodiscover: bool = False,
    closure_only: bool = False,
    store: Store | None = None,
    platform: Platform | str | None = None,
    credentials: Credentials | None = None,
    insecure: bool = False,
    progress: Progress = NULL_PROGRESS,
    http: HttpClient | None = None,
) -> Package:
    """Make the local package ``name`` from image ``ref``, running ``program``.

    ``ref`` is an image reference, pulled first (with ``platform``, ``credentials``,
    ``insecure`` and ``http``), or an image :func:`pyops.pull` already pulled into ``store``.
    Without a platform, the host's own architecture is taken when the image has it, else
    amd64 (see :func:`pyops.oci.pull.pull`). The package is for the platform pulled: it goes
    to ``local_packages/<arch>/<name>``.

    ``program`` is a name looked up on the image's ``PATH`` (from its config's ``Env``, else
    Docker's default) or a path inside the image (relative paths start at the image's
    ``WorkingDir``); symlinks are followed inside the image. Without one, the image's
    command is the program: the first word of its Entrypoint, else of its Cmd (Docker's
    rule; Ops takes Cmd only). ``args`` replace the image's arguments in the package.
    ``nodiscover`` (with ``copy`` only, as Ops's ``--nodiscover``) skips resolving the
    program's libraries: the whole root is kept anyway. The package goes to
    ``<store root>/local_packages/<name>`` (default name: :func:`default_package_name`),
    replacing a package of that name once the new one is complete. What it keeps, and why,
    is :func:`pyops.ops.contents.select`'s policy (recorded in ``contents.json``, read back
    with :func:`package_contents`); ``closure_only`` keeps only the program's closure and
    the data files, ``copy`` the whole root filesystem.

    Errors name the image: those of :func:`pyops.oci.pull.pull` (unknown image or tag, no
    manifest for ``platform``, authentication), :class:`PackageError` when the program is not
    in the image or is a script, :class:`LibraryNotFound` when a library is missing. Nothing
    is left in the package store when it fails.
    """
    if nodiscover and not copy:
        raise PackageError(
            "--nodiscover goes with --copy: without it, the libraries found are what is kept",
            hint="add --copy, or leave out --nodiscover",
        )
    store = store or Store.default()
    pulled: PulledImage | None = None
    if isinstance(ref, PulledImage):
        pulled, image = ref, ref.ref  # already pulled: the pull options do not apply
    elif isinstance(ref, str):
        image = ImageRef.parse(ref)
    else:
        image = ref
    # The name is checked before anything is downloaded.
    package_name = check_package_name(name or default_package_name(image))
    label = str(image)
    target = packages_dir(store.root)
    target.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target)
    with (
        _staging(target) as staging,
        _naming(label),
        _Unpacking(staging / "rootfs", progress, in_memory=not copy, store=store) as unpacking,
    ):
        sysroot = staging / SYSROOT
        if pulled is None:
            wanted = Platform.parse(platform) if isinstance(platform, str) else platform
            # Each layer is applied as soon as it and those before it are downloaded.
            with step(progress, f"pull and unpack {image}"):
                pulled = pull(
                    image,
                    store=store,
                    platform=wanted,
                    credentials=credentials,
                    insecure=insecure,
                    progress=progress,
                    http=http,
                    consumer=unpacking,
                )
        else:
            with step(progress, "unpack the layers"):
                unpacking.start(pulled.config, pulled.manifest.layers)
                for number, path in enumerate(pulled.layers, start=1):
                    unpacking.layer(number, path)
        root = unpacking.finish()
        with step(progress, "resolve the program's libraries"):
            found = _program_of(root, program, pulled.config, label)
            resolver = _resolver(root, pulled)
            resolution = (
                None
                if nodiscover
                else resolver.resolve(found.chain[-1], include_runtime_extras=True)
            )
        real = resolution.program.real_path if resolution is not None else found.chain[-1]
        manifest = _manifest(pulled, found, real, root, args)
        notes = _wrapper_notes(root, found, pulled.config)
        if copy:
            kept = Contents((Part("copy", "the whole root filesystem (--copy)", ()),))
            _refuse_collisions(unpacking, None, target)
            if isinstance(root, Path):
                os.rename(root, sysroot)
            elif isinstance(root, rootindex.IndexFiles):
                with step(progress, "copy the root filesystem"):
                    copy_kept(root, sysroot, root.paths())
        else:
            assert resolution is not None  # nodiscover goes with copy
            with step(progress, "keep what the program needs"):
                kept = select(
                    root,
                    resolver,
                    resolution,
                    found.chain,
                    env=_image_env(pulled.config),
                    working_dir=_working_dir(pulled.config),
                    data_files=DATA_FILES,
                    excluded_extras=_EXCLUDED_EXTRAS,
                    closure_only=closure_only,
                )
                _refuse_collisions(unpacking, kept.paths(), target)
                if isinstance(root, Path) and root.parent == staging:
                    # On the same disk: what is kept stays in place.
                    prune(root, kept.paths())
                    os.rename(root, sysroot)
                else:
                    copy_kept(root, sysroot, kept.paths())
        (staging / CONTENTS_FILE).write_text(kept.to_json() + "\n")
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        package_arch = _platform_arch(pulled.platform, label)
        folder = packages_dir(store.root, package_arch)
        folder.mkdir(exist_ok=True)
        final = _install(staging, folder / package_name)
    log.info("%s: package %s at %s", label, package_name, final)
    made = _package_from_manifest(package_name, final, manifest, package_arch)
    return dataclasses.replace(made, notes=notes)


Root = Path | rootfs.RootFiles
"""An image's root as the package policy reads it: the unpacked folder, or the image's index."""

SCRATCH_FOLDERS = ("/dev/shm",)
"""Memory-backed folders (tmpfs) where from-docker unpacks an image whose package keeps only
part of it: creating a file there costs a small fraction of what it costs on a disk, and
only what is kept is then written to the package store."""

UNPACK_ESTIMATE = 5
"""Layers unpack to about this many times their compressed size (a guess, used only to
decide whether an image fits in a scratch folder with room to spare)."""


def _root_in_memory(package_folder: Path) -> bool:
    """Whether from-docker makes the image's root in memory, its index (:class:`_Unpacking`),
    for a package written in ``package_folder``: unless that folder folds names, as the
    index holds the image's names, which such a folder cannot keep apart."""
    try:
        return not folding.folds(package_folder)
    except OSError as exc:
        raise HostFileError(f"cannot write in {package_folder}: {exc.strerror or exc}") from exc


class _Unpacking:
    """The :class:`~pyops.oci.pull.LayerConsumer` of from-docker: applies each layer as it
    arrives, checked against the config's diff_ids, and gives the image's root.

    When the config lists the layers' diff_ids, the root is made in memory, nothing written
    but each layer's uncompressed tar, kept in ``store``: the root is then the image's index
    (:mod:`pyops.oci.rootindex`), kept too, and the package is copied out of the tars. When
    ``store`` has the index of these very layers already, nothing is applied at all.

    Otherwise, or when a tar could not be kept (a full disk), or when the package store
    folds names (:mod:`pyops.oci.folding`: the index would hold names its folder cannot
    keep apart), the layers are unpacked in a folder. With ``in_memory``, that folder is a
    scratch folder in memory (:data:`SCRATCH_FOLDERS`) when the host has one with room for
    twice the image and as much memory available; should it fill up anyway, the unpacking
    starts over in ``disk_root``. Used as a context manager, which removes the scratch root
    at the end.
    """

    def __init__(
        self, disk_root: Path, progress: Progress, *, in_memory: bool, store: Store
    ) -> None:
        self.disk_root = disk_root
        self.progress = progress
        self.in_memory = in_memory
        self.store = store
        self.root = disk_root
        self.config: ImageConfig | None = None
        self.count = 0
        self.paths: list[tuple[Path, ArrivingBlob | None]] = []  # the layers applied
        self.unpacker: Unpacker | None = None
        self.index: rootindex.IndexFiles | None = None
        self._need = 0
        self._scratch: Path | None = None

    def __enter__(self) -> _Unpacking:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._scratch is not None:
            atomic.remove(self._scratch)

    def _diff_ids(self) -> list[str] | None:
        assert self.config is not None, "start() comes first"
        diff_ids = self.config.diff_ids
        return list(diff_ids) if diff_ids and len(diff_ids) == self.count else None

    def _new_unpacker(self, root: Path | None) -> Unpacker:
        """An unpacker into ``root``, or in memory (None), keeping the tars not kept yet."""
        assert self.config is not None, "start() comes first"
        diff_ids = self._diff_ids()
        keep = None
        if diff_ids is not None:
            tars = [rootindex.layer_tar_path(self.store, d) for d in diff_ids]
            keep = [None if tar.is_file() else tar for tar in tars]
        return Unpacker(
            root,
            self.count,
            diff_ids=self.config.diff_ids or None,
            progress=self.progress,
            # In memory, creating a file costs less than handing it to a thread.
            threaded=self._scratch is None,
            keep_tars=keep,
        )

    def _on_host(self) -> Unpacker:
        """An unpacker into a folder: a scratch folder in memory, or ``disk_root``."""
        self.root = self.disk_root
        if self.in_memory and self._scratch is None:
            self._scratch = scratch_folder(self._need)
        if self._scratch is not None:
            self.root = self._scratch / "rootfs"
        return self._new_unpacker(self.root)

    def start(self, config: ImageConfig, layers: Sequence[Descriptor]) -> None:
        self.config = config
        self.count = len(layers)
        self._need = UNPACK_ESTIMATE * sum(max(layer.size, 0) for layer in layers)
        diff_ids = self._diff_ids()
        if diff_ids is not None:
            self.index = rootindex.load_index(self.store, diff_ids)
            if self.index is not None:
                log.info("the root of these layers is indexed: nothing to unpack")
                return
            if _root_in_memory(self.disk_root.parent):
                self.unpacker = self._new_unpacker(None)
                return
        self.unpacker = self._on_host()

    def layer(self, number: int, path: Path) -> None:
        self.layer_arriving(number, path, None)

    def layer_arriving(self, number: int, path: Path, arriving: ArrivingBlob | None) -> None:
        """Apply layer ``number``: the blob at ``path``, or its bytes as they download."""
        if self.index is not None:
            return
        assert self.unpacker is not None, "start() comes first"
        self.paths.append((path, arriving))
        try:
            self.unpacker.apply(number, path, arriving)
        except DiskFull:
            if self._scratch is None:
                raise
            log.info("%s is full: unpacking on disk instead", self._scratch.parent)
            atomic.remove(self._scratch)
            self._scratch = None
            self.in_memory = False
            self.unpacker = self._on_host()
            for again, (earlier, still) in enumerate(self.paths, start=1):
                self.unpacker.apply(again, earlier, still)

    def finish(self) -> Root:
        """The root: the index of the layers, or the folder they were unpacked in."""
        if self.index is not None:
            return self.index
        assert self.unpacker is not None, "start() comes first"
        self.unpacker.finish()
        diff_ids = self._diff_ids()
        if self.unpacker.dest_root is None:
            assert diff_ids is not None
            self.index = rootindex.save_index(self.store, diff_ids, self.unpacker.rows())
            if self.index is not None:
                return self.index
            log.info("the layers' tars are not all kept: unpacking them in a folder")
            paths, self.paths = self.paths, []
            self.unpacker = self._on_host()
            for number, (earlier, _) in enumerate(paths, start=1):
                self.layer(number, earlier)  # all downloaded by now
            self.unpacker.finish()
        contents = self.unpacker.contents
        if contents is not None and diff_ids is not None and not self.unpacker.collisions:
            try:
                rootindex.write_index(self.store, self.root, diff_ids, contents)
            except OSError as exc:  # only the next from-docker is slower
                log.info("cannot index the root: %s", exc)
        return self.root


CASE_SENSITIVE_HINT = (
    "Put PYOPS_HOME on a case-sensitive volume. On macOS: `hdiutil create -type SPARSEBUNDLE "
    "-size 20g -fs 'Case-sensitive APFS' -volname pyops ~/pyops.sparsebundle`, "
    "`hdiutil attach ~/pyops.sparsebundle`, then run pyops with PYOPS_HOME=/Volumes/pyops/home."
)
"""How to get a host folder that holds apart the names of an image (:class:`CaseCollision`)."""


def _refuse_collisions(unpacking: _Unpacking, kept: Sequence[str] | None, target: Path) -> None:
    """Raise :class:`CaseCollision` when a path the package keeps (``kept``; None: all of
    them) is one the unpacked root could not hold as the image has it: two names of the
    image that differ only in case or Unicode normalisation are one entry in a folder that
    folds names (:class:`~pyops.oci.layers.Unpacker`), the later one left out."""
    unpacker = unpacking.unpacker
    if unpacker is None or not (collisions := unpacker.collisions):
        return
    found: tuple[str, tuple[str, str]] | None = None
    if kept is None:
        found = ("the whole root filesystem (--copy)", collisions[0])
    else:
        for path in kept:
            pair = unpacker.ambiguity(path)
            if pair is not None:
                found = (path, pair)
                break
    if found is None:
        for unpacked, left_out in collisions:
            log.info("%s is not unpacked (%s holds its name), nor kept", left_out, unpacked)
        return
    what, (unpacked, left_out) = found
    root = unpacking.root
    folder = target if root.is_relative_to(target) else root.parent
    others = len(collisions) - 1
    more = f" ({others} more such pair{'s' if others > 1 else ''} in the image)" if others else ""
    raise CaseCollision(
        f"the image has both {unpacked} and {left_out}, whose names differ only in case or "
        f"Unicode normalisation, and {folder} is on a filesystem that does not tell such "
        f"names apart, so {left_out} could not be unpacked{more}; the package keeps {what}.",
        hint=CASE_SENSITIVE_HINT,
    )


def scratch_folder(need: int) -> Path | None:
    """A new folder's path in one of :data:`SCRATCH_FOLDERS` with room for twice ``need``
    bytes, when as much memory is available too; None when there is none (not Linux, a
    small ``/dev/shm`` as in a container, too little memory)."""
    for folder in SCRATCH_FOLDERS:  # first what killed runs left, which takes memory
        try:
            for removed in atomic.sweep(folder):
                log.info("removed %s, left by a process that is gone", removed)
        except OSError:
            continue
    available = _memory_available()
    if available is None or available < 2 * need:
        return None
    for folder in SCRATCH_FOLDERS:
        try:
            room = os.statvfs(folder)
        except OSError:
            continue
        if room.f_bavail * room.f_frsize < 2 * need or not os.access(folder, os.W_OK | os.X_OK):
            continue
        scratch = atomic.temp_path(Path(folder) / "pyops-unpack")
        try:
            scratch.mkdir(mode=0o700)
        except OSError:
            continue
        return scratch
    return None


def _memory_available() -> int | None:
    """Linux's estimate of the memory available (``MemAvailable``); None where there is no
    ``/proc/meminfo`` (macOS) or it does not say."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def copy_kept(root: Root, sysroot: Path, kept: Sequence[str]) -> None:
    """Copy the in-root paths ``kept`` (sorted, none below a symlink) from ``root`` (a host
    folder, or an image's index) into the new folder ``sysroot``: files with their modes and
    times and their hard links between each other, symlinks as symlinks, folders (those on
    the way to a kept path too) with the modes and times they have in ``root``."""
    files = rootfs.HostFiles(root) if isinstance(root, (str, os.PathLike)) else root
    folders: list[tuple[str, str]] = [("/", os.fspath(sysroot))]
    os.mkdir(sysroot, 0o700)
    made = {""}
    inodes: dict[tuple[int, int], str] = {}
    with _Sources() as sources:
        for path in kept:
            relative = path.strip("/")
            if not relative:
                continue
            names = relative.split("/")
            for i in range(1, len(names) + 1):
                folder = "/".join(names[:i])
                if folder in made:
                    continue
                source = "/" + folder
                dest = os.path.join(sysroot, folder)
                st = files.lstat(source)
                if st is None:
                    raise PackageError(f"cannot keep {path}: /{folder} is not in the image.")
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(dest, 0o700)  # its own mode once filled
                    folders.append((source, dest))
                elif i < len(names):
                    raise PackageError(
                        f"cannot keep {path}: /{folder} in the image is not a folder."
                    )
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(files.readlink(source), dest)
                    os.utime(dest, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in inodes:
                        os.link(inodes[key], dest, follow_symlinks=False)
                    else:
                        sources.copy(files.window(source), dest)
                        os.chmod(dest, stat.S_IMODE(st.st_mode))
                        os.utime(dest, ns=(st.st_mtime_ns, st.st_mtime_ns))
                        if st.st_nlink > 1:
                            inodes[key] = dest
                made.add(folder)
    for source, dest in reversed(folders):  # the deepest first: a folder's time is its last
        st = files.lstat(source)
        assert st is not None  # made from it above
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        os.utime(dest, ns=(st.st_mtime_ns, st.st_mtime_ns))


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Sources:
    """Copies windows of host files (:data:`pyops.rootfs.Window`) into new files, keeping the
    sources open: an index's files all come from a few layer tars."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def __enter__(self) -> _Sources:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)

    def copy(self, window: rootfs.Window, dest: str) -> None:
        path, offset, length = window
        src = self._fds.get(path)
        if src is None:
            src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if len(self._fds) < 16:  # a host root's files are opened one by one
                self._fds[path] = src
        try:
            dst = os.open(dest, _NEW_FILE, 0o600)
            try:
                _copy_range(src, offset, length, dst, path)
            finally:
                os.close(dst)
        finally:
            if self._fds.get(path) != src:
                os.close(src)


def _copy_range(src: int, offset: int, length: int, dst: int, name: str) -> None:
    """``length`` bytes of ``src`` from ``offset`` to the start of the empty ``dst``: inside
    the kernel where it can (``copy_file_range``), else through a buffer."""
    done = 0
    fast = hasattr(os, "copy_file_range")
    while done < length:
        want = min(length - done, 1 << 30 if fast else 1 << 20)
        if fast:
            try:
                n = os.copy_file_range(src, dst, want, offset + done, done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                fast = False
                continue
        else:
            data = os.pread(src, want, offset + done)
            n = os.pwrite(dst, data, done) if data else 0
        if n == 0:
            raise PackageError(f"{name} is shorter than it was: it changed while it was copied.")
        done += n


def prune(root: Path, kept: Sequence[str]) -> None:
    """Remove from ``root`` every entry that is neither one of the in-root paths ``kept``
    nor a folder on the way to one.

    What remains is what :func:`copy_kept` would make, without writing anything: files,
    their hard links between each other, symlinks, and the layers' folder modes and times
    stay as unpacked. Removing what is not kept costs no more than removing the whole
    root would, and the kept files are never written twice. A kept folder keeps only the
    entries that are kept themselves.
    """
    keep: set[tuple[str, ...]] = set()
    on_the_way: set[tuple[str, ...]] = set()
    for path in kept:
        names = tuple(path.strip("/").split("/"))
        keep.add(names)
        for i in range(len(names)):
            on_the_way.add(names[:i])
    # An explicit stack: a hostile layer can nest folders deeper than Python recurses.
    stack: list[tuple[str, tuple[str, ...]]] = [(os.fspath(root), ())]
    while stack:
        folder, parts = stack.pop()
        with os.scandir(folder) as entries:
            listing = list(entries)
        doomed = []
        for entry in listing:
            here = (*parts, entry.name)
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir and (here in on_the_way or here in keep):
                stack.append((entry.path, here))
            elif here not in keep:
                doomed.append((entry.path, is_dir))
        if doomed:
            times = os.lstat(folder)
            with _writable(folder):
                for path, is_dir in doomed:
                    if is_dir:
                        atomic.remove(path)
                    else:
                        os.unlink(path)
            # The folder's time stays the layer's (removing entries changes it).
            os.utime(folder, ns=(times.st_atime_ns, times.st_mtime_ns))


@contextmanager
def _writable(folder: str) -> Iterator[None]:
    """``folder`` writable by its owner while the block runs (a layer's folder of mode
    0555 blocks removing its entries when not root), its mode as it was afterwards."""
    mode = stat.S_IMODE(os.lstat(folder).st_mode)
    if mode & stat.S_IRWXU == stat.S_IRWXU:
        yield
        return
    os.chmod(folder, mode | stat.S_IRWXU)
    try:
        yield
    finally:
        os.chmod(folder, mode)


def _wrapper_notes(root: Root, found: _Found, config: ImageConfig) -> tuple[Note, ...]:
    """A note when the image's entrypoint is a script that the package skips."""
    if not config.entrypoint:
        return ()
    entry, _ = _lookup(root, config.entrypoint[0], config)
    if entry is None or entry.chain[-1] == found.chain[-1]:
        return ()
    if ImageRoot(root).head(entry.chain[-1], 2) != b"#!":
        return ()
    return (wrapper_note(config.entrypoint, found.given),)


@dataclass(frozen=True, slots=True)
class _Found:
    given: str
    """The path the program was found at (argv[0]), before resolving symlinks."""
    chain: tuple[str, ...]
    """Symlinks passed, then the canonical path."""


def _image_env(config: ImageConfig) -> dict[str, str]:
    """The config's ``Env`` as a map: split at the first ``=``, a later duplicate wins."""
    return parse_env(config.env, source="the image's Env", strict=False)


def _working_dir(config: ImageConfig) -> str:
    cwd = config.working_dir or "/"
    return cwd if cwd.startswith("/") else "/" + cwd


def _executable(root: Root, path: str) -> tuple[str, ...] | None:
    """The chain of ``path`` inside ``root`` (:meth:`ImageRoot.chain`), if it is an
    executable regular file."""
    image = ImageRoot(root)
    chain = image.chain(path)
    if chain is None:
        return None
    mode = image.mode(chain[-1])
    if not stat.S_ISREG(mode) or not mode & 0o111:
        return None
    return chain


def _lookup(root: Root, program: str, config: ImageConfig) -> tuple[_Found | None, list[str]]:
    """Find ``program`` the way ``execvp`` in the image would; also the PATH dirs tried."""
    cwd = _working_dir(config)
    if "/" in program:
        path = program if program.startswith("/") else f"{cwd.rstrip('/')}/{program}"
        chain = _executable(root, path)
        return (_Found(program, chain) if chain else None), []
    searched: list[str] = []
    for directory in (_image_env(config).get("PATH") or DEFAULT_PATH).split(":"):
        # An empty PATH element means the working directory (POSIX execvp).
        base = directory if directory.startswith("/") else f"{cwd.rstrip('/')}/{directory}"
        base = base.rstrip("/") or ""
        searched.append(directory or ".")
        candidate = f"{base}/{program}"
        chain = _executable(root, candidate)
        if chain is not None:
            return _Found(candidate, chain), searched
    return None, searched


def _program_of(root: Root, program: str | None, config: ImageConfig, label: str) -> _Found:
    """The program given, else the image's command's (Entrypoint, else Cmd)."""
    if program is not None:
        return _find_program(root, program, config, label)
    command = [*config.entrypoint, *config.cmd]
    if not command:
        raise PackageError(
            f"{label} has no Entrypoint or Cmd, so it names no program.",
            hint="Give the program with -f (a name on the image's PATH, or its path).",
        )
    try:
        return _find_program(root, command[0], config, label)
    except PackageError as exc:
        raise PackageError(
            f"{exc} (It is the image's {'Entrypoint' if config.entrypoint else 'Cmd'}.)",
            hint=(exc.hint + " " if exc.hint else "") + "Or give the program with -f.",
        ) from exc


def _find_program(root: Root, program: str, config: ImageConfig, label: str) -> _Found:
    found, searched = _lookup(root, program, config)
    if found is None:
        if searched:
            raise PackageError(
                f"{label}: no program {program!r} on the image's PATH "
                f"(searched: {', '.join(searched)}).",
                hint="Give the program's absolute path in the image, or check its name "
                "(pyops pull IMAGE --extract DIR shows the files).",
            )
        raise PackageError(
            f"{label}: {program} is not an executable file in the image.",
            hint="Check the path (pyops pull IMAGE --extract DIR shows the files).",
        )
    head = ImageRoot(root).head(found.chain[-1], 256)
    if head.startswith(b"#!"):
        # Nanos runs one ELF program and cannot run scripts (registry-and-elf.md section 6.2).
        interpreter = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        raise PackageError(
            f"{label}: {found.given} is a script (#!{interpreter}), not a program.",
            hint=f"Package its interpreter instead (-f {interpreter.split(' ')[0]}) and pass "
            "the script as an argument, or pick the program the script starts.",
        )
    return found


def _platform_arch(platform: Platform, label: str) -> Arch:
    found = arch.find(platform.architecture)
    if found is None or not found.nanos:
        raise PackageError(
            f"{label} is for {platform}; Nanos runs amd64 and arm64 programs only.",
            hint="pick the image's linux/amd64 or linux/arm64 variant with --arch",
        )
    return found


def _machine(platform: Platform) -> str | None:
    # An architecture pyops has no name for: skip the check.
    found = arch.find(platform.architecture)
    return found.elf_machine if found is not None else None


def _resolver(root: Root, pulled: PulledImage) -> Resolver:
    """A resolver inside ``root`` with the image's env (never the host's)."""
    return Resolver(
        root,
        env=_image_env(pulled.config),
        machine=_machine(pulled.platform),
        cwd=_working_dir(pulled.config),
    )


@contextmanager
def _naming(label: str) -> Iterator[None]:
    """Put the image's name in front of errors that do not say which image they are about."""
    prefix = f"{label}: "
    try:
        yield
    except LibraryNotFound as exc:
        if exc.message.startswith(prefix):
            raise
        raise LibraryNotFound(
            prefix + exc.message,
            library=exc.library,
            needed_by=exc.needed_by,
            searched=exc.searched,
            hint=exc.hint,
        ) from exc
    except PyopsError as exc:
        if exc.message.startswith(prefix):
            raise
        raise type(exc)(prefix + exc.message, hint=exc.hint) from exc


def _default_args(root: Root, found: _Found, config: ImageConfig) -> list[str]:
    """argv: the program as found, then the image's arguments if its command runs it too."""
    argv = [*config.entrypoint, *config.cmd]
    starts = [0]
    if config.entrypoint and config.cmd:
        starts.append(len(config.entrypoint))  # behind a wrapper entrypoint
    for start in starts:
        if start >= len(argv):
            continue
        other, _ = _lookup(root, argv[start], config)
        if other is not None and other.chain[-1] == found.chain[-1]:
            return [found.given, *argv[start + 1 :]]
    return [found.given]


def _manifest(
    pulled: PulledImage, found: _Found, program: str, root: Root, args: Sequence[str] = ()
) -> dict[str, Any]:
    config = pulled.config
    digest_ref = f"{pulled.ref.registry}/{pulled.ref.repository}@{pulled.digest}"
    return {
        "Program": program,
        "Args": [found.given, *args] if args else _default_args(root, found, config),
        "Version": _version(pulled.ref),
        "Env": _image_env(config),
        "Description": f"made by pyops pkg from-docker from {digest_ref}",
        "ManifestPassthrough": {
            PYOPS_KEY: {
                "Image": str(pulled.ref),
                "Digest": pulled.digest,
                "Platform": str(pulled.platform),
                "Env": list(config.env),
                "WorkingDir": _working_dir(config),
                "Entrypoint": list(config.entrypoint),
                "Cmd": list(config.cmd),
                "User": config.user,
            }
        },
    }


# ---------------------------------------------------------------------------------------
# The package store on disk


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A hidden folder in ``target`` that is removed unless it was renamed away (the
    temporaries policy of :mod:`pyops.atomic`)."""
    staging = atomic.temp_path(target / "package")
    staging.mkdir()
    try:
        yield staging
    finally:
        if os.path.lexists(staging):
            atomic.remove(staging)


def _install(staging: Path, final: Path) -> Path:
    """Rename the complete package into place, replacing an older one only now."""
    if not os.path.lexists(final):
        os.rename(staging, final)
        return final
    old = atomic.temp_path(final)
    os.rename(final, old)
    try:
        os.rename(staging, final)
    except OSError:
        os.rename(old, final)
        raise
    atomic.remove(old)
    return final


def _sweep_stale(target: Path) -> None:
    """Remove staging and old folders whose process is gone (a crash or a kill -9)."""
    for removed in atomic.sweep(target):
        log.info("removed %s, left by a process that is gone", removed)


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()


def _package_from_manifest(
    name: str, path: Path, manifest: Mapping[str, Any], package_arch: Arch = Arch.AMD64
) -> Package:
    # Go's JSON decoder matches keys case-insensitively, so Ops packages may spell them
    # differently ("program", "args"): look them up the same way.
    fields = {str(k).lower(): v for k, v in manifest.items()}
    passthrough = fields.get("manifestpassthrough")
    extra = passthrough.get(PYOPS_KEY) if isinstance(passthrough, dict) else None
    meta: dict[str, Any] = extra if isinstance(extra, dict) else {}
    env = fields.get("env")
    return Package(
        name=name,
        path=path,
        program=str(fields.get("program") or ""),
        args=_strings(fields.get("args")),
        env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
        version=str(fields.get("version") or ""),
        description=str(fields.get("description") or ""),
        image=str(meta.get("Image") or ""),
        digest=str(meta.get("Digest") or ""),
        platform=str(meta.get("Platform") or ""),
        working_dir=str(meta.get("WorkingDir") or ""),
        entrypoint=_strings(meta.get("Entrypoint")),
        cmd=_strings(meta.get("Cmd")),
        image_env=_strings(meta.get("Env")),
        user=str(meta.get("User") or ""),
        manifest=dict(manifest),
        arch=package_arch,
    )


def _read_manifest(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise PackageError(f"package {name} has no {MANIFEST_FILE} ({path}).") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path / MANIFEST_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PackageError(f"{path / MANIFEST_FILE} is not a JSON object.")
    return data


def load_package(name: str, home: Path | str | None = None, arch: Arch | None = None) -> Package:
    """The local package ``name`` for ``arch`` (default: :func:`default_arch`'s, else the
    only one there is), or the repository package ``NAMESPACE/NAME:VERSION`` Ops fetched;
    :class:`PackageError` when there is none."""
    path = _package_folder(name, home, arch)
    for_arch = f" for {arch}" if arch is not None else ""
    if path is None and ("/" in name or ":" in name):
        raise PackageError(
            f"there is no package {name!r}{for_arch} (in {repository_packages_dir(home, arch)}).",
            hint="fetch it: pyops pkg get NAMESPACE/NAME:VERSION (pyops pkg list shows them)",
        )
    if path is None:
        raise PackageError(
            f"there is no local package {name!r}{for_arch} (in {packages_dir(home, arch)}).",
            hint="pyops pkg list -l shows the packages there are.",
        )
    found_arch = _folder_arch(path, home)
    return _package_from_manifest(path.name, path, _read_manifest(path, name), found_arch)


def package_contents(package: Package) -> Contents | None:
    """What ``package``'s sysroot holds and why (:mod:`pyops.ops.contents`); None for a
    package without the record (one made by Ops or by an older pyops)."""
    return read_contents(package.path / CONTENTS_FILE)


def list_packages(home: Path | str | None = None) -> list[Package]:
    """Every local package, sorted by name; folders without a readable manifest are skipped."""
    base = packages_dir(home)
    if not base.is_dir():
        return []
    folders = [(entry, Arch.AMD64) for entry in base.iterdir() if entry.name not in _ARCH_NAMES]
    for package_arch in PACKAGE_ARCHES:
        if packages_dir(home, package_arch).is_dir():
            folders += [(e, package_arch) for e in packages_dir(home, package_arch).iterdir()]
    found: list[Package] = []
    for entry, package_arch in sorted(folders, key=lambda f: (f[0].name, f[1].value)):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            manifest = _read_manifest(entry, entry.name)
            found.append(_package_from_manifest(entry.name, entry, manifest, package_arch))
        except PackageError as exc:
            log.warning("skipping %s: %s", entry, exc)
    return found


def add_package(
    source: str | os.PathLike[str],
    *,
    name: str | None = None,
    arch: Arch | None = None,
    home: Path | str | None = None,
    into: Path | None = None,
) -> Package:
    """``pkg add``: a package folder, or a ``.tar.gz`` of one, into ``local_packages/<arch>/``
    (or the folder ``into``)
    (``arch``: default :func:`default_arch`, as Ops's), named ``name`` (default: the folder's
    or the archive's name; Ops picks a random one). Its ``package.manifest`` may be at the
    top or in the archive's one folder. The archive is unpacked as an image layer is, so
    nothing in it can land outside the package; a package of that name is replaced only
    once the new one is complete."""
    origin = Path(source)
    archive = origin.name.endswith((".tar.gz", ".tgz"))
    if not origin.is_dir() and not (archive and origin.is_file()):
        raise PackageError(
            f"{origin} is neither a package folder nor a .tar.gz of one.",
            hint="give the folder holding package.manifest, or its .tar.gz",
        )
    stem = origin.name.removesuffix(".tar.gz").removesuffix(".tgz")
    package_name = check_package_name(name or stem)
    target = into if into is not None else packages_dir(home, arch or default_arch())
    if not archive and target.absolute().is_relative_to(origin.absolute()):
        raise PackageError(
            f"{origin} holds the package store ({target}) itself.",
            hint="give the folder of one package",
        )
    target.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target)
    with _staging(target) as staging:
        content = staging / "content"
        if archive:
            unpack_layers([origin], content)
        else:
            try:
                shutil.copytree(origin, content, symlinks=True)
            except (shutil.Error, OSError) as exc:
                raise PackageError(f"cannot copy {origin}: {exc}") from exc
        top = content
        if not (top / MANIFEST_FILE).is_file():
            inner = [p for p in top.iterdir() if not p.name.startswith(".")]
            if len(inner) == 1 and inner[0].is_dir() and not inner[0].is_symlink():
                top = inner[0]
        if not (top / MANIFEST_FILE).is_file():
            raise PackageError(f"{origin} holds no {MANIFEST_FILE}: it is not a package.")
        manifest = _read_manifest(top, package_name)
        final = _install(top, target / package_name)
    return _package_from_manifest(package_name, final, manifest, _folder_arch(final, home))


def from_run(
    program: str,
    *,
    name: str | None = None,
    version: str = "latest",
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    home: Path | str | None = None,
) -> Package:
    """``pkg from-run``: a package of a host program and its closure, laid out as Ops's
    ``CreatePackageFromRun`` lays it out: ``local_packages/<arch>/NAME_VERSION/`` with the
    program beside ``sysroot/`` (``Program: NAME_VERSION/<exe>``) and its loader and
    libraries in ``sysroot/`` at their paths. The architecture is the program's."""
    from pyops.elf.ldd import resolve
    from pyops.nanos.tree import File, HostFile, Symlink
    from pyops.ops.build import closure_tree, program_arch

    host_program = os.path.abspath(program)
    if not os.path.isfile(host_program):
        raise PackageError(f"{program}: no such program", hint="give the program's path")
    resolution = resolve(host_program, include_runtime_extras=True)
    package_arch = program_arch(resolution)
    exe = os.path.basename(host_program)
    folder_name = check_package_name(f"{name or exe}_{version}")
    tree = closure_tree(resolution, data=False)
    target = packages_dir(home, package_arch)
    target.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target)
    with _staging(target) as staging:
        sysroot = staging / SYSROOT
        sysroot.mkdir()
        shutil.copy2(host_program, staging / exe)
        for path, node in tree.walk():
            if path in ("/", resolution.program.path, resolution.program.real_path):
                continue
            dest = sysroot / path.lstrip("/")
            if isinstance(node, Symlink):
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(node.target, dest)
            elif isinstance(node, File) and isinstance(node.source, HostFile):
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(node.source.path, dest)
            elif not isinstance(node, File):
                dest.mkdir(parents=True, exist_ok=True)
        manifest = {
            "Program": f"{folder_name}/{exe}",
            "Args": [exe, *args],
            "Version": version,
            "Env": dict(env or {}),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        final = _install(staging, target / folder_name)
    return _package_from_manifest(folder_name, final, manifest, package_arch)


def remove_package(name: str, home: Path | str | None = None, arch: Arch | None = None) -> Path:
    """Remove the local package ``name`` and return the path it had.

    The folder is first renamed to a hidden name, so a half-removed package is never seen
    under its own name.
    """
    path = _package_folder(name, home, arch)
    if path is None:
        raise PackageError(
            f"there is no local package {name!r}"
            + (f" for {arch}" if arch is not None else "")
            + f" (in {packages_dir(home, arch)}).",
            hint="pyops pkg list -l shows the packages there are.",
        )
    _sweep_stale(path.parent)
    doomed = atomic.temp_path(path)
    os.rename(path, doomed)
    atomic.remove(doomed)
    return path

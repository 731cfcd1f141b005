"""Finding what a package lacks by booting it: ``pyops pkg probe`` and ``from-docker --probe``.

A program's ELF closure says nothing of the configuration, data and folders it opens at run
time. Nanos can tell: with the root key ``missing_files`` it lists, when it shuts down, the
files the program tried to open and did not find (their last path component only:
``src/unix/syscall.c`` keeps the basename). A probe boots the package that way, presses the
power button after a while (so that a server that is still running shuts down and the list
is printed), and adds to the package every file of the image that answers a name on the
list, and every path the program names in its messages (``open() "/etc/nginx/mime.types"
failed``) that the image has, or whose folder it has. It repeats until a round finds nothing
new, up to a number of rounds.

The image's files come from the image the package was made from, unpacked again from the
blobs in the store (by digest, without the network when they are all there). Files are added
to the package with hard links from that unpacked copy, each one complete or absent, and the
package's ``contents.json`` records them as the part ``probe``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyops import atomic
from pyops.arch import Arch
from pyops.errors import PackageError
from pyops.oci.layers import unpack_layers
from pyops.oci.pull import pull
from pyops.oci.reference import ImageRef
from pyops.oci.store import Store
from pyops.ops.advice import missing_files, program_output
from pyops.ops.config import OpsConfig
from pyops.ops.contents import (
    CONTENTS_FILE,
    Contents,
    ImageRoot,
    Part,
    is_documentation,
    keep_named,
    named_in_image,
    named_paths,
    read_contents,
)
from pyops.progress import NULL_PROGRESS, Progress, step

if TYPE_CHECKING:
    from pyops.ops.package import Package

__all__ = ["ProbeResult", "probe_package"]

log = logging.getLogger(__name__)

ROUND_SECONDS = 15.0
"""How long one probing boot runs before the power button is pressed."""

ROUNDS = 8
"""Boots at most."""

MAX_CANDIDATES = 8
"""A missing name that more files of the image answer than this is too vague to add."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What probing added to a package."""

    added: tuple[str, ...]
    """In-image paths added, in the order found."""
    rounds: int
    """Boots done."""
    settled: bool
    """Whether the last boot found nothing new (False: the rounds ran out)."""
    unresolved: tuple[str, ...]
    """Missing names the image has no file for (or too many)."""


BootHook = Callable[[int], str]
"""Boots the package once (round number from 1) with ``missing_files`` and returns the
console."""


def probe_package(
    ops: OpsConfig,
    name: str,
    args: tuple[str, ...] = (),
    *,
    seconds: float = ROUND_SECONDS,
    rounds: int = ROUNDS,
    store: Store | None = None,
    progress: Progress = NULL_PROGRESS,
    boot: BootHook | None = None,
    arch: Arch | None = None,
    nanos_version: str | None = None,
) -> ProbeResult:
    """Boot local package ``name`` (with ``args``, else its own) until it finds no more
    missing files in its image, adding them to the package; see the module doc.

    ``boot`` replaces the real boot (for tests); by default each round builds the image
    with config.json ``ops`` and runs it for ``seconds``. ``arch`` picks the package's
    architecture, as for :func:`~pyops.ops.package.load_package`.
    """
    from pyops.ops.package import load_package

    package = load_package(name, arch=arch)
    if not package.image or not package.digest:
        raise PackageError(
            f"package {name} does not say which image it was made from, so there is nothing "
            "to take missing files from.",
            hint="make it with pyops pkg from-docker",
        )
    store = store or Store.default()
    boot = boot or _real_boot(ops, name, args, seconds, progress, package.arch, nanos_version)
    with _unpacked(package, store, progress) as root:
        image = ImageRoot(root)
        index = _Index(root)
        added: list[str] = []
        unresolved: list[str] = []
        settled = False
        done = 0
        for number in range(1, rounds + 1):
            done = number
            with step(progress, f"probe: boot {number}"):
                console = boot(number)
            wanted, unresolved = _wanted(image, index, console)
            sysroot = package.sysroot
            new = [(p, w) for p, w in wanted if not os.path.lexists(_inside(sysroot, p))]
            if not new:
                settled = True
                break
            paths = _with_trees(image, new)
            _link_into(root, sysroot, paths)
            added += [p for p in paths if p not in added]
            _record(package.path, added)
            log.info("probe round %d added %s", number, ", ".join(p for p, _ in new))
    return ProbeResult(tuple(added), done, settled, tuple(unresolved))


def _inside(sysroot: Path, path: str) -> str:
    return os.path.join(sysroot, path.lstrip("/"))


def _real_boot(
    ops: OpsConfig,
    name: str,
    args: tuple[str, ...],
    seconds: float,
    progress: Progress,
    arch: Arch,
    nanos_version: str | None = None,
) -> BootHook:
    def boot(number: int) -> str:
        from pyops.ops.images import fresh_run_copy
        from pyops.ops.recipes import BuildFlags, RunFlags, build_package, vm_config
        from pyops.vm.qemu import Console, Host, run_vm

        flags = BuildFlags(args=args, missing_files=True, arch=arch, nanos_version=nanos_version)
        built = build_package(ops, name, flags, progress=progress)
        host = Host.detect()
        disk = fresh_run_copy(built.path)
        console = Console()
        quiet = os.open(os.devnull, os.O_WRONLY)
        try:
            run_vm(
                disk,
                vm_config(ops, RunFlags(), host, arch),
                host=host,
                stdout=quiet,
                console=console,
                power_off_after=seconds,
                timeout=seconds + 60,
            )
        finally:
            os.close(quiet)
        return console.text()

    return boot


@contextmanager
def _unpacked(package: Package, store: Store, progress: Progress) -> Iterator[Path]:
    """The image the package was made from, unpacked in a temporary folder of the package
    store (removed afterwards)."""
    ref = ImageRef.parse(package.image).with_digest(package.digest)
    with step(progress, f"unpack {package.image}"):
        pulled = pull(ref, store=store, platform=package.platform or f"linux/{package.arch}")
    tmp = atomic.temp_path(package.path.parent / f"{package.name}-probe")
    tmp.mkdir()
    try:
        root = tmp / "rootfs"
        unpack_layers(pulled.layers, root, diff_ids=pulled.config.diff_ids or None)
        yield root
    finally:
        atomic.remove(tmp)


class _Index:
    """The image's paths by last component, built on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._names: dict[str, list[str]] | None = None

    def __getitem__(self, name: str) -> list[str]:
        if self._names is None:
            self._names = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                inside = "/" + os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                inside = "/" if inside == "/." else inside
                for entry in [*dirnames, *filenames]:
                    path = f"{inside.rstrip('/')}/{entry}"
                    self._names.setdefault(entry, []).append(path)
        return self._names.get(name, [])


def _wanted(
    image: ImageRoot, index: _Index, console: str
) -> tuple[list[tuple[str, bool]], list[str]]:
    """Paths of the image that the run missed (each with whether what is in it comes
    too: :func:`pyops.ops.contents.named_in_image`), and the names nothing answered."""
    wanted: list[tuple[str, bool]] = []
    unresolved: list[str] = []
    for name in missing_files(console) or []:
        if not name or "/" in name:
            continue
        candidates = [p for p in index[name] if not is_documentation(p)]
        if candidates and len(candidates) <= MAX_CANDIDATES:
            wanted += [(p, True) for p in candidates]
        else:
            unresolved.append(name)
    # Paths the program names in its own messages: the file, or the folder it goes in.
    for path in named_paths(program_output(console)):
        found = named_in_image(image, path)
        if found is not None:
            wanted.append(found)
    return list(dict.fromkeys(wanted)), unresolved


def _with_trees(image: ImageRoot, wanted: list[tuple[str, bool]]) -> list[str]:
    """What keeping each path takes (:func:`pyops.ops.contents.keep_named`)."""
    out: list[str] = []
    for path, whole in wanted:
        out += keep_named(image, path, whole)
    return list(dict.fromkeys(out))


def _link_into(root: Path, sysroot: Path, paths: list[str]) -> None:
    """Add ``paths`` of the unpacked image to the package, each complete or absent."""
    for path in sorted(paths):
        source = _inside(root, path)
        dest = _inside(sysroot, path)
        if os.path.lexists(dest):
            continue
        st = os.lstat(source)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if stat.S_ISDIR(st.st_mode):
            os.makedirs(dest, exist_ok=True)
        elif stat.S_ISLNK(st.st_mode):
            with atomic.atomic_path(Path(dest)) as tmp:
                os.symlink(os.readlink(source), tmp)
        else:
            with atomic.atomic_path(Path(dest)) as tmp:
                os.link(source, tmp, follow_symlinks=False)


def _record(package_path: Path, added: list[str]) -> None:
    """Rewrite ``contents.json`` with the probe's part."""
    contents = read_contents(package_path / CONTENTS_FILE) or Contents(())
    kept = tuple(p for p in contents.parts if p.kind != "probe")
    updated = Contents(kept).adding(
        Part("probe", "found by probing (pyops pkg probe)", tuple(added))
    )
    atomic.write_bytes(package_path / CONTENTS_FILE, (updated.to_json() + "\n").encode())

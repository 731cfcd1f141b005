"""What a package made from an image keeps, and why: the content policy of ``from-docker``.

A program needs more at run time than its ELF closure. This module is the one place that
decides what else comes from the image, and it records the reason for every path, so that
``pyops pkg contents`` can say why a file is there. The parts, in order (a path belongs to
the first part that names it):

1. ``program``: the program, every symlink on the way to it, and its ELF closure
   (interpreter and libraries, :mod:`pyops.elf.ldd`);
2. ``extras``: what glibc dlopens (``libgcc_s.so.1``, the NSS modules ``nsswitch.conf``
   names) and the files user and host lookups read (``passwd``, ``group``,
   ``nsswitch.conf``...), never the image's ``/etc/resolv.conf`` (the image builder writes
   it from the name servers it is given);
3. ``data``: the CA bundle at every place TLS libraries look for one, and
   ``/etc/ld.so.cache``;
4. ``workdir``: the image's ``WorkingDir`` tree (the application's own files), unless it is
   a system folder such as ``/`` or ``/usr``;
5. ``runtime``: the interpreter's runtime tree, found as the interpreter itself finds it,
   for Python, Node.js, Ruby, Perl and Java (:func:`runtime_trees`), and the closure of
   every shared object in it (``lib-dynload/_ssl*.so`` needs ``libssl``);
6. ``owner``: for a package-managed image, the files of the system package that owns the
   program (dpkg's ``/var/lib/dpkg/info/*.list``, apk's ``/lib/apk/db/installed``), with
   the packages built from the same source that it depends on (``nginx`` and
   ``nginx-common``, ``redis-server`` and ``redis-tools``), minus documentation;
7. ``config``: what those packages' configuration files under ``/etc`` name and the image
   has: the site's folder (``root /var/www/html;``), the data folder (``dir /var/lib/redis``),
   the folder of a pid or log file the program will create (:func:`config_part`);
8. ``probe``: files added by booting the package and watching what it failed to open
   (:mod:`pyops.ops.probe`).

Every path is resolved inside the image root (:mod:`pyops.rootfs`): a package database or a
tree that points outside the root through a symlink reaches the image's own files, never
the host's. Package databases are read with a size limit.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyops import rootfs
from pyops.elf.ldd import Resolution, Resolver
from pyops.errors import PyopsError, UnsafeLayerPath
from pyops.limits import PACKAGE_DB_BYTES

__all__ = [
    "CONTENTS_FILE",
    "Contents",
    "ImageRoot",
    "Part",
    "RuntimeTree",
    "config_part",
    "is_documentation",
    "keep_named",
    "named_in_image",
    "named_paths",
    "data_part",
    "extras_part",
    "owner_parts",
    "program_part",
    "read_contents",
    "runtime_parts",
    "runtime_trees",
    "select",
    "workdir_parts",
]

CONTENTS_FILE = "contents.json"
"""Beside ``package.manifest``: the parts of the sysroot and why each is there."""

_FORMAT = 1

EXCLUDED_PREFIXES = (
    "/usr/share/doc/",
    "/usr/share/doc-base/",
    "/usr/share/man/",
    "/usr/share/info/",
    "/usr/share/lintian/",
    "/usr/share/bug/",
)
"""Documentation and packaging metadata: never needed to run a program."""

# A WorkingDir that is one of these is the system itself, not an application's folder.
_SYSTEM_DIRS = frozenset(
    {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
     "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib",
     "/usr/local", "/usr/local/bin", "/usr/sbin", "/usr/share", "/var"}
)  # fmt: skip

# Multi-arch library folders (Debian) by ELF machine, for the runtime trees kept there.
_TRIPLETS = {
    "EM_X86_64": "x86_64-linux-gnu",
    "EM_AARCH64": "aarch64-linux-gnu",
}


@dataclass(frozen=True, slots=True)
class Part:
    """Paths kept for one reason."""

    kind: str
    """``program``, ``extras``, ``data``, ``workdir``, ``runtime``, ``owner``, ``config``,
    ``probe`` or ``copy``."""
    reason: str
    """What they are, for people (``dpkg packages nginx, nginx-common``)."""
    paths: tuple[str, ...]
    """In-root paths, sorted; none is in an earlier part."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "paths": list(self.paths)}


@dataclass(frozen=True, slots=True)
class Contents:
    """The parts of a package's sysroot."""

    parts: tuple[Part, ...]

    def paths(self) -> list[str]:
        """Every path, sorted."""
        return sorted(p for part in self.parts for p in part.paths)

    def adding(self, part: Part) -> Contents:
        """These contents and ``part``, minus the paths already kept."""
        have = {p for existing in self.parts for p in existing.paths}
        new = tuple(sorted(set(part.paths) - have))
        if not new:
            return self
        return Contents((*self.parts, Part(part.kind, part.reason, new)))

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "parts": [p.to_dict() for p in self.parts]})


def read_contents(path: Path) -> Contents | None:
    """The contents recorded in ``path`` (a ``contents.json``), None if there is none or it
    cannot be read (a package made by Ops, or an older pyops)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("parts"), list):
        return None
    parts: list[Part] = []
    for item in data["parts"]:
        if not isinstance(item, dict):
            return None
        paths = item.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            return None
        parts.append(Part(str(item.get("kind", "")), str(item.get("reason", "")), tuple(paths)))
    return Contents(tuple(parts))


# ---------------------------------------------------------------------------------------
# Paths inside the root


class ImageRoot:
    """The unpacked image, read only through in-root resolution.

    ``root`` is a host folder holding the unpacked image, or the image's entries as
    :class:`~pyops.rootfs.RootFiles` (a layer index: nothing of it unpacked)."""

    def __init__(self, root: Path | rootfs.RootFiles) -> None:
        self.files: rootfs.RootFiles = (
            rootfs.HostFiles(root) if isinstance(root, (str, os.PathLike)) else root
        )

    def host(self, path: str) -> str:
        """The host path of a resolved (link-free) in-root path."""
        return self.files.host(path)

    def chain(self, path: str) -> tuple[str, ...] | None:
        """The symlinks passed and the resolved path (:func:`pyops.rootfs.resolve`'s rules),
        None if it does not exist or loops. No entry has a symlink among its parents, so
        each can be recreated as it is."""
        if "\0" in path:
            return None
        try:
            found = rootfs.resolve_in(self.files, path)
        except UnsafeLayerPath:
            return None  # a loop: as good as missing
        return found.chain if found.mode is not None else None

    def mode(self, resolved: str) -> int:
        st = self.files.lstat(resolved)
        if st is None:
            raise FileNotFoundError(self.host(resolved))
        return st.st_mode

    def size(self, resolved: str) -> int:
        st = self.files.lstat(resolved)
        return st.st_size if st is not None else 0

    def is_dir(self, path: str) -> bool:
        chain = self.chain(path)
        return chain is not None and stat.S_ISDIR(self.mode(chain[-1]))

    def is_file(self, path: str) -> bool:
        chain = self.chain(path)
        return chain is not None and stat.S_ISREG(self.mode(chain[-1]))

    def is_link(self, resolved: str) -> bool:
        st = self.files.lstat(resolved)
        return st is not None and stat.S_ISLNK(st.st_mode)

    def head(self, resolved: str, length: int) -> bytes:
        """The first ``length`` bytes (at most) of a resolved regular file."""
        return rootfs.read_window(self.files.window(resolved), length)

    def read(self, path: str, subject: str) -> bytes | None:
        """A small regular file of the image (a package database), None if missing."""
        chain = self.chain(path)
        if chain is None or not stat.S_ISREG(self.mode(chain[-1])):
            return None
        PACKAGE_DB_BYTES.check(self.size(chain[-1]), subject)
        return self.head(chain[-1], PACKAGE_DB_BYTES.value() + 1)

    def listdir(self, path: str) -> list[str]:
        chain = self.chain(path)
        if chain is None or not stat.S_ISDIR(self.mode(chain[-1])):
            return []
        return sorted(self.files.listdir(chain[-1]))

    def tree(self, path: str) -> Iterator[str]:
        """``path`` (its chain) and everything below it; the targets of symlinks inside
        that lead to files elsewhere in the image come too. Folders are walked in sorted
        order, each folder's subfolders before its other entries."""
        chain = self.chain(path)
        if chain is None:
            return
        yield from chain
        top = chain[-1]
        if not stat.S_ISDIR(self.mode(top)):
            return
        # An explicit stack: a hostile layer can nest folders deeper than Python recurses.
        stack = [top]
        while stack:
            folder = stack.pop()
            dirs: list[str] = []
            others: list[str] = []
            links: set[str] = set()
            for name in self.files.listdir(folder):
                st = self.files.lstat(f"{folder.rstrip('/')}/{name}")
                if st is not None and stat.S_ISDIR(st.st_mode):
                    dirs.append(name)
                else:
                    others.append(name)
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        links.add(name)
            dirs.sort()
            for name in [*dirs, *sorted(others)]:
                entry = f"{folder.rstrip('/')}/{name}"
                yield entry
                if name in links:
                    target = self.chain(entry)
                    if target is not None and stat.S_ISREG(self.mode(target[-1])):
                        yield from target
            stack.extend(f"{folder.rstrip('/')}/{name}" for name in reversed(dirs))


def _excluded(path: str) -> bool:
    # The folders themselves count too: /usr/share/doc as well as what is in it.
    return (path.rstrip("/") + "/").startswith(EXCLUDED_PREFIXES)


def is_documentation(path: str) -> bool:
    """Whether ``path`` is under one of :data:`EXCLUDED_PREFIXES`."""
    return _excluded(path)


# ---------------------------------------------------------------------------------------
# The policy


def select(
    root: Path | rootfs.RootFiles,
    resolver: Resolver,
    resolution: Resolution,
    program_chain: Sequence[str],
    *,
    env: Mapping[str, str],
    working_dir: str,
    data_files: Iterable[str],
    excluded_extras: frozenset[str],
    closure_only: bool = False,
) -> Contents:
    """The parts of a package for ``resolution`` (the program's closure in ``root``).

    ``program_chain`` is the path the program was found at and the links to its canonical
    path; ``env`` the image's environment; ``data_files`` the paths kept when the image
    has them; ``excluded_extras`` run-time extras never kept. ``closure_only`` stops after
    the data files (parts 1 to 3 of the module doc).
    """
    image = ImageRoot(root)
    parts = [
        program_part(resolution, program_chain),
        extras_part(resolution, excluded_extras),
        data_part(image, data_files),
    ]
    if not closure_only:
        parts += workdir_parts(image, working_dir)
        parts += runtime_parts(image, resolver, resolution.program.real_path, env)
        owners = owner_parts(image, program_chain)
        parts += owners
        parts += [config_part(image, owner) for owner in owners]
    contents = Contents(())
    for part in parts:
        contents = contents.adding(part)
    return contents


def program_part(resolution: Resolution, program_chain: Sequence[str]) -> Part:
    """The program as found, and its ELF closure."""
    paths = [*program_chain]
    for item in (resolution.program, resolution.interpreter, *resolution.libraries):
        if item is not None:
            paths += item.chain
    return Part("program", "the program and its libraries", tuple(paths))


def extras_part(resolution: Resolution, excluded: frozenset[str]) -> Part:
    """What the C library loads or reads at run time, minus ``excluded``."""
    paths = [
        entry
        for extra in resolution.runtime_extras
        if extra.file is not None and extra.name not in excluded
        for entry in extra.file.chain
    ]
    return Part("extras", "loaded or read by the C library at run time", tuple(paths))


def data_part(image: ImageRoot, data_files: Iterable[str]) -> Part:
    """The ``data_files`` that are regular files in the image, with the links to them."""
    paths: list[str] = []
    for candidate in data_files:
        chain = image.chain(candidate)
        if chain is not None and stat.S_ISREG(image.mode(chain[-1])):
            paths += chain
    return Part("data", "CA certificates and the loader cache", tuple(paths))


def workdir_parts(image: ImageRoot, working_dir: str) -> list[Part]:
    """The working directory's tree, unless it is a system folder."""
    cwd = "/" + working_dir.strip("/")
    if cwd in _SYSTEM_DIRS or not image.is_dir(cwd):
        return []
    paths = tuple(p for p in image.tree(cwd) if not _excluded(p))
    return [Part("workdir", f"the working directory {cwd}", paths)]


def runtime_parts(
    image: ImageRoot, resolver: Resolver, program: str, env: Mapping[str, str]
) -> list[Part]:
    """The interpreter's runtime trees and the libraries of the shared objects in them."""
    parts: list[Part] = []
    for runtime in runtime_trees(image, program, env):
        paths = tuple(p for top in runtime.trees for p in image.tree(top) if not _excluded(p))
        parts.append(Part("runtime", runtime.describe(), paths))
        libs = _shared_object_closure(image, resolver, paths)
        parts.append(Part("runtime", f"libraries of {runtime.name}'s native modules", libs))
    return parts


def _shared_object_closure(
    image: ImageRoot, resolver: Resolver, paths: Iterable[str]
) -> tuple[str, ...]:
    """The libraries the shared objects among ``paths`` need (they are dlopened, so their
    own ``DT_NEEDED`` entries are loaded then)."""
    found: list[str] = []
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if not (name.endswith((".so", ".node")) or ".so." in name):
            continue
        if image.is_link(path) or not image.is_file(path):
            continue  # a link's target is in the tree on its own
        try:
            resolution = resolver.resolve(path, allow_missing=True)
        except PyopsError:
            continue  # not an ELF file, or another machine's: nothing to add
        for lib in resolution.libraries:
            found += lib.chain
    return tuple(found)


# ---------------------------------------------------------------------------------------
# Interpreters


@dataclass(frozen=True, slots=True)
class RuntimeTree:
    """Where an interpreter finds its own library."""

    name: str
    """``Python 3.11``, ``Node.js``..."""
    trees: tuple[str, ...]
    """In-root folders that exist."""

    def describe(self) -> str:
        return f"{self.name}'s runtime ({', '.join(self.trees)})"


_PYTHON = re.compile(r"python(\d+)?(?:\.(\d+))?[a-z]*")
_RUBY = re.compile(r"ruby(\d+\.\d+)?")
_PERL = re.compile(r"perl(5[.\d]*)?")


def runtime_trees(image: ImageRoot, program: str, env: Mapping[str, str]) -> list[RuntimeTree]:
    """The runtime trees of the interpreter ``program`` (its canonical in-root path), as
    that interpreter finds them: from its own location (its prefix), then the variables of
    the image's ``env`` it reads. Empty for a program that is not a known interpreter."""
    name = program.rsplit("/", 1)[-1]
    bindir = program.rsplit("/", 1)[0] or "/"
    prefix = bindir.rsplit("/", 1)[0] or "/"
    triplets = [t for t in _TRIPLETS.values() if image.is_dir(f"{prefix}/lib/{t}")]
    found: list[RuntimeTree] = []

    def keep(label: str, candidates: Iterable[str]) -> None:
        seen: list[str] = []
        for path in candidates:
            clean = "/" + path.strip("/")
            if path and clean not in seen and clean not in _SYSTEM_DIRS and image.is_dir(clean):
                seen.append(clean)
        if seen:
            found.append(RuntimeTree(label, tuple(seen)))

    def env_dirs(variable: str) -> list[str]:
        return [p for p in env.get(variable, "").split(":") if p.startswith("/")]

    match = _PYTHON.fullmatch(name)
    if match:
        found += _python(image, bindir, match, env)
    elif name in ("node", "nodejs"):
        # Node's global folders ($PREFIX/lib/node, lib/node_modules), Debian's (nodejs:
        # the externalized builtins live in /usr/share/nodejs), and NODE_PATH.
        keep(
            "Node.js",
            [
                f"{prefix}/lib/node_modules",
                f"{prefix}/lib/node",
                f"{prefix}/share/nodejs",
                f"{prefix}/lib/nodejs",
                *(f"{prefix}/lib/{t}/nodejs" for t in triplets),
                *env_dirs("NODE_PATH"),
            ],
        )
    elif _RUBY.fullmatch(name):
        keep(
            "Ruby",
            [
                f"{prefix}/lib/ruby",
                *(f"{prefix}/lib/{t}/ruby" for t in triplets),
                f"{prefix}/share/rubygems-integration",
                "/var/lib/gems",
                *env_dirs("GEM_HOME"),
                *env_dirs("GEM_PATH"),
                *env_dirs("RUBYLIB"),
            ],
        )
    elif _PERL.fullmatch(name):
        keep(
            "Perl",
            [
                "/etc/perl",
                *(
                    f"{prefix}/lib/{t}/{d}"
                    for t in triplets
                    for d in ("perl", "perl5", "perl-base")
                ),
                f"{prefix}/share/perl",
                f"{prefix}/share/perl5",
                f"{prefix}/lib/perl5",
                f"{prefix}/lib/perl",
                *env_dirs("PERL5LIB"),
            ],
        )
    elif name == "java":
        home = env.get("JAVA_HOME", "")
        if not home.startswith("/") or not image.is_dir(home):
            home = prefix  # <home>/bin/java
        # A Java home holds lib/modules (9 and later) or lib/server (the JVM itself).
        if home not in _SYSTEM_DIRS and (
            image.is_file(f"{home}/lib/modules") or image.is_dir(f"{home}/lib/server")
        ):
            found.append(RuntimeTree("Java", (home,)))
    return found


def _python(
    image: ImageRoot, bindir: str, match: re.Match[str], env: Mapping[str, str]
) -> list[RuntimeTree]:
    """CPython's prefix (Modules/getpath.py): PYTHONHOME, else the first folder up from the
    executable's that holds ``lib/pythonX.Y/os.py``; then its standard library, its
    ``lib-dynload``, the site folders (Debian's ``dist-packages`` too) and PYTHONPATH."""
    versions: list[str]
    if match.group(2) is not None:
        versions = [f"{match.group(1)}.{match.group(2)}"]
    else:
        # python3 as a real file: the versions its prefix has.
        versions = []
    homes = [h for h in env.get("PYTHONHOME", "").split(":") if h.startswith("/")]
    candidates = homes[:1] if homes else []
    if not candidates:
        d = bindir
        while True:
            candidates.append(d)
            if d == "/":
                break
            d = d.rsplit("/", 1)[0] or "/"
    for prefix in candidates:
        if not versions:
            major = match.group(1) or r"\d+"
            versions = [
                n[len("python") :]
                for n in image.listdir(f"{prefix.rstrip('/')}/lib")
                if re.fullmatch(rf"python{major}\.\d+", n)
            ]
        for version in versions:
            base = prefix.rstrip("/")
            stdlib = f"{base}/lib/python{version}"
            if not image.is_file(f"{stdlib}/os.py"):
                continue
            trees = [stdlib]
            for extra in (
                f"{base}/lib64/python{version}",
                f"{base}/lib/python3/dist-packages",
                f"{base}/local/lib/python{version}/dist-packages",
                f"{base}/local/lib/python{version}/site-packages",
                f"/usr/local/lib/python{version}/dist-packages",
                f"/usr/local/lib/python{version}/site-packages",
                *[p for p in env.get("PYTHONPATH", "").split(":") if p.startswith("/")],
            ):
                clean = "/" + extra.strip("/")
                if clean not in trees and clean not in _SYSTEM_DIRS and image.is_dir(clean):
                    trees.append(clean)
            return [RuntimeTree(f"Python {version}", tuple(trees))]
    return []


# ---------------------------------------------------------------------------------------
# System packages


def owner_parts(image: ImageRoot, program_chain: Sequence[str]) -> list[Part]:
    """The files of the dpkg or apk packages that own ``program_chain`` (see the module
    doc), one part per package manager; empty for an image without one."""
    parts: list[Part] = []
    for finder in (_dpkg, _apk):
        part = finder(image, program_chain)
        if part is not None:
            parts.append(part)
    return parts


def _aliases(path: str) -> set[str]:
    """The spellings of ``path`` on a merged-/usr system (``/bin/sh`` is ``/usr/bin/sh``)."""
    names = {path}
    for top in ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/"):
        if path.startswith(top):
            names.add("/usr" + path)
        if path.startswith("/usr" + top):
            names.add(path[len("/usr") :])
    return names


def _dep_names(field: str) -> list[str]:
    """Package names in a Depends field: every alternative, without versions or arch."""
    names: list[str] = []
    for item in re.split(r"[,|]", field):
        name = item.strip().split(" ", 1)[0].split("(", 1)[0].split(":", 1)[0].strip()
        if name:
            names.append(name)
    return names


def _same_source(
    owners: list[str], depends: Callable[[str], list[str]], source: Callable[[str], str]
) -> list[str]:
    """``owners`` and, transitively, the dependencies built from the same source as the
    package that needs them."""
    chosen = list(owners)
    queue = list(owners)
    while queue:
        name = queue.pop()
        for dep in depends(name):
            if dep not in chosen and source(dep) == source(name):
                chosen.append(dep)
                queue.append(dep)
    return chosen


def _dpkg(image: ImageRoot, program_chain: Sequence[str]) -> Part | None:
    status = image.read("/var/lib/dpkg/status", "dpkg's status file")
    if status is None:
        return None
    packages: dict[str, dict[str, str]] = {}
    for block in status.decode("utf-8", "replace").split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        name = fields.get("Package")
        if name and "installed" in fields.get("Status", "").split():
            packages[name] = fields

    def list_file(name: str) -> list[str]:
        arch = packages[name].get("Architecture", "")
        for candidate in (f"{name}:{arch}.list", f"{name}.list"):
            data = image.read(f"/var/lib/dpkg/info/{candidate}", f"dpkg's {candidate}")
            if data is not None:
                return [
                    line
                    for line in data.decode("utf-8", "surrogateescape").splitlines()
                    if line.startswith("/") and "\0" not in line
                ]
        return []

    wanted: set[str] = set()
    for path in program_chain:
        wanted |= _aliases(path)
    owners: list[str] = []
    files: dict[str, list[str]] = {}
    for name in sorted(packages):
        listed = list_file(name)
        files[name] = listed
        if wanted & set(listed):
            owners.append(name)
    if not owners:
        return None

    def source(name: str) -> str:
        return packages[name].get("Source", name).split(" ", 1)[0]

    def depends(name: str) -> list[str]:
        fields = packages[name]
        found = _dep_names(f"{fields.get('Pre-Depends', '')},{fields.get('Depends', '')}")
        return [dep for dep in found if dep in packages]

    chosen = _same_source(owners, depends, source)
    paths = _kept(image, (p for name in chosen for p in files[name]))
    return Part("owner", f"dpkg packages {', '.join(sorted(chosen))}", paths)


def _apk(image: ImageRoot, program_chain: Sequence[str]) -> Part | None:
    data = image.read("/lib/apk/db/installed", "apk's installed database")
    if data is None:
        return None
    records: list[dict[str, Any]] = []
    for block in data.decode("utf-8", "replace").split("\n\n"):
        record: dict[str, Any] = {"files": [], "deps": []}
        folder = ""
        for line in block.splitlines():
            key, _, value = line.partition(":")
            if key == "P":
                record["name"] = value
            elif key == "o":
                record["origin"] = value
            elif key == "D":
                record["deps"] = [re.split(r"[<>=~]", d, maxsplit=1)[0] for d in value.split()]
            elif key == "F":
                folder = value.strip("/")
                record["files"].append("/" + folder)
            elif key == "R":
                record["files"].append(f"/{folder}/{value}" if folder else f"/{value}")
        if "name" in record:
            records.append(record)
    by_name = {r["name"]: r for r in records}
    wanted: set[str] = set()
    for path in program_chain:
        wanted |= _aliases(path)
    owners = [r["name"] for r in records if wanted & set(r["files"])]
    if not owners:
        return None
    chosen = _same_source(
        owners,
        lambda name: [dep for dep in by_name[name]["deps"] if dep in by_name],
        lambda name: str(by_name[name].get("origin", name)),
    )
    paths = _kept(image, (p for name in chosen for p in by_name[name]["files"]))
    return Part("owner", f"apk packages {', '.join(sorted(chosen))}", paths)


_NAMED_PATH = re.compile(r"(?<![\w.:/])(/[\w.+@-]+(?:/[\w.+@-]+)*)")  # not a URL's path
_CONFIG_BYTES = 1 << 20  # a configuration file larger than this is not read
# Files for service managers and cron, not for the program: what they name is not read.
_NOT_CONFIG = tuple(
    f"/etc/{d}/"
    for d in ("init.d", "default", "logrotate.d", "systemd", "cron.d", "cron.daily", "sv",
              "rc0.d", "rc1.d", "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d", "rcS.d",
              "bash_completion.d", "apparmor.d", "ufw", "sysctl.d", "tmpfiles.d")
)  # fmt: skip
_TREE_ENTRIES = 10_000  # a folder named by a text is kept whole up to this size


def named_paths(text: str) -> list[str]:
    """The absolute paths ``text`` names, each once, outside ``/proc``, ``/sys``, ``/dev``."""
    found = dict.fromkeys(m.group(1) for m in _NAMED_PATH.finditer(text))
    return [p for p in found if not p.startswith(("/proc/", "/sys/", "/dev/"))]


def named_in_image(image: ImageRoot, path: str) -> tuple[str, bool] | None:
    """What to keep for a path a text names: ``(path, True)`` when the image has it (a
    folder with what is in it); ``(folder, False)`` when only its folder is in the image (a
    file the program will create there: ``pid /run/nginx.pid``); None otherwise."""
    if image.chain(path) is not None:
        return path, True
    parent = path.rsplit("/", 1)[0]
    return (parent, False) if parent and image.is_dir(parent) else None


def keep_named(image: ImageRoot, path: str, whole: bool = True) -> tuple[str, ...]:
    """What keeping ``path`` takes: its chain and, with ``whole``, for a folder what is in
    it, unless it is a system folder or over a size. Documentation never."""
    chain = image.chain(path)
    if chain is None or _excluded(chain[-1]):
        return ()
    top = chain[-1]
    if not whole or top in _SYSTEM_DIRS or not stat.S_ISDIR(image.mode(top)):
        return chain
    tree = [p for p in image.tree(path) if not _excluded(p)]  # the chain comes first
    return tuple(tree) if len(tree) <= _TREE_ENTRIES else chain


def config_part(image: ImageRoot, owner: Part) -> Part:
    """What the configuration files of the ``owner`` packages name (``root /var/www/html``,
    ``dir /var/lib/redis``, ``pid /run/nginx.pid``): :func:`named_in_image`, kept with
    :func:`keep_named`."""
    lines: list[str] = []
    for path in owner.paths:
        if not path.startswith("/etc/") or path.startswith(_NOT_CONFIG):
            continue
        if not image.is_file(path):
            continue
        chain = image.chain(path)
        assert chain is not None
        if image.size(chain[-1]) > _CONFIG_BYTES:
            continue
        text = image.head(chain[-1], _CONFIG_BYTES).decode("utf-8", "replace")
        lines += [
            line for line in text.splitlines() if not line.lstrip().startswith(("#", ";", "//"))
        ]
    paths: list[str] = []
    for named in named_paths("\n".join(lines)):
        found = named_in_image(image, named)
        if found is not None:
            paths += keep_named(image, *found)
    return Part("config", f"paths named in the configuration of {owner.reason}", tuple(paths))


def _kept(image: ImageRoot, listed: Iterable[str]) -> tuple[str, ...]:
    """The listed paths that exist in the image, with their links, minus documentation.
    A folder is kept as a folder (what the package put in it is listed on its own)."""
    kept: list[str] = []
    for path in listed:
        if _excluded(path):
            continue
        chain = image.chain(path)
        if chain is not None and not _excluded(chain[-1]):
            kept += chain
    return tuple(kept)

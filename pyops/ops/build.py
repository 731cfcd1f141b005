"""The recipes: a host program and its libraries into a Nanos image, and that image booted.

Each step is a function of its inputs; :func:`build_image` is the list of steps:
resolve the program's closure -> lay out the tree -> add the files every image needs ->
the manifest -> write the disk (skipped when an identical one exists).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyops import environ
from pyops.arch import Arch
from pyops.errors import ElfMismatch, InvalidInput, ReleaseError
from pyops.home import image_key_file
from pyops.nanos.manifest import Manifest
from pyops.nanos.tree import Contents, Directory, File, HardLink, HostFile, Symlink, Tree
from pyops.progress import NULL_PROGRESS, Progress, step
from pyops.version import __version__

if TYPE_CHECKING:
    # Only for annotations: ``pyops run`` of a cached image needs none of these modules'
    # code (the package and release modules pull in the HTTP stack, disk the writer).
    from pyops.elf.ldd import Resolution
    from pyops.nanos.disk import DiskInfo
    from pyops.nanos.release import NanosRelease
    from pyops.ops.config import OpsConfig
    from pyops.ops.package import Package

# What every image contains besides the program's own files (ops-reference.md section 3.4,
# and what Docker gives every container): see add_standard_files.
RESOLV_CONF = b"nameserver 8.8.8.8\n"
HOSTS = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
HOSTNAME = b"uniboot\n"
PASSWD = b"root:x:0:0:root:/root:/bin/nologin\n"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Where TLS libraries look for a CA bundle: Go's crypto/x509/root_linux.go, in its order, and
# OpenSSL's default CAfile on Debian-built OpenSSL (OPENSSLDIR=/usr/lib/ssl).
CA_BUNDLES = (
    CA_BUNDLE,  # Debian, Ubuntu, Gentoo, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL 6
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # CentOS, RHEL 7
    "/etc/ssl/cert.pem",  # Alpine, macOS, BSDs
    "/usr/lib/ssl/cert.pem",  # OpenSSL's OPENSSLDIR/cert.pem
)


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """What goes into an image built from a host program."""

    program: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None
    target_root: str | None = None
    klibs: tuple[str, ...] = ()
    size: int | None = None
    extra_manifest: Mapping[str, object] = field(default_factory=dict)
    extra_paths: tuple[tuple[str, str], ...] = ()
    """(host path, image path) of files and directories to add (config Files, Dirs, MapDirs)."""
    name_servers: tuple[str, ...] = ()
    directories: tuple[str, ...] = ()
    """Folders the image must have (where volumes are mounted, folders MapDirs maps)."""
    klib_dir: str | None = None
    cwd: str | None = None
    """The program's working directory in the guest (the root's ``cwd``; default ``/``)."""
    exact_env: bool = False
    """The guest's environment is ``env`` alone, without the variables pyops adds (USER,
    PWD, OPS_VERSION, NANOS_VERSION, NANOS_ARCH, IMAGE_NAME)."""
    """A host folder klibs are taken from before the release's (config.json KlibDir)."""


def merge_config(
    ops: OpsConfig,
    program: str | None,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    target_root: str | None = None,
    klibs: Sequence[str] = (),
    size: int | None = None,
    cwd: str | None = None,
    ports: Sequence[str] = (),
) -> BuildConfig:
    """A :class:`BuildConfig` from a config.json and command-line values.

    A command-line value overrides the file only when it is given; environment variables
    from both are merged, the command line winning. As Ops does, the files are added in
    the order Files, MapDirs (walked: :mod:`pyops.ops.mapdirs`), Dirs, a later one
    replacing an earlier one at the same path; and the guest's ``OPS_PORT`` is the TCP
    ports forwarded (RunConfig.Ports, then ``ports``, ``-p``: see
    :func:`~pyops.ops.config.merge_ports`) joined by commas, over any ``Env`` value.
    """
    from pyops.ops.config import merge_ports
    from pyops.ops.mapdirs import map_dir

    program = program or ops.program
    if not program:
        raise InvalidInput("no program given", hint="name one, or set Program in config.json")
    here = cwd or os.getcwd()
    target_root = target_root or ops.target_root

    def user_path(entry: str) -> tuple[str, str]:
        # Ops reads every Files entry from the cwd, even absolute ones; pyops reads an
        # absolute entry from that absolute path (ops-reference.md, quirk 4).
        host = entry if os.path.isabs(entry) else os.path.join(here, entry)
        return host, "/" + entry.lstrip("/")

    extra = [user_path(entry) for entry in ops.files]
    folders: list[str] = []
    for key, guest in sorted(ops.map_dirs.items()):
        mapped = map_dir(key, guest, base_dir=str(ops.base_dir), target_root=target_root)
        extra.extend(mapped.paths)
        folders.extend(mapped.folders)
    extra.extend(user_path(entry) for entry in ops.dirs)
    environment = {**ops.env, **(env or {})}
    forwarded = merge_ports(ops.run.ports, ports)
    if forwarded:
        environment["OPS_PORT"] = ",".join(forwarded)
    passthrough: dict[str, object] = {}
    for flag in ops.debugflags:
        passthrough[flag] = "t"
    if ops.reboot_on_exit:
        passthrough["reboot_on_exit"] = "t"
    if ops.no_trace:
        passthrough["notrace"] = list(ops.no_trace)
    passthrough.update(ops.manifest_passthrough)
    return BuildConfig(
        program=program,
        args=tuple(args) if args else (ops.args or ()),
        env=environment,
        name=name or ops.run.image_name,
        target_root=target_root,
        klibs=tuple(klibs) if klibs else ops.klibs,
        size=size if size is not None else ops.base_volume_size,
        extra_manifest=passthrough,
        extra_paths=tuple(extra),
        name_servers=ops.name_servers,
        directories=tuple(folders),
        klib_dir=os.path.join(here, ops.klib_dir) if ops.klib_dir else None,
    )


def image_name(program: str) -> str:
    """Ops's default image name: the program's file name up to its first dot."""
    base = os.path.basename(program.rstrip("/")) or "image"
    return base.split(".", 1)[0] or base


def check_image_name(name: str) -> str:
    """Refuse names that would not make a plain file name."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}", name):
        raise InvalidInput(
            f"invalid image name {name!r}",
            hint="use letters, digits, '.', '_', '+' and '-', starting with a letter or digit",
        )
    return name


def program_path(program: str, target_root: str | None) -> str:
    """The program's path inside the image.

    Without a target root the image uses the program's absolute host path (Ops does too);
    with one, the program is a path inside that root.
    """
    if target_root:
        return "/" + program.lstrip("/")
    return os.path.abspath(program)


def closure_tree(resolution: Resolution, tree: Tree | None = None, *, data: bool = True) -> Tree:
    """A tree holding every path of the closure, symlinks as symlinks.

    ``data=False`` leaves out the data files among the run-time extras (``/etc/hosts``,
    ``nsswitch.conf``...): a host program's image must not carry the host's own.
    """
    tree = tree or Tree()
    root = resolution.root or "/"
    files = [resolution.program, *filter(None, [resolution.interpreter]), *resolution.libraries]
    if resolution.include_runtime_extras:
        files += [
            extra.file
            for extra in resolution.runtime_extras
            if extra.file is not None and (data or extra.file.found_via != "data")
        ]
    for path in sorted({entry for item in files for entry in item.chain}):
        host = os.path.join(root, path.lstrip("/"))
        if os.path.islink(host):
            tree.add_symlink(path, os.readlink(host))
        else:
            tree.add_file(path, HostFile.from_path(host))
    return tree


def add_standard_files(
    tree: Tree, *, name_servers: Sequence[str] = (), ca_root: str | None = None
) -> None:
    """Add what every image contains besides the program's files: the one policy for
    ``build``, ``run`` and ``pkg load``.

    - ``/etc/resolv.conf``: the ``name_servers`` (config.json NameServers) when given, else
      the image's own, else Ops's ``nameserver 8.8.8.8``;
    - ``/etc/hosts``: localhost for IPv4 and IPv6, always, as Docker gives every container;
    - ``/proc/sys/kernel/hostname``: the image's own, else Ops's ``uniboot``;
    - ``/etc/passwd``: the image's own, else Ops's one root line;
    - the CA bundle: the image's own, else the first CA bundle found in ``ca_root`` (for a
      host program the host's, as Ops does, so that TLS works; None: none).

    No other host file: a host program's image gets none of the host's lookup files. Files
    the user adds (config.json Files, Dirs, MapDirs) come later and replace any of these.
    """
    for ns in name_servers:
        if not ns or any(c.isspace() or c in "\0#;" for c in ns):
            raise InvalidInput(
                f"invalid name server {ns!r}", hint='write an address, e.g. "1.1.1.1"'
            )
    if name_servers:
        lines = "".join(f"nameserver {ns}\n" for ns in name_servers)
        tree.add_file("/etc/resolv.conf", lines.encode())
    elif not tree.exists("/etc/resolv.conf"):
        tree.add_file("/etc/resolv.conf", RESOLV_CONF)
    tree.add_file("/etc/hosts", HOSTS)
    if not tree.exists("/proc/sys/kernel/hostname"):
        tree.add_file("/proc/sys/kernel/hostname", HOSTNAME)
    if not tree.exists("/etc/passwd"):
        tree.add_file("/etc/passwd", PASSWD)
    if not tree.exists(CA_BUNDLE) and ca_root is not None:
        for bundle in CA_BUNDLES:
            host = os.path.join(ca_root, bundle.lstrip("/"))
            if os.path.isfile(host):
                tree.add_file(CA_BUNDLE, HostFile.from_path(host))
                break


def manifest_for(
    config: BuildConfig, program_in_image: str, release: NanosRelease, name: str
) -> Manifest:
    """The root tuple: argv[0] as typed (as Ops does), Ops's environment, and ``debug_exit``
    so that the program's exit code reaches qemu's exit status."""
    environment: dict[str, str] = {}
    if not config.exact_env:
        environment = {
            "USER": "root",
            "PWD": config.cwd or "/",
            "OPS_VERSION": f"pyops-{__version__}",
            "NANOS_VERSION": release.version,
            "NANOS_ARCH": str(release.arch),
            "IMAGE_NAME": name,
        }
    environment.update(config.env)
    extra: dict[str, object] = {"debug_exit": "t"}
    extra.update(config.extra_manifest)
    # ManifestPassthrough comes last in Ops and sets its keys wholesale (fs/manifest.go:
    # AddPassthrough), program and environment included: an environment given there is the
    # whole of it.
    program = str(extra.pop("program", program_in_image))
    passed_env = extra.pop("environment", None)
    if isinstance(passed_env, Mapping):
        environment = {str(k): str(v) for k, v in passed_env.items()}
    cwd = extra.pop("cwd", None)
    if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/")):
        raise InvalidInput(f"ManifestPassthrough cwd {cwd!r} is not an absolute path")
    for key, instead in (("arguments", "Args"), ("klibs", "Klibs"), ("children", "Files")):
        if key in extra:
            raise InvalidInput(
                f"ManifestPassthrough cannot set {key!r}: it is made from {instead}",
                hint=f"give it as {instead} in config.json",
            )
    return Manifest(
        program=program,
        arguments=(config.program, *config.args),
        environment=environment,
        klibs="bootfs" if config.klibs else None,
        cwd=cwd or config.cwd,
        extra=extra,
    )


def tree_key(tree: Tree) -> str:
    """A digest of everything the tree puts in an image: names, links, sizes and, for host
    files, their identity (path, size, modification time)."""
    # Run on every ``pyops run``, also when the image is reused, so kept lean: one ``update``
    # per entry, and no JSON encoding for the usual entry without attributes.
    h = hashlib.sha256()
    update = h.update
    for path, node in tree.walk():
        name = path.encode("utf-8", "surrogateescape")
        if isinstance(node, File):
            src = node.source
            if isinstance(src, HostFile):
                # the walk already stat'ed it; a file changed since then fails the copy
                what = f"{src.path}\0{src.size}\0{src.mtime_ns}".encode()
            elif isinstance(src, Contents):
                what = hashlib.sha256(src.data).digest()
            else:
                what = repr(src).encode()
            update(b"".join((name, b"\0f", _attributes_key(node.attributes), what, b"\n")))
        elif isinstance(node, Directory):
            update(b"".join((name, b"\0d", _attributes_key(node.attributes), b"\n")))
        elif isinstance(node, Symlink):
            update(name + b"\0l" + node.target.encode("utf-8", "surrogateescape") + b"\n")
        elif isinstance(node, HardLink):
            update(name + b"\0h" + node.target.encode("utf-8", "surrogateescape") + b"\n")
        else:
            update(name + b"\0\n")
    return h.hexdigest()


def _attributes_key(attributes: Mapping[str, object]) -> bytes:
    return json.dumps(dict(attributes), sort_keys=True).encode() if attributes else b"{}"


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """An image on disk and whether this call wrote it."""

    path: Path
    written: bool
    info: DiskInfo | None
    argv: tuple[str, ...] = ()
    """The program's command line in the image."""
    volumes: tuple[str, ...] = ()
    """The volume files its root configuration mounts, to attach when it boots."""


def resolve_program(config: BuildConfig, *, progress: Progress = NULL_PROGRESS) -> Resolution:
    """The closure of the program ``config`` names (in its target root, if any)."""
    from pyops.elf.ldd import resolve

    program_in_image = program_path(config.program, config.target_root)
    with step(progress, "resolve the program's libraries"):
        return resolve(
            program_in_image, config.target_root, env=config.env, include_runtime_extras=True
        )


def program_arch(resolution: Resolution) -> Arch:
    """The architecture of a resolved program: the guest's. Its libraries are of the same
    (the resolver takes no other), and Nanos must run on it."""
    from pyops.arch import of_elf_machine
    from pyops.elf.reader import read_elf

    program = resolution.program
    machine = read_elf(program.host_path, display=program.path).machine
    arch = of_elf_machine(machine)
    if arch is None or not arch.nanos:
        raise ElfMismatch(
            f"{program.path} is a program for {arch.uname if arch else machine}; Nanos runs "
            "x86-64 and arm64 programs only",
            hint="build the program for x86_64 or aarch64",
        )
    return arch


def check_release_arch(arch: Arch, release: NanosRelease, what: str) -> None:
    """Refuse to pair a program of ``arch`` with a kernel of another architecture."""
    if release.arch != arch:
        raise ElfMismatch(
            f"{what} is for {arch} ({arch.uname}), but the Nanos kernel "
            f"{release.kernel} is for {release.arch}",
            hint=f"use a Nanos release for {arch} (pyops kernel install --arch {arch})",
        )


def build_image(
    config: BuildConfig,
    release: NanosRelease,
    output: str | os.PathLike[str],
    *,
    progress: Progress = NULL_PROGRESS,
    force: bool = False,
    resolution: Resolution | None = None,
) -> BuiltImage:
    """Build a bootable image of a host program at ``output`` (``resolution``: the
    program's, when :func:`resolve_program` made it already).

    When an image built from the very same inputs is already there, it is reused.
    """
    name = config.name or image_name(config.program)
    program_in_image = program_path(config.program, config.target_root)
    if resolution is None:
        resolution = resolve_program(config, progress=progress)
    check_release_arch(program_arch(resolution), release, resolution.program.path)
    # In a target root its /etc files are the image's own; on the host they are the host's.
    tree = closure_tree(resolution, data=config.target_root is not None)
    add_standard_files(tree, name_servers=config.name_servers, ca_root=config.target_root or "/")
    _add_user_files(tree, config)
    manifest = manifest_for(config, program_in_image, release, name)
    return write_image(tree, manifest, release, config, output, progress=progress, force=force)


def _add_user_files(tree: Tree, config: BuildConfig) -> None:
    for host, path in config.extra_paths:
        tree.add_host_path(host, path)
    # The kernel changes to cwd before it starts the program, and fails if it is missing.
    for folder in (*config.directories, *([config.cwd] if config.cwd else [])):
        if not tree.exists(folder):
            tree.add_directory(folder)


def write_image(
    tree: Tree,
    manifest: Manifest,
    release: NanosRelease,
    config: BuildConfig,
    output: str | os.PathLike[str],
    *,
    progress: Progress = NULL_PROGRESS,
    force: bool = False,
) -> BuiltImage:
    """Write ``tree`` and ``manifest`` as a disk at ``output``, unless the disk there was
    made from the same inputs (a key of them is kept in ``NAME.img.key``, see
    :func:`pyops.home.image_key_file`)."""
    klibs = {k: klib_path(k, release, config.klib_dir) for k in config.klibs}
    key_material = {
        "tree": tree_key(tree),
        "manifest": json.dumps(manifest.to_dict(), sort_keys=True, default=str),
        # The kernel by content: a release reinstalled or edited in place rebuilds.
        "release": [_digest(p) for p in (release.kernel, release.boot_img) if p is not None],
        "klibs": {name: _digest(path) for name, path in sorted(klibs.items())},
        "size": config.size,
        "pyops": __version__,
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()
    out = Path(output)
    key_file = image_key_file(out)
    if not force and out.is_file() and key_file.is_file() and key_file.read_text() == key:
        return BuiltImage(out, False, None, tuple(manifest.arguments))
    key_file.unlink(missing_ok=True)
    from pyops.nanos.disk import write_disk

    with step(progress, "write the image"):
        info = write_disk(
            out,
            tree,
            manifest,
            boot_img=release.boot_img,
            kernel=release.kernel,
            klibs=klibs,
            size=config.size,
            progress=progress,
        )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = key_file.with_name(key_file.name + ".tmp")
    tmp.write_text(key)
    os.replace(tmp, key_file)
    return BuiltImage(out, True, info, tuple(manifest.arguments))


def klib_path(name: str, release: NanosRelease, klib_dir: str | None = None) -> Path:
    """The host file of klib ``name``: in ``klib_dir`` (config.json KlibDir) when given
    and it is there, else the release's; missing from both, a ReleaseError names both."""
    from pyops.nanos.disk import check_klib_name

    check_klib_name(name)
    if not klib_dir:
        return release.klib(name)
    candidate = Path(klib_dir) / name
    if candidate.is_file():
        return candidate
    if name in release.klibs:
        return release.klibs[name]
    where = release.path / "klibs"
    raise ReleaseError(
        f"klib {name!r} is neither in KlibDir {klib_dir} nor in Nanos release "
        f"{release.label} ({where})",
        hint=f"put the file {name} in {klib_dir}, or take it out of Klibs",
    )


def _digest(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise ReleaseError(f"{os.fspath(path)}: cannot read it ({exc.strerror})") from exc


def package_tree(package: Package, args: Sequence[str], cwd: str | None = None) -> Tree:
    """The image tree of a package: its sysroot, plus each argument that names a file in
    the current directory, copied into the program's working directory (as Ops's
    ``pkg load`` does with ``Args[1]``), replacing a file of that name there."""
    tree = Tree()
    tree.add_host_path(package.sysroot, "/")
    if not os.path.isabs(package.program):
        # Ops's own packages name the program as <folder>/<exe>: the file <exe> beside the
        # sysroot, in the package folder (lepton/image.go, BuildPackageManifest).
        exe = os.path.basename(package.program)
        tree.add_file("/" + exe, str(package.path / exe))
    here = cwd or os.getcwd()
    workdir = package.working_dir or "/"
    # The kernel changes to cwd before exec and fails if it is missing; the closure alone
    # does not contain it.
    tree.add_directory(workdir)
    for arg in args:
        if not arg or arg.startswith("-") or os.path.isabs(arg) or ".." in arg.split("/"):
            continue
        host = os.path.join(here, arg)
        if os.path.isfile(host):
            tree.add_file(workdir.rstrip("/") + "/" + arg, HostFile.from_path(host))
    return tree


def package_manifest(
    package: Package,
    release: NanosRelease,
    config: BuildConfig,
    name: str,
) -> Manifest:
    """The root tuple for a package: its program and argv, its environment (the image's,
    then config.json's, then the flags'), its working directory as ``cwd``."""
    program = package.program
    if not os.path.isabs(program):
        program = "/" + os.path.basename(program)
    argv0 = package.args[0] if package.args else program
    arguments = (argv0, *config.args) if config.args else (package.args or (argv0,))
    base = manifest_for(
        BuildConfig(
            program=argv0,
            env={**package.env, **config.env},
            klibs=config.klibs,
            extra_manifest=config.extra_manifest,
        ),
        program,
        release,
        name,
    )
    environment = dict(base.environment)
    if package.working_dir and "PWD" not in config.env:
        environment["PWD"] = package.working_dir
    return dataclasses.replace(
        base,
        arguments=tuple(arguments),
        environment=environment,
        cwd=package.working_dir or None,
    )


def build_package_image(
    package: Package,
    config: BuildConfig,
    release: NanosRelease,
    output: str | os.PathLike[str],
    *,
    cwd: str | None = None,
    progress: Progress = NULL_PROGRESS,
    force: bool = False,
) -> BuiltImage:
    """Build a bootable image of a local package (``pyops pkg load``)."""
    name = config.name or package.name
    check_release_arch(package.arch, release, f"package {package.name}")
    tree = package_tree(package, config.args, cwd)
    add_standard_files(tree, name_servers=config.name_servers)
    _add_user_files(tree, config)
    manifest = package_manifest(package, release, config, name)
    return write_image(tree, manifest, release, config, output, progress=progress, force=force)


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``-e`` values: ``K=V`` (the value may contain '='); a bare ``K`` takes the host's value."""
    return environ.parse_env(items, source="-e", host=os.environ)

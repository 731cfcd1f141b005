"""``pyops pkg``: local packages (Ops's format) made from images, and booting them."""

from __future__ import annotations

import os
from typing import Any

import click

from pyops.cli._app import (
    ACCEL_HELP,
    ACCELS,
    PORT_OPTION,
    TqdmProgress,
    _arch_option,
    _credentials,
    _load_ops_config,
    _platform,
    _show_command,
    _show_note,
    cli,
)
from pyops.cli.build import debug_options, nanos_version_of, run_flags

_PLATFORM_HELP = (
    "os/arch[/variant] of a multi-platform image (default: the host's own architecture when "
    "the image has it, else linux/amd64)."
)
_PACKAGE_ARCH_HELP = (
    "The package's architecture (default: the host's, else the only one it is made for)."
)

# --- pyops pkg: local packages (Ops's format) made from images ------------------------------


@cli.group("pkg")
def pkg() -> None:
    """Local packages (Ops-compatible) in PYOPS_HOME/local_packages: make, list, remove."""


@pkg.command("from-docker")
@click.argument("image")
@click.option(
    "-f",
    "--file",
    "program",
    help="Program name on PATH, or its path (default: the image's Entrypoint, else Cmd).",
)
@click.option("--name", help="Package name (default: <repository>_<tag>).")
@click.option("-a", "--args", "args", multiple=True, help="The package's program arguments.")
@click.option("--copy", is_flag=True, help="Keep the whole root filesystem.")
@click.option("--nodiscover", is_flag=True, help="With --copy: do not resolve the libraries.")
@click.option(
    "--closure-only",
    is_flag=True,
    help="Keep only the program's ELF closure and data files (no working directory, "
    "interpreter runtime or system package files).",
)
@_arch_option("Take the image's variant for this architecture (linux/ARCH).")
@click.option("--platform", default=None, help=_PLATFORM_HELP)
@click.option("--insecure", is_flag=True, help="Use plain HTTP for a non-loopback registry.")
@click.option("--username", help="Registry user name (the password is read from stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin.")
@click.option(
    "--probe", is_flag=True, help="Boot the package to find the files it misses, and add them."
)
@click.option("-v", "--verbose", is_flag=True, help="Print each step with its time.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, no notes.")
@click.option("-n", "--nightly", is_flag=True, help="With --probe: boot Nanos's nightly build.")
@click.option("-l", "--local", is_flag=True, help="Accepted for Ops compatibility.")
def pkg_from_docker(
    image: str,
    program: str | None,
    name: str | None,
    args: tuple[str, ...],
    copy: bool,
    nodiscover: bool,
    closure_only: bool,
    arch: Any,
    platform: str | None,
    insecure: bool,
    username: str | None,
    password_stdin: bool,
    probe: bool,
    verbose: bool,
    quiet: bool,
    nightly: bool,
    local: bool,
) -> None:
    """Make a package of a program and what it needs from IMAGE, with no Docker daemon.

    Prints the package name (on stdout) and the platform taken (on stderr). -f is --file
    (Ops has no short name for it), and -n is --nightly as in Ops: the name is --name.
    """
    from pyops.ops.package import from_docker

    del local  # packages are always local here; the flag exists for Ops's muscle memory
    if copy and closure_only:
        raise click.UsageError("--copy and --closure-only do not go together.")
    if nodiscover and not copy:
        raise click.UsageError("--nodiscover goes with --copy.")
    credentials = _credentials(username, password_stdin)
    progress = TqdmProgress(verbose=verbose, quiet=quiet)
    made = from_docker(
        image,
        program,
        name=name,
        args=args,
        copy=copy,
        nodiscover=nodiscover,
        closure_only=closure_only,
        platform=_platform(arch, platform),
        credentials=credentials,
        insecure=insecure,
        progress=progress,
    )
    if not quiet:
        click.echo(f"pyops: platform {made.platform}", err=True)
        for note in made.notes:
            _show_note(note)
    if probe:
        _probe(made.name, (), None, progress, made.arch, nanos_version_of(None, nightly))
    click.echo(made.name)


def _probe(
    name: str,
    args: tuple[str, ...],
    config_file: str | None,
    progress: Any,
    arch: Any = None,
    nanos_version: str | None = None,
) -> None:
    from pyops.ops.probe import probe_package

    ops = _load_ops_config(config_file)
    result = probe_package(
        ops, name, args, progress=progress, arch=arch, nanos_version=nanos_version
    )
    state = "nothing more missing" if result.settled else "stopped: the rounds ran out"
    click.echo(
        f"pyops: probe: {len(result.added)} paths added in {result.rounds} boots ({state})",
        err=True,
    )
    for path in result.added:
        click.echo(f"pyops:   + {path}", err=True)
    if result.unresolved:
        names = ", ".join(result.unresolved)
        click.echo(f"pyops: probe: not in the image (or too vague): {names}", err=True)


@pkg.command("probe")
@click.argument("name")
@click.option("-a", "--args", "args", multiple=True, help="Program arguments (repeat).")
@click.option("-c", "--config", "config_file", help="An Ops config.json.")
@_arch_option(_PACKAGE_ARCH_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Print each step with its time.")
def pkg_probe(
    name: str, args: tuple[str, ...], config_file: str | None, arch: Any, verbose: bool
) -> None:
    """Boot package NAME to find the files of its image it misses, and add them.

    Repeats until a boot finds nothing new. Prints what was added."""
    _probe(name, args, config_file, TqdmProgress(verbose=verbose), arch)


@pkg.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-l", "--local", is_flag=True, help="The local packages, not the repository's.")
@click.option("-c", "--config", "config_file", help="An Ops config.json (PackageManifestURL).")
@click.option("-s", "--search", "term", help="Only the packages whose name matches (a regex).")
@_arch_option("Only the packages for this architecture (default: all, with an ARCH column).")
def pkg_list(
    as_json: bool, local: bool, config_file: str | None, term: str | None, arch: Any
) -> None:
    """List the packages of Ops's repository, as Ops does (-l: the local ones)."""
    import json

    if not local:
        from pyops.ops.repository import load_index, search

        entries = load_index(_index_url(config_file))
        if term is not None:
            entries = search(entries, term)
        if arch is not None:
            entries = [e for e in entries if e.arch == arch]
        if as_json:
            click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        else:
            _repository_table(entries)
        return
    from pyops.ops.package import list_packages

    packages = list_packages()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in packages], indent=2))
        return
    rows = [("NAME", "ARCH", "VERSION", "PROGRAM", "IMAGE")]
    rows += [(p.name, str(p.arch), p.version, p.program, p.image or "-") for p in packages]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[4]]))


def _index_url(config_file: str | None) -> str:
    from pyops.ops.repository import manifest_url

    return manifest_url(_load_ops_config(config_file).package_manifest_url)


def _base_url(config_file: str | None) -> str:
    from pyops.ops.repository import base_url

    return base_url(_load_ops_config(config_file).package_base_url)


def _repository_table(entries: Any) -> None:
    rows = [("PACKAGE", "VERSION", "ARCH", "LANGUAGE", "DESCRIPTION")]
    rows += [
        (f"{e.namespace}/{e.name}", e.version, str(e.arch), e.language, e.description)
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[4]]).rstrip())


@pkg.command("search")
@click.argument("term")
@click.option("-c", "--config", "config_file", help="An Ops config.json (PackageManifestURL).")
def pkg_search(term: str, config_file: str | None) -> None:
    """The repository's packages whose name matches TERM (a regular expression)."""
    from pyops.ops.repository import load_index, search

    found = search(load_index(_index_url(config_file)), term)
    if not found:
        click.echo(f"no package matches {term!r}", err=True)
        return
    _repository_table(found)


@pkg.command("describe")
@click.argument("identifier")
@_arch_option("The architecture (default: the host's, else amd64).")
@click.option("-c", "--config", "config_file", help="An Ops config.json (PackageManifestURL).")
def pkg_describe(identifier: str, arch: Any, config_file: str | None) -> None:
    """What the repository says of NAMESPACE/NAME[:VERSION]."""
    from pyops.ops.package import default_arch
    from pyops.ops.repository import describe, find, load_index

    entry = find(load_index(_index_url(config_file)), identifier, arch or default_arch())
    for key, value in describe(entry).items():
        click.echo(f"{key}: {value}")


@pkg.command("get")
@click.argument("identifier")
@_arch_option("The architecture (default: the host's, else amd64).")
@click.option("-c", "--config", "config_file", help="An Ops config.json (the repository URLs).")
def pkg_get(identifier: str, arch: Any, config_file: str | None) -> None:
    """Fetch NAMESPACE/NAME:VERSION from the repository (its SHA-256 checked before it is
    unpacked); print where it is."""
    from pyops.ops.repository import get_package

    got = get_package(
        identifier,
        arch=arch,
        index_url=_index_url(config_file),
        base=_base_url(config_file),
        progress=TqdmProgress(),
    )
    click.echo(got.path)


@pkg.command("contents")
@click.argument("name")
@click.option("--files", is_flag=True, help="List every path under its reason.")
@click.option("--tree", "as_tree", is_flag=True, help="Show the sysroot as a tree.")
@_arch_option(_PACKAGE_ARCH_HELP)
def pkg_contents(name: str, files: bool, as_tree: bool, arch: Any) -> None:
    """Show what package NAME keeps and why: one line per reason, with counts and sizes."""
    from pyops.ops.package import load_package, package_contents

    package = load_package(name, arch=arch)
    sysroot = package.sysroot
    contents = None if as_tree else package_contents(package)
    if contents is None:
        if not as_tree:
            click.echo("(no record of why: a package made by Ops or an older pyops)", err=True)
        click.echo("/")
        if sysroot.is_dir():
            _show_tree(os.fspath(sysroot), "")
        return
    for part in contents.parts:
        if part.kind == "copy":
            count, folders, size = _measure(sysroot)
        else:
            count, folders, size = _measure_paths(sysroot, part.paths)
        what = f"{count:,} file{'' if count == 1 else 's'}, {_size(size)}"
        if not count:
            what = f"{folders:,} folder{'' if folders == 1 else 's'}"
        click.echo(f"{part.reason}: {what}")
        if files:
            for path in part.paths:
                click.echo(f"    {path}")


def _size(size: int) -> str:
    if size < 1024:
        return f"{size:,} bytes"
    value = float(size)
    for unit in ("KiB", "MiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} GiB"


def _measure_paths(sysroot: os.PathLike[str], paths: tuple[str, ...]) -> tuple[int, int, int]:
    """Regular files, folders and the files' bytes among ``paths`` of ``sysroot``."""
    import stat

    count = folders = size = 0
    for path in paths:
        try:
            st = os.lstat(os.path.join(sysroot, path.lstrip("/")))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            count += 1
            size += st.st_size
        elif stat.S_ISDIR(st.st_mode):
            folders += 1
    return count, folders, size


def _measure(top: os.PathLike[str]) -> tuple[int, int, int]:
    count = folders = size = 0
    for dirpath, dirs, names in os.walk(top):
        folders += len(dirs)
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                count += 1
                size += st.st_size
    return count, folders, size


def _show_tree(directory: str, prefix: str) -> None:
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: os.fsencode(e.name))
    for i, entry in enumerate(entries):
        last = i == len(entries) - 1
        if entry.is_symlink():
            extra = f" -> {os.readlink(entry.path)}"
        elif entry.is_dir():
            extra = ""
        else:
            extra = f" ({entry.stat(follow_symlinks=False).st_size} bytes)"
        click.echo(f"{prefix}{'└── ' if last else '├── '}{entry.name}{extra}")
        if entry.is_dir(follow_symlinks=False):
            _show_tree(entry.path, prefix + ("    " if last else "│   "))


@pkg.command("add")
@click.argument("source", type=click.Path(exists=True))
@click.option("--name", help="Package name (default: the folder's or archive's name).")
@click.option("-l", "--local", is_flag=True, help="Accepted for Ops compatibility.")
@_arch_option("The package's architecture (default: the host's, else amd64).")
def pkg_add(source: str, name: str | None, local: bool, arch: Any) -> None:
    """Add a package folder, or a .tar.gz of one, to the local packages; print its name."""
    from pyops.ops.package import add_package

    del local  # packages are always local here; the flag exists for Ops's muscle memory
    click.echo(add_package(source, name=name, arch=arch).name)


@pkg.command("from-run")
@click.argument("program")
@click.option("--name", help="Package name (default: the program's file name).")
@click.option("--version", "version", default="latest", show_default=True, help="Its version.")
@click.option("-a", "--args", "args", multiple=True, help="The package's program arguments.")
@click.option("-e", "--env", "env", multiple=True, help="NAME=VALUE in the guest (repeat).")
@click.option("-l", "--local", is_flag=True, help="Accepted for Ops compatibility.")
def pkg_from_run(
    program: str,
    name: str | None,
    version: str,
    args: tuple[str, ...],
    env: tuple[str, ...],
    local: bool,
) -> None:
    """Make a package of a host PROGRAM and the libraries it loads (Ops's from-run);
    print its name (NAME_VERSION)."""
    from pyops.ops.build import parse_env
    from pyops.ops.package import from_run

    del local  # packages are always local here; the flag exists for Ops's muscle memory
    made = from_run(program, name=name, version=version, args=args, env=parse_env(env))
    click.echo(made.name)


@pkg.command("rm")
@click.argument("name")
@_arch_option(_PACKAGE_ARCH_HELP)
def pkg_rm(name: str, arch: Any) -> None:
    """Remove package NAME."""
    from pyops.ops.package import remove_package

    remove_package(name, arch=arch)


@pkg.command("load")
@click.argument("name")
@click.option("-a", "--args", "args", multiple=True, help="Program arguments (repeat).")
@click.option("-e", "--env", "env", multiple=True, help="NAME=VALUE in the guest (repeat).")
@PORT_OPTION
@click.option("-c", "--config", "config_file", help="An Ops config.json.")
@click.option("-i", "--imagename", "image_name", help="Image name (default: the package).")
@click.option("-m", "--memory", default=None, help="Guest memory (default 2G).")
@click.option("--smp", type=int, default=None, help="Number of virtual CPUs.")
@click.option("--accel", type=click.Choice(ACCELS), default=None, help=ACCEL_HELP)
@click.option("--nanos-version", help="Nanos release to use (default: newest installed).")
@click.option("-n", "--nightly", is_flag=True, help="Use Nanos's nightly build.")
@click.option("-l", "--local", is_flag=True, help="Accepted for Ops compatibility.")
@click.option("-v", "--verbose", is_flag=True, default=None, help="Print the qemu command line.")
@click.option("-f", "--force", is_flag=True, help="Rewrite the image even if it is up to date.")
@click.option("--missing-files", is_flag=True, help="List the files the program failed to open.")
@_arch_option(_PACKAGE_ARCH_HELP)
@click.option(
    "--background",
    is_flag=True,
    help="Start it as an instance in the background and print its name (pyops instance ...).",
)
@click.option("--instance-name", help="With --background: the instance's name.")
@click.option("--mounts", "mounts", multiple=True, help="Mount a volume: VOLUME:/path (repeat).")
@debug_options
@click.pass_context
def pkg_load(
    ctx: click.Context,
    /,
    name: str,
    args: tuple[str, ...],
    env: tuple[str, ...],
    ports: tuple[str, ...],
    config_file: str | None,
    image_name: str | None,
    memory: str | None,
    smp: int | None,
    accel: str | None,
    nanos_version: str | None,
    nightly: bool,
    local: bool,
    verbose: bool | None,
    force: bool,
    missing_files: bool,
    arch: Any,
    background: bool,
    instance_name: str | None,
    mounts: tuple[str, ...],
    udp_ports: tuple[str, ...],
    trace: bool,
    syscall_summary: bool,
    no_trace: tuple[str, ...],
    debug: bool,
    gdb_port: int | None,
) -> None:
    """Build an image from local package NAME and boot it; exit with its exit code.

    Without -a the package's own arguments (the image's Entrypoint and Cmd) are used.  An
    argument naming a file in the current directory is copied into the program's working
    directory in the image.
    """
    from pyops.ops.build import parse_env
    from pyops.ops.recipes import BuildFlags, instance_of_package, run_package

    del local  # packages are always local here; the flag exists for Ops's muscle memory
    flags = BuildFlags(
        args=args,
        env=parse_env(env),
        name=image_name,
        nanos_version=nanos_version_of(nanos_version, nightly),
        force=force,
        missing_files=missing_files,
        arch=arch,
        mounts=mounts,
        trace=trace,
        syscall_summary=syscall_summary,
        no_trace=no_trace,
        debug=debug,
    )
    run = run_flags(ports, memory, smp, accel, verbose, udp_ports, gdb_port, debug)
    progress = TqdmProgress(verbose=bool(verbose))
    if background:
        ops = _load_ops_config(config_file)
        made = instance_of_package(ops, name, flags, run, name=instance_name, progress=progress)
        click.echo(made.name)
        return
    if instance_name is not None:
        raise click.UsageError("--instance-name goes with --background.")
    code = run_package(
        _load_ops_config(config_file),
        name,
        flags,
        run,
        progress=progress,
        show_command=_show_command,
        notes=_show_note,
    )
    ctx.exit(code)

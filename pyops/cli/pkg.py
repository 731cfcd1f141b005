"""``pyops pkg``: local packages (Ops's format) made from images, and booting them."""

from __future__ import annotations

import os

import click

from pyops.cli._app import TqdmProgress, _credentials, _load_ops_config, _show_command, cli

# --- pyops pkg: local packages (Ops's format) made from images ------------------------------


@cli.group("pkg")
def pkg() -> None:
    """Local packages (Ops-compatible) in PYOPS_HOME/local_packages: make, list, remove."""


@pkg.command("from-docker")
@click.argument("image")
@click.option("-f", "--file", "program", required=True, help="Program name on PATH, or its path.")
@click.option("-n", "--name", help="Package name (default: <repository>_<tag>).")
@click.option("--copy", is_flag=True, help="Keep the whole root filesystem, not the closure.")
@click.option("--platform", default="linux/amd64", show_default=True, help="os/arch[/variant].")
@click.option("--insecure", is_flag=True, help="Use plain HTTP for a non-loopback registry.")
@click.option("--username", help="Registry user name (the password is read from stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin.")
@click.option("-v", "--verbose", is_flag=True, help="Print each step with its time.")
def pkg_from_docker(
    image: str,
    program: str,
    name: str | None,
    copy: bool,
    platform: str,
    insecure: bool,
    username: str | None,
    password_stdin: bool,
    verbose: bool,
) -> None:
    """Make a package of PROGRAM and its libraries from IMAGE, with no Docker daemon.

    Prints the package name.
    """
    from pyops.ops.package import from_docker

    credentials = _credentials(username, password_stdin)
    made = from_docker(
        image,
        program,
        name=name,
        copy=copy,
        platform=platform,
        credentials=credentials,
        insecure=insecure,
        progress=TqdmProgress(verbose=verbose),
    )
    click.echo(made.name)


@pkg.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pkg_list(as_json: bool) -> None:
    """List the local packages."""
    import json

    from pyops.ops.package import list_packages

    packages = list_packages()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in packages], indent=2))
        return
    rows = [("NAME", "VERSION", "PROGRAM", "IMAGE")]
    rows += [(p.name, p.version, p.program, p.image or "-") for p in packages]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[3]]))


@pkg.command("contents")
@click.argument("name")
def pkg_contents(name: str) -> None:
    """Show the sysroot of package NAME as a tree."""
    from pyops.ops.package import load_package

    sysroot = load_package(name).sysroot

    def show(directory: str, prefix: str) -> None:
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
                show(entry.path, prefix + ("    " if last else "│   "))

    click.echo("/")
    if sysroot.is_dir():
        show(os.fspath(sysroot), "")


@pkg.command("rm")
@click.argument("name")
def pkg_rm(name: str) -> None:
    """Remove package NAME."""
    from pyops.ops.package import remove_package

    remove_package(name)


@pkg.command("load")
@click.argument("name")
@click.option("-a", "--args", "args", multiple=True, help="Program arguments (repeat).")
@click.option("-e", "--env", "env", multiple=True, help="NAME=VALUE in the guest (repeat).")
@click.option("-p", "--port", "ports", multiple=True, help="Forward PORT or HOST:GUEST (TCP).")
@click.option("-c", "--config", "config_file", help="An Ops config.json.")
@click.option("-i", "--imagename", "image_name", help="Image name (default: the package).")
@click.option("-m", "--memory", default=None, help="Guest memory (default 2G).")
@click.option("--smp", type=int, default=None, help="Number of virtual CPUs.")
@click.option(
    "--accel", type=click.Choice(["auto", "kvm", "hvf", "tcg"]), default=None, help="[auto]"
)
@click.option("--nanos-version", help="Nanos release to use (default: newest installed).")
@click.option("-l", "--local", is_flag=True, help="Accepted for Ops compatibility.")
@click.option("-v", "--verbose", is_flag=True, default=None, help="Print the qemu command line.")
@click.option("--force", is_flag=True, help="Rewrite the image even if it is up to date.")
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
    local: bool,
    verbose: bool | None,
    force: bool,
) -> None:
    """Build an image from local package NAME and boot it; exit with its exit code.

    Without -a the package's own arguments (the image's Entrypoint and Cmd) are used.  An
    argument naming a file in the current directory is copied into the program's working
    directory in the image.
    """
    from pyops.ops.build import parse_env
    from pyops.ops.recipes import BuildFlags, RunFlags, run_package

    del local  # packages are always local here; the flag exists for Ops's muscle memory
    code = run_package(
        _load_ops_config(config_file),
        name,
        BuildFlags(
            args=args, env=parse_env(env), name=image_name, nanos_version=nanos_version, force=force
        ),
        RunFlags(ports=ports, memory=memory, cpus=smp, accel=accel, verbose=verbose),
        progress=TqdmProgress(verbose=bool(verbose)),
        show_command=_show_command,
    )
    ctx.exit(code)

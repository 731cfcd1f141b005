"""``pyops build`` and ``pyops run``: images of host programs, booted; and ``pyops image
create``, Ops's name for building one."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from pyops.cli._app import (
    ACCEL_HELP,
    ACCELS,
    PORT_OPTION,
    F,
    TqdmProgress,
    _arch_option,
    _load_ops_config,
    _show_command,
    _show_note,
    cli,
)
from pyops.cli.image import image

# --- pyops build / run -----------------------------------------------------------------------


def _build_options(f: F) -> F:
    options = [
        click.argument("program", required=False),
        click.option("-c", "--config", "config_file", help="An Ops config.json."),
        click.option("-a", "--args", "args", multiple=True, help="A program argument (repeat)."),
        click.option("-e", "--env", "env", multiple=True, help="NAME=VALUE in the guest (repeat)."),
        click.option("-i", "--imagename", "name", help="Image name (default: program name)."),
        click.option("--target-root", help="Take the program and libraries from this root."),
        click.option("--klib", "klibs", multiple=True, help="Add a Nanos klib (repeat)."),
        click.option("--klib-dir", help="Take klibs from this folder first (KlibDir)."),
        click.option("--cwd", help="The program's working directory in the guest."),
        click.option(
            "--exact-env",
            is_flag=True,
            help="The guest's environment is -e's and config.json's only (no USER, PWD...).",
        ),
        click.option("--size", help="Total image size, e.g. 512M (default: fit content)."),
        click.option("--nanos-version", help="Nanos release to use (default: newest installed)."),
        click.option("-n", "--nightly", is_flag=True, help="Use Nanos's nightly build."),
        click.option(
            "-f", "--force", is_flag=True, help="Rewrite the image even if it is up to date."
        ),
        click.option(
            "--mounts", "mounts", multiple=True, help="Mount a volume: VOLUME:/path (repeat)."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _build_flags(
    program: str | None,
    config_file: str | None,
    args: tuple[str, ...],
    env: tuple[str, ...],
    name: str | None,
    target_root: str | None,
    klibs: tuple[str, ...],
    klib_dir: str | None,
    cwd: str | None,
    exact_env: bool,
    size: str | None,
    nanos_version: str | None,
    force: bool,
    nightly: bool = False,
    mounts: tuple[str, ...] = (),
    missing_files: bool = False,
    trace: bool = False,
    syscall_summary: bool = False,
    no_trace: tuple[str, ...] = (),
    debug: bool = False,
) -> Any:
    from pyops.ops.build import parse_env
    from pyops.ops.config import parse_size
    from pyops.ops.recipes import BuildFlags

    del config_file  # read by the caller
    return BuildFlags(
        program=program,
        args=args,
        env=parse_env(env),
        name=name,
        target_root=target_root,
        klibs=klibs,
        klib_dir=klib_dir,
        cwd=cwd,
        exact_env=exact_env,
        size=parse_size(size, "--size") if size else None,
        nanos_version=nanos_version_of(nanos_version, nightly),
        force=force,
        missing_files=missing_files,
        mounts=mounts,
        trace=trace,
        syscall_summary=syscall_summary,
        no_trace=no_trace,
        debug=debug,
    )


def nanos_version_of(version: str | None, nightly: bool) -> str | None:
    """``--nanos-version``, or the nightly build's name for ``-n`` (Ops's ``--nightly``)."""
    if not nightly:
        return version
    from pyops.nanos.release import NIGHTLY

    if version not in (None, NIGHTLY):
        raise click.UsageError("-n/--nightly and --nanos-version do not go together.")
    return NIGHTLY


def run_flags(
    ports: tuple[str, ...],
    memory: str | None,
    smp: int | None,
    accel: str | None,
    verbose: bool | None,
    udp_ports: tuple[str, ...] = (),
    gdb_port: int | None = None,
    debug: bool = False,
) -> Any:
    """The :class:`~pyops.ops.recipes.RunFlags` of ``run``'s and ``pkg load``'s options."""
    from pyops.ops.recipes import RunFlags

    return RunFlags(
        ports=ports,
        memory=memory,
        cpus=smp,
        accel=accel,
        verbose=verbose,
        udp_ports=udp_ports,
        gdb_port=gdb_port,
        debug=debug,
    )


def debug_options(f: F) -> F:
    """Ops's debugging flags of ``run`` and ``pkg load``, with Ops's short names."""
    options = [
        click.option("--udp", "udp_ports", multiple=True, help="Forward a UDP port (as -p)."),
        click.option("--trace", is_flag=True, help="Trace every syscall (the strace klib)."),
        click.option(
            "--syscall-summary", is_flag=True, help="Print a table of the syscalls at exit."
        ),
        click.option("--no-trace", multiple=True, help="A syscall to leave out of --trace."),
        click.option(
            "-d",
            "--debug",
            is_flag=True,
            help="Wait for gdb before the guest starts (target remote :1234, or -g's port).",
        ),
        click.option("-g", "--gdbport", "gdb_port", type=int, help="qemu's gdb server port."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@_build_options
@click.option("-v", "--verbose", is_flag=True, help="Print each step with its time.")
def build(verbose: bool, **kw: Any) -> None:
    """Build a Nanos image of a host PROGRAM and its libraries; print its path."""
    from pyops.ops.recipes import build_program

    ops = _load_ops_config(kw["config_file"])
    built = build_program(ops, _build_flags(**kw), progress=TqdmProgress(verbose=verbose))
    click.echo(built.path)


@image.command("create")
@_build_options
@click.option("--package", help="Make the image of this package instead of a host PROGRAM.")
@click.option("-l", "--local", is_flag=True, help="Accepted for Ops compatibility.")
@_arch_option("With --package: the package's architecture.")
@click.option("-v", "--verbose", is_flag=True, help="Print each step with its time.")
def image_create(package: str | None, local: bool, arch: Any, verbose: bool, **kw: Any) -> None:
    """Make an image without booting it (Ops's `image create`): of a host PROGRAM, as
    `pyops build`, or of a package with --package. Prints its path."""
    from pyops.ops.recipes import build_package, build_program

    del local  # packages are always local here; the flag exists for Ops's muscle memory
    ops = _load_ops_config(kw["config_file"])
    progress = TqdmProgress(verbose=verbose)
    if package is None:
        if arch is not None:
            raise click.UsageError("--arch goes with --package (a program's ELF says its own).")
        built = build_program(ops, _build_flags(**kw), progress=progress)
    else:
        if kw["program"] is not None:
            raise click.UsageError("give a PROGRAM or --package, not both.")
        flags = dataclasses.replace(_build_flags(**kw), arch=arch)
        built = build_package(ops, package, flags, progress=progress)
    click.echo(built.path)


@cli.command()
@_build_options
@PORT_OPTION
@click.option("-m", "--memory", default=None, help="Guest memory (default 2G).")
@click.option("--smp", type=int, default=None, help="Number of virtual CPUs.")
@click.option(
    "--accel",
    type=click.Choice(ACCELS),
    default=None,
    help=ACCEL_HELP,
)
@click.option("-v", "--verbose", is_flag=True, default=None, help="Print the qemu command line.")
@click.option("--missing-files", is_flag=True, help="List the files the program failed to open.")
@debug_options
@click.pass_context
def run(
    ctx: click.Context,
    /,
    ports: tuple[str, ...],
    memory: str | None,
    smp: int | None,
    accel: str | None,
    verbose: bool | None,
    udp_ports: tuple[str, ...],
    gdb_port: int | None,
    debug: bool,
    **kw: Any,
) -> None:
    """Build (or reuse) the image of a host PROGRAM and boot it; exit with its exit code."""
    from pyops.ops.recipes import run_program

    code = run_program(
        _load_ops_config(kw["config_file"]),
        _build_flags(debug=debug, **kw),
        run_flags(ports, memory, smp, accel, verbose, udp_ports, gdb_port, debug),
        progress=TqdmProgress(verbose=bool(verbose)),
        show_command=_show_command,
        notes=_show_note,
    )
    ctx.exit(code)

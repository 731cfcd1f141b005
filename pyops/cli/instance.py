"""``pyops instance``: virtual machines running in the background (Ops's local instances)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from pyops.cli._app import (
    ACCEL_HELP,
    ACCELS,
    PORT_OPTION,
    TqdmProgress,
    _arch_option,
    _load_ops_config,
    cli,
)


@cli.group()
def instance() -> None:
    """Run images in the background: create, list, logs, stop, start, delete."""


def _run_options(f: Any) -> Any:
    options = [
        PORT_OPTION,
        click.option("-m", "--memory", default=None, help="Guest memory (default 2G)."),
        click.option("--smp", type=int, default=None, help="Number of virtual CPUs."),
        click.option("--accel", type=click.Choice(ACCELS), default=None, help=ACCEL_HELP),
        click.option("-c", "--config", "config_file", help="An Ops config.json (RunConfig)."),
        click.option(
            "--mounts", "mounts", multiple=True, help="Mount a volume: VOLUME:/path (repeat)."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@instance.command("create")
@click.argument("image", required=False)
@click.option("-i", "--instance-name", "name", help="Instance name (default: IMAGE-<time>).")
@click.option("--package", help="Build the image of this local package first, and start it.")
@click.option("-a", "--args", "args", multiple=True, help="With --package: program arguments.")
@_arch_option("With --package: the package's architecture.")
@_run_options
def instance_create(
    image: str | None,
    name: str | None,
    package: str | None,
    args: tuple[str, ...],
    arch: Any,
    ports: tuple[str, ...],
    memory: str | None,
    smp: int | None,
    accel: str | None,
    config_file: str | None,
    mounts: tuple[str, ...],
) -> None:
    """Start IMAGE (a name from `pyops image list`, or a disk file) in the background.

    Prints the instance name once qemu answers; the instance outlives this command and the
    terminal."""
    from pyops.ops.recipes import BuildFlags, RunFlags, instance_of_image, instance_of_package

    if (image is None) == (package is None):
        raise click.UsageError("give an IMAGE or --package NAME (one of them).")
    ops = _load_ops_config(config_file)
    run = RunFlags(ports=ports, memory=memory, cpus=smp, accel=accel)
    if package is not None:
        made = instance_of_package(
            ops,
            package,
            BuildFlags(args=args, arch=arch, mounts=mounts),
            run,
            name=name,
            progress=TqdmProgress(),
        )
    else:
        if args or arch:
            raise click.UsageError("-a and --arch go with --package.")
        assert image is not None
        made = instance_of_image(ops, image, run, name=name, mounts=mounts)
    click.echo(made.name)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@instance.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def instance_list(as_json: bool) -> None:
    """List the instances, with their state checked now."""
    import json
    from pathlib import Path

    from pyops.ops.instances import list_instances

    found = list_instances()
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in found], indent=2))
        return
    rows = [("NAME", "STATE", "PID", "IMAGE", "PORTS", "MEMORY", "UPTIME", "EXIT")]
    for i in found:
        state = i.state
        exit_code = "-" if i.exit_code is None else str(i.exit_code)
        if i.state == "stopped" and i.exit_code is None and i.error:
            exit_code = "?"
        ports = ",".join(f"{p.host}:{p.guest}" for p in i.ports) or "-"
        rows.append(
            (
                i.name,
                state,
                str(i.pid or "-"),
                Path(i.image).name.removesuffix(".img"),
                ports,
                i.memory,
                _age(i.uptime),
                exit_code,
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for i in found:
        if i.error and i.state != "running":
            click.echo(f"pyops: {i.name}: {i.error}", err=True)


@instance.command("logs")
@click.argument("name")
@click.option("-f", "--follow", "-w", "--watch", is_flag=True, help="Keep printing until it stops.")
def instance_logs(name: str, follow: bool) -> None:
    """Print the console of instance NAME (all its runs)."""
    from pyops.ops.instances import follow_console

    out = sys.stdout.buffer
    for chunk in follow_console(name, follow=follow):
        out.write(chunk)
        out.flush()


@instance.command("stop")
@click.argument("name")
@click.option(
    "--timeout", type=float, default=30.0, show_default=True, help="Seconds before a kill."
)
def instance_stop(name: str, timeout: float) -> None:
    """Stop instance NAME: the power button (the program gets SIGTERM), then a kill."""
    from pyops.ops.instances import stop_instance

    began = time.monotonic()
    stopped = stop_instance(name, timeout=timeout)
    how = f"exit code {stopped.exit_code}" if stopped.exit_code is not None else stopped.error
    click.echo(f"{stopped.name} {stopped.state} ({how}) after {time.monotonic() - began:.1f} s")


@instance.command("start")
@click.argument("name")
def instance_start(name: str) -> None:
    """Start the stopped instance NAME again, from its disk as it was left."""
    from pyops.ops.instances import start_instance

    click.echo(start_instance(name).name)


@instance.command("delete")
@click.argument("names", nargs=-1, required=True)
def instance_delete(names: tuple[str, ...]) -> None:
    """Delete instances (stopping them first): their disk, log and state go."""
    from pyops.ops.instances import delete_instance

    for name in names:
        delete_instance(name)
        click.echo(f"deleted {name}")


@instance.command("attach")
@click.argument("name")
@click.argument("volume")
def instance_attach(name: str, volume: str) -> None:
    """Hot-plug VOLUME (a name or UUID) into the running instance NAME."""
    from pyops.ops.instances import attach_volume

    attach_volume(name, volume)
    click.echo(f"attached {volume} to {name}")


@instance.command("detach")
@click.argument("name")
@click.argument("volume")
def instance_detach(name: str, volume: str) -> None:
    """Hot-unplug VOLUME from the running instance NAME."""
    from pyops.ops.instances import detach_volume

    detach_volume(name, volume)
    click.echo(f"detached {volume} from {name}")

"""``pyops volume``: the volume store (TFS volumes a guest mounts), and what is inside one."""

from __future__ import annotations

import click

from pyops.cli._app import TqdmProgress, cli
from pyops.cli.image import show_file, show_listing, show_tree


@cli.group()
def volume() -> None:
    """Make, list and read volumes: filesystems a guest mounts with --mounts NAME:/path."""


@volume.command("create")
@click.argument("name")
@click.option(
    "-d", "--data", "source", metavar="DIR", help="Put the content of this folder in the volume."
)
@click.option(
    "-s", "--size", metavar="SIZE", help="Size of the volume: bytes, or with k, m, g (64M, 1G)."
)
def volume_create(name: str, source: str | None, size: str | None) -> None:
    """Make the volume NAME, empty or holding the folder DIR."""
    from pyops.ops.config import parse_size
    from pyops.ops.volumes import check_name, create_volume

    check_name(name)
    size_bytes = parse_size(size, "--size") if size is not None else None
    made = create_volume(name, source, size_bytes, progress=TqdmProgress())
    click.echo(f"created volume {made.name} ({made.uuid}), {_mib(made.size)}, at {made.path}")


@volume.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def volume_list(as_json: bool) -> None:
    """List the volumes."""
    import json

    from pyops.ops.volumes import list_volumes

    volumes = list_volumes()
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in volumes], indent=2))
        return
    if not volumes:
        click.echo("no volumes (pyops volume create NAME -d DIR makes one)")
        return
    width = max(4, *(len(v.name) for v in volumes))
    click.echo(f"{'NAME':<{width}}  {'UUID':<36}  {'SIZE':>12}  PATH")
    for v in volumes:
        click.echo(f"{v.name:<{width}}  {v.uuid:<36}  {_mib(v.size):>12}  {v.path}")


@volume.command("delete")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def volume_delete(names: tuple[str, ...]) -> None:
    """Delete volumes, by name or UUID."""
    from pyops.ops.volumes import delete_volume

    for name in names:
        click.echo(f"deleted {delete_volume(name)}")


@volume.command("ls")
@click.argument("name")
@click.argument("path", default="/")
def volume_ls(name: str, path: str) -> None:
    """List a folder of the volume NAME (a name or UUID), as ``image ls`` does."""
    from pyops.ops.volumes import open_volume

    show_listing(open_volume(name).tree(), path)


@volume.command("tree")
@click.argument("name")
def volume_tree(name: str) -> None:
    """Show every file of the volume NAME as a tree."""
    from pyops.ops.volumes import open_volume

    show_tree(open_volume(name).tree())


@volume.command("cat")
@click.argument("name")
@click.argument("path")
def volume_cat(name: str, path: str) -> None:
    """Write the contents of a file of the volume NAME to standard output."""
    from pyops.ops.volumes import open_volume

    show_file(open_volume(name).tree(), path, f"volume {name}")


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB"

"""``pyops image``: the images pyops built, and what is inside any Nanos image."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from pyops.cli._app import cli
from pyops.errors import PyopsError

if TYPE_CHECKING:
    from pyops.nanos.tree import Tree

# --- pyops image ---------------------------------------------------------------------------


@cli.group()
def image() -> None:
    """Inspect Nanos disk images (ours, Ops's or mkfs's)."""


def _image_file(image: str, last_run: bool = False) -> str:
    """An image given as a path, or by the name ``image list`` shows (``--last-run``: the
    copy its last run wrote to)."""
    from pyops.home import image_file
    from pyops.ops.images import runs_dir

    if last_run:
        path = runs_dir() / image_file(image).name
        if not path.is_file():
            raise PyopsError(
                f"image {image!r} has no last run",
                hint=f"pyops run or pkg load boots it; its copy is kept in {runs_dir()}",
            )
        return str(path)
    named = image_file(image)
    if "/" not in image and named.is_file():
        return str(named)  # a built image's name wins over a file of that name here
    if os.path.exists(image) or "/" in image:
        return image
    raise PyopsError(
        f"no image file or built image named {image!r}",
        hint="give a path, or a name from 'pyops image list'",
    )


def _open_tree(path: str, boot: bool, last_run: bool = False) -> tuple[Any, Any]:
    from pyops.nanos.disk import open_image

    path = _image_file(path, last_run)
    disk = open_image(path)
    if boot:
        tree = disk.boot_tree()
        if tree is None:
            raise PyopsError(f"{path} has no boot filesystem (it is a bare volume)")
        return disk, tree
    return disk, disk.tree()


def _describe(node: Any) -> tuple[str, str, str]:
    from pyops.nanos.tree import Directory, File, HardLink, Symlink

    if isinstance(node, Directory):
        return "d", "-", ""
    if isinstance(node, Symlink):
        return "l", str(len(node.target)), f" -> {node.target}"
    if isinstance(node, HardLink):
        return "h", "-", f" => {node.target}"
    if isinstance(node, File):
        return "-", str(node.size), ""
    return "?", "-", ""


@image.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def image_list(as_json: bool) -> None:
    """List the images built by pyops."""
    import json

    from pyops.ops.images import list_images

    entries = list_images()
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    if not entries:
        click.echo("no images (pyops build PROGRAM makes one)")
        return
    width = max(len(e.name) for e in entries)
    for e in entries:
        click.echo(f"{e.name:<{width}}  {e.arch or '?':<5}  {e.size / 1048576:8.1f} MiB  {e.path}")


@image.command("rm")
@click.argument("names", nargs=-1, required=True)
def image_rm(names: tuple[str, ...]) -> None:
    """Delete built images by name."""
    from pyops.ops.images import remove_image

    for name in names:
        click.echo(f"removed {remove_image(name)}")


@image.command("ls")
@click.argument("image_path", metavar="IMAGE")
@click.argument("path", default="/")
@click.option("--boot", is_flag=True, help="Look in the boot filesystem (kernel, klibs).")
@click.option("--last-run", is_flag=True, help="Read the copy IMAGE's last run wrote to.")
def image_ls(image_path: str, path: str, boot: bool, last_run: bool) -> None:
    """List a directory of an image (a path, or a name from ``image list``)."""
    _disk, tree = _open_tree(image_path, boot, last_run)
    show_listing(tree, path)


def show_listing(tree: Tree, path: str) -> None:
    """``ls`` of ``path`` in a :class:`~pyops.nanos.tree.Tree` read from an image or volume:
    a folder's entries, or the one entry ``path`` names."""
    from pyops.nanos.tree import Directory

    real, node = tree.lookup(path)
    if not isinstance(node, Directory):
        kind, size, extra = _describe(node)
        click.echo(f"{kind} {size:>12} {real}{extra}")
        return
    for name in sorted(node.entries, key=os.fsencode):
        kind, size, extra = _describe(node.entries[name])
        click.echo(f"{kind} {size:>12} {name}{extra}")


@image.command("tree")
@click.argument("image_path", metavar="IMAGE")
@click.option("--boot", is_flag=True, help="Show the boot filesystem (kernel, klibs).")
@click.option("--last-run", is_flag=True, help="Read the copy IMAGE's last run wrote to.")
def image_tree(image_path: str, boot: bool, last_run: bool) -> None:
    """Show every file of an image as a tree."""
    _disk, tree = _open_tree(image_path, boot, last_run)
    show_tree(tree)


def show_tree(tree: Tree) -> None:
    """Every entry of a :class:`~pyops.nanos.tree.Tree` read from an image or volume, drawn
    as a tree."""
    from pyops.nanos.tree import Directory

    click.echo("/")
    # Depth first with an explicit stack: an image may nest folders thousands deep.
    stack: list[tuple[Directory, list[str], str]] = [
        (tree.root, sorted(tree.root.entries, key=os.fsencode), "")
    ]
    while stack:
        directory, names, prefix = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop(0)
        last = not names
        child = directory.entries[name]
        kind, size, extra = _describe(child)
        size_text = f" ({size} bytes)" if kind == "-" else ""
        click.echo(f"{prefix}{'└── ' if last else '├── '}{name}{extra}{size_text}")
        if isinstance(child, Directory):
            child_names = sorted(child.entries, key=os.fsencode)
            stack.append((child, child_names, prefix + ("    " if last else "│   ")))


@image.command("cat")
@click.argument("image_path", metavar="IMAGE")
@click.argument("path")
@click.option("--boot", is_flag=True, help="Read from the boot filesystem.")
@click.option("--last-run", is_flag=True, help="Read the copy IMAGE's last run wrote to.")
def image_cat(image_path: str, path: str, boot: bool, last_run: bool) -> None:
    """Write the contents of a file in an image to standard output."""
    _disk, tree = _open_tree(image_path, boot, last_run)
    show_file(tree, path, image_path)


def show_file(tree: Tree, path: str, where: str) -> None:
    """Write the file ``path`` of a :class:`~pyops.nanos.tree.Tree` read from an image or
    volume (``where``, for the message when it is not a file) to standard output."""
    from pyops.nanos.tfs import iter_file_contents
    from pyops.nanos.tree import Contents, File, ImageData

    real, node = tree.lookup(path)
    if not isinstance(node, File):
        raise PyopsError(f"{path} is not a regular file in {where}")
    out = sys.stdout.buffer
    source = node.source
    if isinstance(source, Contents):
        out.write(source.data)
        return
    assert isinstance(source, ImageData)
    for piece in iter_file_contents(source):
        out.write(piece)
    out.flush()


@image.command("manifest")
@click.argument("image_path", metavar="IMAGE")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of Nanos syntax.")
@click.option("--last-run", is_flag=True, help="Read the copy IMAGE's last run wrote to.")
def image_manifest(image_path: str, as_json: bool, last_run: bool) -> None:
    """Show the root tuple of an image: program, arguments, environment and other keys."""
    import json

    from pyops.limits import JSON_DEPTH
    from pyops.nanos.disk import open_image
    from pyops.nanos.tfs import format_uuid
    from pyops.nanos.tuples import canonical, to_text

    disk = open_image(_image_file(image_path, last_run))
    settings = {k: v for k, v in disk.root.root.items() if k != "children"}
    JSON_DEPTH.check(_depth(settings), "the image's root settings: their nesting")
    config = {k: canonical(v) for k, v in settings.items()}
    if as_json:
        info = {
            "manifest": _jsonable(config),
            "root": {"uuid": format_uuid(disk.root.info.uuid), "label": disk.root.info.label},
        }
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    for key in sorted(config):
        click.echo(f"{key}: {to_text(config[key])}")


def _depth(value: Any) -> int:
    """How deeply dicts and lists nest in ``value``, without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > 10_000:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value

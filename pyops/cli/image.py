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
@click.option("-j", "--json", "as_json", is_flag=True, help="Print JSON.")
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


def _delete_options(f: Any) -> Any:
    f = click.argument("names", nargs=-1, metavar="[NAME]...")(f)
    f = click.option(
        "--lru",
        metavar="AGE",
        help="Also delete every image not built or booted within AGE: 12h, 3d, 2w, 1m "
        "(months), 1y.",
    )(f)
    f = click.option(
        "--force",
        is_flag=True,
        help="Accepted for Ops; nothing to override (instances boot their own copies).",
    )(f)
    return f


@image.command("delete")
@_delete_options
@click.option("--assume-yes", "-y", is_flag=True, help="Delete without asking.")
def image_delete(names: tuple[str, ...], lru: str | None, force: bool, assume_yes: bool) -> None:
    """Delete built images by name, or those not used for a while (--lru).

    "Used" is built or booted: the latest of the image file's time, its last run's copy
    (``run``, ``pkg load``) and the instances made from it. Lists the images and asks
    first, as Ops does, unless --assume-yes. Instances boot their own copies, so deleting
    an image never disturbs one; --force has nothing to override.
    """
    _delete(names, lru, ask=not assume_yes)


@image.command("rm")
@_delete_options
def image_rm(names: tuple[str, ...], lru: str | None, force: bool) -> None:
    """Delete built images by name (``delete --assume-yes``)."""
    _delete(names, lru, ask=False)


def _delete(names: tuple[str, ...], lru: str | None, *, ask: bool) -> None:
    from pyops.ops.images import least_recently_used, remove_images

    if not names and lru is None:
        raise click.UsageError("name the images to delete, or give --lru AGE")
    chosen = list(names)
    if lru is not None:
        chosen += [entry.name for entry in least_recently_used(lru)]
    chosen = list(dict.fromkeys(chosen))
    if not chosen:
        click.echo("no images to delete")
        return
    if ask:
        from pyops.ops.images import find_image

        for name in chosen:
            find_image(name)  # an unknown name is refused before anything is asked
        click.echo("You are about to delete the next images:")
        for name in chosen:
            click.echo(_printable(name))
        if not _confirm("Are you sure? (yes/no)"):
            click.echo("nothing deleted")
            return
    for path in remove_images(chosen):
        click.echo(f"deleted {_printable(str(path))}")


def _confirm(question: str) -> bool:
    """Ops's question: yes or no, asked again until it is one of them."""
    click.echo(question)
    while True:
        answer = sys.stdin.readline()
        if not answer:
            raise PyopsError(
                "no answer on standard input: nothing deleted",
                hint="--assume-yes deletes without asking",
            )
        answer = answer.strip()
        if answer in ("y", "Y", "yes", "Yes", "YES"):
            return True
        if answer in ("n", "N", "no", "No", "NO"):
            return False
        click.echo("Please type yes or no and then press enter:")


def _printable(text: str) -> str:
    from pyops.nanos.dump import printable

    return printable(text)


@image.command("ls")
@click.argument("image_path", metavar="IMAGE", required=False)
@click.argument("path", default="/")
@click.option(
    "--boot", "--bootfs", "boot", is_flag=True, help="Look in the boot filesystem (kernel, klibs)."
)
@click.option("--last-run", is_flag=True, help="Read the copy IMAGE's last run wrote to.")
@click.option(
    "-l",
    "--long-format",
    "--long",
    "long_format",
    is_flag=True,
    help="Ops's long listing: size, time and name of each entry.",
)
def image_ls(
    image_path: str | None, path: str, boot: bool, last_run: bool, long_format: bool
) -> None:
    """List a directory of an image (a path, or a name from ``image list``)."""
    if image_path is None:
        raise click.UsageError(
            "Missing argument 'IMAGE' (the image to look into; pyops image list lists images)."
        )
    _disk, tree = _open_tree(image_path, boot, last_run)
    show_listing(tree, path, long_format=long_format)


def show_listing(tree: Tree, path: str, *, long_format: bool = False) -> None:
    """``ls`` of ``path`` in a :class:`~pyops.nanos.tree.Tree` read from an image or volume:
    a folder's entries, or the one entry ``path`` names. ``long_format`` prints Ops's
    ``image ls -l`` columns."""
    from pyops.nanos.tree import Directory, HardLink, Node

    real, node = tree.lookup(path)
    entries: list[tuple[str, Node]]
    if not isinstance(node, Directory):
        entries = [(real, node)]
    else:
        entries = [(name, node.entries[name]) for name in sorted(node.entries, key=os.fsencode)]
    for name, entry in entries:
        if long_format:
            if isinstance(entry, HardLink):  # Ops sees another name of the same file
                entry = tree.resolve_hardlink(entry)
            click.echo(_long_line(name, entry))
        else:
            kind, size, extra = _describe(entry)
            click.echo(f"{kind} {size:>12} {_printable(name)}{_printable(extra)}")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _long_line(name: str, node: Any) -> str:
    """One line of Ops's ``image ls -l`` (cmd_image.go: imageLsFile, imageLsDir,
    imageLsSymlink), without its colours: size, modification time, name."""
    from pyops.nanos.tree import Directory, File, Symlink

    when = _ansic(getattr(node, "attributes", {}).get("mtime"))
    shown = _printable(name)
    if isinstance(node, Directory):
        return f"\t {when} {shown}/"
    if isinstance(node, Symlink):
        return f"{len(node.target):8d} {when} {shown} -> {_printable(node.target)}"
    size = node.size if isinstance(node, File) else 0
    return f"{size:8d} {when} {shown}"


def _ansic(mtime: Any) -> str:
    """A Nanos timestamp (seconds in the high 32 bits) in Go's ``time.ANSIC`` layout, in local
    time; no or a broken ``mtime`` is the epoch, as in Ops."""
    import datetime

    if isinstance(mtime, bytes):
        mtime = mtime.decode("ascii", "replace")
    seconds = 0
    if isinstance(mtime, str) and mtime.isascii() and mtime.isdigit() and len(mtime) <= 19:
        value = int(mtime)
        seconds = value >> 32 if value < 1 << 63 else 0
    try:
        t = datetime.datetime.fromtimestamp(seconds)
    except (OverflowError, OSError, ValueError):
        t = datetime.datetime.fromtimestamp(0)
    return (
        f"{_DAYS[t.weekday()]} {_MONTHS[t.month - 1]} {t.day:2d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} {t.year}"
    )


@image.command("tree")
@click.argument("image_path", metavar="IMAGE")
@click.option(
    "--boot", "--bootfs", "boot", is_flag=True, help="Show the boot filesystem (kernel, klibs)."
)
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
        shown = _printable(name) + _printable(extra)
        click.echo(f"{prefix}{'└── ' if last else '├── '}{shown}{size_text}")
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


@image.command("cp")
@click.argument("image_path", metavar="IMAGE")
@click.argument("paths", nargs=-1, metavar="SRC... DEST")
@click.option("-r", "--recursive", is_flag=True, help="Copy folders and what they hold.")
@click.option(
    "-L",
    "--dereference",
    is_flag=True,
    help="Copy the file a link in a copied folder points to, not the link.",
)
@click.option("--boot", "--bootfs", "boot", is_flag=True, help="Copy from the boot filesystem.")
@click.option("--last-run", is_flag=True, help="Copy from the copy IMAGE's last run wrote to.")
def image_cp(
    image_path: str,
    paths: tuple[str, ...],
    recursive: bool,
    dereference: bool,
    boot: bool,
    last_run: bool,
) -> None:
    """Copy files or folders out of an image to DEST on this machine.

    Nothing is written outside DEST, whatever names and links the image holds: links are
    copied as links (never written through), files keep their holes, and each file appears
    under its name only once complete. A source that fails is reported, the others are
    still copied, and the exit status is 1.
    """
    from pyops.nanos.extract import copy_out

    if len(paths) < 2:
        raise click.UsageError("give the files to copy (SRC...) and where to (DEST)")
    _disk, tree = _open_tree(image_path, boot, last_run)
    result = copy_out(tree, paths[:-1], paths[-1], recursive=recursive, dereference=dereference)
    for folder in result.omitted:
        click.echo(f"error: {_printable(folder)} is a folder: not copied without -r", err=True)
    for error in result.errors:
        click.echo(f"error: {_printable(str(error))}", err=True)
        if error.hint:
            click.echo(f"hint: {error.hint}", err=True)
    if not result.ok:
        click.get_current_context().exit(1)


@image.command("resize")
@click.argument("image_path", metavar="IMAGE")
@click.argument("size")
def image_resize(image_path: str, size: str) -> None:
    """Make IMAGE SIZE bytes long, giving the guest the new room.

    SIZE is read as Ops reads it: 2G is 2,000,000,000 bytes, 2Gi or 2GiB is 2 GiB. The
    root filesystem grows to the new end (its partition entry too, and the file stays
    sparse). Shrinking is refused below what the image holds.
    """
    from pyops.ops.images import resize_image

    done = resize_image(_image_file(image_path), size)
    if done.size == done.old_size:
        click.echo(f"{done.path} is {done.size:,} bytes already")
        return
    click.echo(
        f"resized {done.path}: {done.old_size:,} -> {done.size:,} bytes "
        f"({done.size / 1048576:.1f} MiB)"
    )


@image.command("env")
@click.argument("image_path", metavar="IMAGE")
@click.option("--last-run", is_flag=True, help="Read the copy IMAGE's last run wrote to.")
def image_env(image_path: str, last_run: bool) -> None:
    """Show the environment variables stored in IMAGE, as ``NAME: VALUE`` lines."""
    from pyops.ops.images import image_environment

    env = image_environment(_image_file(image_path, last_run))
    if not env:
        click.echo("(none)")
        return
    for name, value in env.items():
        click.echo(f"{_printable(name)}: {_printable(value)}")

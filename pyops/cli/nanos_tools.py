"""``pyops mkfs`` and ``pyops dump``: drop-ins for Nanos's own ``mkfs`` and ``dump`` tools,
with their flags and their output, for Nanos's Makefile and for manifests written for them."""

from __future__ import annotations

import sys

import click

from pyops.cli._app import TqdmProgress, cli
from pyops.errors import InvalidInput, PyopsError


def _write(text: str | bytes) -> None:
    out = sys.stdout.buffer
    out.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape"))
    out.flush()


@cli.command("mkfs")
@click.argument("image")
@click.option("-b", "boot_image", metavar="BOOT_IMAGE", help="Boot image to put in front.")
@click.option("-u", "uefi_loader", metavar="UEFI_LOADER", help="UEFI loader (adds an ESP).")
@click.option("-k", "kernel", metavar="KERNEL", help="Kernel image for the boot filesystem.")
@click.option("-l", "label", metavar="LABEL", default="", help="Root filesystem label.")
@click.option("-r", "target_root", metavar="TARGET_ROOT", help="Look host: paths up here first.")
@click.option(
    "-s",
    "size",
    metavar="SIZE",
    help="Smallest image size: bytes, or with k, m, g (KiB, MiB, GiB).",
)
@click.option(
    "-t",
    "tuples",
    metavar="(KEY:VALUE ...)",
    multiple=True,
    help="Add these entries to the manifest's root (repeatable).",
)
@click.option("-e", "empty", is_flag=True, help="Make an empty filesystem; read no manifest.")
def mkfs_command(
    image: str,
    boot_image: str | None,
    uefi_loader: str | None,
    kernel: str | None,
    label: str,
    target_root: str | None,
    size: str | None,
    tuples: tuple[str, ...],
    empty: bool,
) -> None:
    """Write IMAGE from the Nanos manifest on standard input, as Nanos's mkfs does:

    pyops mkfs [options] IMAGE < MANIFEST, or pyops mkfs [options] -e IMAGE.
    """
    from pyops.limits import MANIFEST_TEXT_BYTES
    from pyops.nanos.mkfs import MkfsOptions, mkfs, parse_size

    size_bytes = None
    if size is not None:
        size_bytes = parse_size(size)
        if size_bytes is None:
            raise InvalidInput(
                f"invalid image file size {size}",
                hint="give bytes, or a number with k, m or g (KiB, MiB, GiB): -s 64M",
            )
    options = MkfsOptions(
        boot_image=boot_image,
        kernel=kernel,
        uefi_loader=uefi_loader,
        label=label,
        target_root=target_root,
        size=size_bytes,
        tuples=tuples,
        empty=empty,
    )
    manifest = None
    if not empty:
        if sys.stdin.isatty():
            click.echo("pyops mkfs: reading the manifest from standard input", err=True)
        manifest = sys.stdin.buffer.read(MANIFEST_TEXT_BYTES.value() + 1)
    result = mkfs(image, manifest, options, progress=TqdmProgress())
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    escape = sys.stdout.isatty()
    for written in result.filesystems:
        _write(written.report(escape=escape))


@cli.command("dump")
@click.argument("image")
@click.option(
    "-d", "target_dir", metavar="TARGET_DIR", help="Copy the filesystem's files into this folder."
)
@click.option("-t", "as_tree", is_flag=True, help="Show the filesystem as a tree.")
@click.option("-l", "klog", is_flag=True, help="Show the kernel's crash log.")
def dump_command(image: str, target_dir: str | None, as_tree: bool, klog: bool) -> None:
    """Print the root filesystem of IMAGE (a Nanos disk or volume), as Nanos's dump does."""
    from pyops.nanos import dump

    if klog:
        offset = dump.first_partition(image)
        if not offset:
            raise PyopsError(f"{image}: no boot filesystem found", hint="is it a Nanos disk?")
        _write(f"detected filesystem at {offset:#x}\n")
        log = dump.read_klog(image, offset)
        if log is None:
            click.echo("no crash log found on image", err=True)
            return
        _write(log.report(escape=sys.stdout.isatty()))
        return
    found, volume = dump.open_root(image)
    # On a terminal, what the image holds cannot drive it (Nanos's dump prints it as it is).
    escape = sys.stdout.isatty()
    if found.detected:
        _write(f"detected filesystem at {found.offset:#x}\n")
    if as_tree:
        _write(dump.header(volume, escape=escape) + "\n")
    else:
        _write(dump.metadata(volume, escape=escape))
    if target_dir is not None:
        copied = dump.extract(volume, image, target_dir)
        if copied.errors:
            raise copied.errors[0]
    if as_tree:
        for line in dump.tree_lines(volume, escape=escape):
            _write(line)

"""``pyops pull``: an image from a registry into the cache, with no Docker daemon."""

from __future__ import annotations

from pathlib import Path

import click

from pyops.cli._app import TqdmProgress, _arch_option, _credentials, _platform, cli
from pyops.errors import PyopsError


@cli.command("pull")
@click.argument("image")
@_arch_option("Take the image's variant for this architecture (linux/ARCH).")
@click.option(
    "--platform",
    default=None,
    help="os/arch[/variant] (default: the host's own architecture when the image has it, "
    "else linux/amd64).",
)
@click.option("--insecure", is_flag=True, help="Use plain HTTP for a non-loopback registry.")
@click.option("--username", help="Registry user name (the password is read from stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin.")
@click.option(
    "--extract",
    type=click.Path(file_okay=False),
    help="Also apply the layers to this (new or empty) directory.",
)
def pull_command(
    image: str,
    arch: object,
    platform: str | None,
    insecure: bool,
    username: str | None,
    password_stdin: bool,
    extract: str | None,
) -> None:
    """Pull IMAGE into the cache (PYOPS_HOME, default ~/.pyops), with no Docker daemon."""

    from pyops.oci.layers import unpack_layers
    from pyops.oci.pull import pull
    from pyops.oci.store import Store

    credentials = _credentials(username, password_stdin)
    progress = TqdmProgress()
    pulled = pull(
        image,
        store=Store.default(),
        platform=_platform(arch, platform),
        credentials=credentials,
        insecure=insecure,
        progress=progress,
    )
    click.echo(f"pyops: platform {pulled.platform}", err=True)
    click.echo(f"{pulled.ref.registry}/{pulled.ref.repository}@{pulled.digest}")
    for layer in pulled.layers:
        click.echo(f"  {layer}")
    if extract is not None:
        from pyops import atomic

        dest = Path(extract)
        if dest.is_dir() and any(dest.iterdir()):
            raise PyopsError(
                f"{dest} is not empty", hint="--extract takes a new or empty directory"
            )
        diff_ids = pulled.config.diff_ids or None
        # Unpacked beside it and renamed into place: a failed unpack leaves nothing there.
        with atomic.atomic_path(dest) as tmp:
            unpack_layers(pulled.layers, tmp, diff_ids=diff_ids, progress=progress)
        click.echo(f"extracted to {extract}")

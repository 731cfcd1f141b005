"""``pyops kernel``: Nanos releases in PYOPS_HOME."""

from __future__ import annotations

from typing import Any

import click

from pyops.arch import Arch
from pyops.cli._app import TqdmProgress, _arch_option, cli

# --- pyops kernel: Nanos releases in the cache ---------------------------------------------


@cli.group()
def kernel() -> None:
    """Manage Nanos releases (kernel, boot.img, klibs) in the cache (PYOPS_HOME)."""


@kernel.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the releases as JSON.")
def kernel_list(as_json: bool) -> None:
    """List the installed Nanos releases (x86-64 and arm64), newest last."""
    import json

    from pyops.nanos.release import installed_releases, release_info

    releases = installed_releases()
    if as_json:
        click.echo(json.dumps([release_info(r) for r in releases], indent=2))
        return
    if not releases:
        click.echo("no Nanos release installed (pyops kernel install [VERSION])", err=True)
    for release in releases:
        click.echo(f"{release.version}\t{release.arch}\t{release.path}")


@kernel.command("install")
@click.argument("version", required=False)
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True),
    help="Install this release tarball or unpacked release folder (no network).",
)
@click.option(
    "--version", "from_version", help="The version of --from, when its name does not say it."
)
@click.option("--force", is_flag=True, help="Download again even if the version is installed.")
@click.option("-n", "--nightly", is_flag=True, help="Nanos's nightly build (as VERSION nightly).")
@_arch_option(
    "Download the release for this architecture (default: amd64; arm64 is Nanos's virt "
    "platform). With --from, the kernel says which it is."
)
def kernel_install(
    version: str | None,
    source: str | None,
    from_version: str | None,
    force: bool,
    nightly: bool,
    arch: Any,
) -> None:
    """Install Nanos VERSION (default: the latest), or a release given with --from."""
    from pyops.nanos.release import (
        NanosRelease,
        download_release,
        find_installed,
        install_release_from,
        latest_version,
    )

    release: NanosRelease | None
    if nightly:
        from pyops.nanos.release import NIGHTLY

        if version not in (None, NIGHTLY) or from_version not in (None, NIGHTLY):
            raise click.UsageError("--nightly and a version do not go together.")
        if source is not None:
            from_version = NIGHTLY
        else:
            version = NIGHTLY
    if source is not None:
        if version is not None:
            raise click.UsageError("give the version of --from with --version, not as VERSION")
        release = install_release_from(source, version=from_version)
        if arch is not None and release.arch != arch:
            click.echo(f"pyops: note: {source} is the {release.arch} release, not {arch}", err=True)
    else:
        if from_version is not None:
            raise click.UsageError("--version goes with --from; give VERSION as an argument")
        wanted = arch or Arch.AMD64
        chosen = version or latest_version(refresh=force)
        release = None if force else find_installed(chosen, arch=wanted)
        if release is not None:
            click.echo(f"Nanos {release.label} is already installed in {release.path}", err=True)
        else:
            release = download_release(chosen, progress=TqdmProgress(), arch=wanted)
    click.echo(f"{release.version}\t{release.arch}\t{release.path}")


@kernel.command("rm")
@click.argument("version")
@_arch_option("The architecture of the release to remove (default: amd64).")
def kernel_rm(version: str, arch: Any) -> None:
    """Remove the installed Nanos release VERSION."""
    from pyops.nanos.release import remove_release

    click.echo(f"removed {remove_release(version, arch=arch or Arch.AMD64)}")

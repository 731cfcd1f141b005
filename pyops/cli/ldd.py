"""``pyops ldd``: the libraries a program loads, resolved without running it."""

from __future__ import annotations

import click

from pyops.cli._app import cli

# --- ldd: the dependency closure of a program --------------------------------------------


@cli.command("ldd")
@click.argument("program")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Resolve inside this root filesystem; PROGRAM is a path inside it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--list", "as_list", is_flag=True, help="Print the in-root paths to package.")
@click.option("--allow-missing", is_flag=True, help="List missing libraries and go on.")
@click.option(
    "--env",
    "env_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="The program's environment (LD_LIBRARY_PATH, LD_PRELOAD); the host's is not used.",
)
@click.option("--machine", default=None, help="Require this machine (x86_64, arm64, ...).")
@click.option("--cwd", default="/", show_default=True, help="The program's working directory.")
@click.option(
    "--runtime-extras", is_flag=True, help="Include run-time extras (NSS, libgcc_s) in --list."
)
def ldd_command(
    program: str,
    root: str | None,
    as_json: bool,
    as_list: bool,
    allow_missing: bool,
    env_items: tuple[str, ...],
    machine: str | None,
    cwd: str,
    runtime_extras: bool,
) -> None:
    """Show every file PROGRAM loads, resolved like the real loader, without running it."""
    import json

    from pyops.elf.ldd import format_tree, resolve
    from pyops.environ import parse_env

    env = parse_env(env_items, source="--env")
    resolution = resolve(
        program,
        root,
        env=env,
        machine=machine,
        cwd=cwd,
        allow_missing=allow_missing,
        include_runtime_extras=runtime_extras,
    )
    if as_json:
        click.echo(json.dumps(resolution.to_dict(), indent=2))
    elif as_list:
        for path in resolution.paths():
            click.echo(path)
    else:
        click.echo(format_tree(resolution))
    for missing in resolution.missing:
        click.echo(
            f"warning: {missing.name} (needed by {missing.needed_by}): {missing.reason}",
            err=True,
        )

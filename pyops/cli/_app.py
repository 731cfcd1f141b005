"""What every command shares: the top-level group, errors as one line, progress bars,
credentials and config.json reading. This package is the only one that prints, draws
progress bars or chooses exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pyops.errors import PyopsError
from pyops.version import __version__

if TYPE_CHECKING:
    from tqdm import tqdm

F = TypeVar("F", bound=Callable[..., Any])

PORT_HELP = "Forward a TCP port: PORT, HOST-GUEST (as Ops), HOST:GUEST, or a list A,B."
PORT_OPTION = click.option("-p", "--port", "ports", multiple=True, help=PORT_HELP)
"""``-p``, as run, pkg load and instance create take it."""
ACCELS = ["auto", "kvm", "hvf", "tcg", "true", "false"]
ACCEL_HELP = (
    "Hypervisor: KVM or HVF for a guest of the host's own architecture, TCG (emulation) "
    "otherwise [auto]; Ops's --accel=true/false mean auto/tcg."
)


class TqdmProgress:
    """A :class:`pyops.progress.Progress` drawn with one tqdm bar per key; with
    ``verbose``, each step is printed with its time when it ends; with ``quiet``, nothing."""

    def __init__(self, verbose: bool = False, quiet: bool = False) -> None:
        self._bars: dict[str, tqdm[Any]] = {}
        self._verbose = verbose
        self._quiet = quiet
        self._steps: dict[str, float] = {}

    def begin_step(self, name: str) -> None:
        import time

        self._steps[name] = time.perf_counter()

    def end_step(self, name: str, ok: bool) -> None:
        import time

        began = self._steps.pop(name, None)
        if self._verbose and began is not None:
            outcome = "" if ok else " (failed)"
            click.echo(f"pyops: {name}: {time.perf_counter() - began:.2f} s{outcome}", err=True)

    def start(self, key: str, label: str, total: int | None) -> None:
        if self._quiet:
            return
        # tqdm is imported when a bar is first drawn: a run of a cached image draws none.
        from tqdm import tqdm

        self._bars[key] = tqdm(
            total=total,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=False,
            disable=None,
            file=sys.stderr,
            position=len(self._bars),
        )

    def advance(self, key: str, amount: int) -> None:
        bar = self._bars.get(key)
        if bar is not None:
            bar.update(amount)

    def finish(self, key: str) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None:
            bar.close()


def _credentials(username: str | None, password_stdin: bool) -> Any:
    """Registry credentials from --username and --password-stdin (given together or not)."""
    from pyops.oci.auth import Credentials

    if not (password_stdin or username):
        return None
    if not (password_stdin and username):
        raise click.UsageError("--username and --password-stdin go together.")
    password = sys.stdin.read().rstrip("\r\n")
    return Credentials(username, password)


class _Group(click.Group):
    """Turns PyopsError into a message and an exit code; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PyopsError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # The reader of our output went away (``pyops image cat ... | head``): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(1)
        except OSError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(
                f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
                err=True,
            )
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyops")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Build and boot Nanos unikernel images, with no Docker daemon."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _show_command(argv: Sequence[str]) -> None:
    import shlex

    click.echo(shlex.join(argv), err=True)


def _show_note(note: Any) -> None:
    """A :class:`pyops.ops.advice.Note` on stderr: what happened, then the fix."""
    lines = note.text.splitlines() or [""]
    click.echo(f"pyops: note: {lines[0]}", err=True)
    for line in lines[1:]:
        click.echo(f"pyops:   {line}", err=True)
    if note.fix:
        click.echo(f"pyops: fix: {note.fix}", err=True)


def _arch_option(help_text: str) -> Callable[[F], F]:
    """``--arch``: amd64 or arm64, in any spelling (``x86_64``, ``aarch64``...), given to the
    command as a :class:`pyops.arch.Arch` (or None when absent)."""

    def convert(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        from pyops.nanos.release import check_arch

        try:
            from pyops import arch

            return check_arch(arch.parse(value))
        except PyopsError as exc:
            raise click.BadParameter(f"{exc} ({exc.hint})" if exc.hint else str(exc)) from None

    return click.option("--arch", "arch", callback=convert, metavar="amd64|arm64", help=help_text)


def _platform(arch: Any, platform: str | None) -> str | None:
    """The platform ``--arch`` and ``--platform`` ask for together (None: the default)."""
    if arch is None:
        return platform
    wanted = f"linux/{arch.value}"
    if platform is not None:
        from pyops.oci.schema import Platform

        if Platform.parse(platform).architecture != arch.value:
            raise click.UsageError(f"--arch {arch.value} and --platform {platform} disagree.")
        return platform
    return wanted


def _load_ops_config(config_file: str | None) -> Any:
    """config.json (``-c``) over Ops's default config (``OPS_DEFAULT_CONFIG`` or
    ``~/.opsrc``), also without ``-c``."""
    from pyops.ops.config import load_ops_config

    return load_ops_config(config_file or None)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``pyops`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="pyops")


# Command groups are defined in the sections below, one per concept.


# -- pull: fetch an image from a registry into the store ---------------------------------------

"""The ``pyops`` command line: a thin click skin over the library.

This is the only module that prints, draws progress bars or chooses exit codes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pyops.errors import PyopsError
from pyops.version import __version__

if TYPE_CHECKING:
    from tqdm import tqdm

F = TypeVar("F", bound=Callable[..., Any])


class TqdmProgress:
    """A :class:`pyops.progress.Progress` drawn with one tqdm bar per key; with
    ``verbose``, each step is printed with its time when it ends."""

    def __init__(self, verbose: bool = False) -> None:
        self._bars: dict[str, tqdm[Any]] = {}
        self._verbose = verbose
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
    from pyops.auth import Credentials

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


# --- pyops pkg: local packages (Ops's format) made from images ------------------------------


@cli.group("pkg")
def pkg() -> None:
    """Local packages (Ops-compatible) in PYOPS_HOME/local_packages: make, list, remove."""


@pkg.command("from-docker")
@click.argument("image")
@click.option("-f", "--file", "program", required=True, help="Program name on PATH, or its path.")
@click.option("-n", "--name", help="Package name (default: <repository>_<tag>).")
@click.option("--copy", is_flag=True, help="Keep the whole root filesystem, not the closure.")
@click.option("--platform", default="linux/amd64", show_default=True, help="os/arch[/variant].")
@click.option("--insecure", is_flag=True, help="Use plain HTTP for a non-loopback registry.")
@click.option("--username", help="Registry user name (the password is read from stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin.")
@click.option("-v", "--verbose", is_flag=True, help="Print each step with its time.")
def pkg_from_docker(
    image: str,
    program: str,
    name: str | None,
    copy: bool,
    platform: str,
    insecure: bool,
    username: str | None,
    password_stdin: bool,
    verbose: bool,
) -> None:
    """Make a package of PROGRAM and its libraries from IMAGE, with no Docker daemon.

    Prints the package name.
    """
    from pyops.package import from_docker

    credentials = _credentials(username, password_stdin)
    made = from_docker(
        image,
        program,
        name=name,
        copy=copy,
        platform=platform,
        credentials=credentials,
        insecure=insecure,
        progress=TqdmProgress(verbose=verbose),
    )
    click.echo(made.name)


@pkg.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pkg_list(as_json: bool) -> None:
    """List the local packages."""
    import json

    from pyops.package import list_packages

    packages = list_packages()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in packages], indent=2))
        return
    rows = [("NAME", "VERSION", "PROGRAM", "IMAGE")]
    rows += [(p.name, p.version, p.program, p.image or "-") for p in packages]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[3]]))


@pkg.command("contents")
@click.argument("name")
def pkg_contents(name: str) -> None:
    """Show the sysroot of package NAME as a tree."""
    from pyops.package import load_package

    sysroot = load_package(name).sysroot

    def show(directory: str, prefix: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for i, entry in enumerate(entries):
            last = i == len(entries) - 1
            if entry.is_symlink():
                extra = f" -> {os.readlink(entry.path)}"
            elif entry.is_dir():
                extra = ""
            else:
                extra = f" ({entry.stat(follow_symlinks=False).st_size} bytes)"
            click.echo(f"{prefix}{'└── ' if last else '├── '}{entry.name}{extra}")
            if entry.is_dir(follow_symlinks=False):
                show(entry.path, prefix + ("    " if last else "│   "))

    click.echo("/")
    if sysroot.is_dir():
        show(os.fspath(sysroot), "")


@pkg.command("rm")
@click.argument("name")
def pkg_rm(name: str) -> None:
    """Remove package NAME."""
    from pyops.package import remove_package

    remove_package(name)


@pkg.command("load")
@click.argument("name")
@click.option("-a", "--args", "args", multiple=True, help="Program arguments (repeat).")
@click.option("-e", "--env", "env", multiple=True, help="NAME=VALUE in the guest (repeat).")
@click.option("-p", "--port", "ports", multiple=True, help="Forward PORT or HOST:GUEST (TCP).")
@click.option("-c", "--config", "config_file", help="An Ops config.json.")
@click.option("-i", "--imagename", "image_name", help="Image name (default: the package).")
@click.option("-m", "--memory", default=None, help="Guest memory (default 2G).")
@click.option("--smp", type=int, default=None, help="Number of virtual CPUs.")
@click.option(
    "--accel", type=click.Choice(["auto", "kvm", "hvf", "tcg"]), default=None, help="[auto]"
)
@click.option("--nanos-version", help="Nanos release to use (default: newest installed).")
@click.option("-l", "--local", is_flag=True, help="Accepted for Ops compatibility.")
@click.option("-v", "--verbose", is_flag=True, default=None, help="Print the qemu command line.")
@click.option("--force", is_flag=True, help="Rewrite the image even if it is up to date.")
@click.pass_context
def pkg_load(
    ctx: click.Context,
    /,
    name: str,
    args: tuple[str, ...],
    env: tuple[str, ...],
    ports: tuple[str, ...],
    config_file: str | None,
    image_name: str | None,
    memory: str | None,
    smp: int | None,
    accel: str | None,
    nanos_version: str | None,
    local: bool,
    verbose: bool | None,
    force: bool,
) -> None:
    """Build an image from local package NAME and boot it; exit with its exit code.

    Without -a the package's own arguments (the image's Entrypoint and Cmd) are used.  An
    argument naming a file in the current directory is copied into the program's working
    directory in the image.
    """
    from pyops.build import parse_env
    from pyops.ops.recipes import BuildFlags, RunFlags, run_package

    del local  # packages are always local here; the flag exists for Ops's muscle memory
    code = run_package(
        _load_ops_config(config_file),
        name,
        BuildFlags(
            args=args, env=parse_env(env), name=image_name, nanos_version=nanos_version, force=force
        ),
        RunFlags(ports=ports, memory=memory, cpus=smp, accel=accel, verbose=verbose),
        progress=TqdmProgress(verbose=bool(verbose)),
        show_command=_show_command,
    )
    ctx.exit(code)


def _show_command(argv: Sequence[str]) -> None:
    import shlex

    click.echo(shlex.join(argv), err=True)


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
        click.option("--size", help="Total image size, e.g. 512M (default: fit content)."),
        click.option("--nanos-version", help="Nanos release to use (default: newest installed)."),
        click.option("--force", is_flag=True, help="Rewrite the image even if it is up to date."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _load_ops_config(config_file: str | None) -> Any:
    from pyops.config import OpsConfig, load_config

    return load_config(config_file) if config_file else OpsConfig()


def _build_flags(
    program: str | None,
    config_file: str | None,
    args: tuple[str, ...],
    env: tuple[str, ...],
    name: str | None,
    target_root: str | None,
    klibs: tuple[str, ...],
    size: str | None,
    nanos_version: str | None,
    force: bool,
) -> Any:
    from pyops.build import parse_env
    from pyops.config import parse_size
    from pyops.ops.recipes import BuildFlags

    del config_file  # read by the caller
    return BuildFlags(
        program=program,
        args=args,
        env=parse_env(env),
        name=name,
        target_root=target_root,
        klibs=klibs,
        size=parse_size(size, "--size") if size else None,
        nanos_version=nanos_version,
        force=force,
    )


@cli.command()
@_build_options
@click.option("-v", "--verbose", is_flag=True, help="Print each step with its time.")
def build(verbose: bool, **kw: Any) -> None:
    """Build a Nanos image of a host PROGRAM and its libraries; print its path."""
    from pyops.ops.recipes import build_program

    ops = _load_ops_config(kw["config_file"])
    built = build_program(ops, _build_flags(**kw), progress=TqdmProgress(verbose=verbose))
    click.echo(built.path)


@cli.command()
@_build_options
@click.option("-p", "--port", "ports", multiple=True, help="Forward PORT or HOST:GUEST (TCP).")
@click.option("-m", "--memory", default=None, help="Guest memory (default 2G).")
@click.option("--smp", type=int, default=None, help="Number of virtual CPUs.")
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "hvf", "tcg"]),
    default=None,
    help="Hypervisor: KVM on Linux, HVF on Intel Macs, TCG (emulation) otherwise. [auto]",
)
@click.option("-v", "--verbose", is_flag=True, default=None, help="Print the qemu command line.")
@click.pass_context
def run(
    ctx: click.Context,
    /,
    ports: tuple[str, ...],
    memory: str | None,
    smp: int | None,
    accel: str | None,
    verbose: bool | None,
    **kw: Any,
) -> None:
    """Build (or reuse) the image of a host PROGRAM and boot it; exit with its exit code."""
    from pyops.ops.recipes import RunFlags, run_program

    code = run_program(
        _load_ops_config(kw["config_file"]),
        _build_flags(**kw),
        RunFlags(ports=ports, memory=memory, cpus=smp, accel=accel, verbose=verbose),
        progress=TqdmProgress(verbose=bool(verbose)),
        show_command=_show_command,
    )
    ctx.exit(code)


# --- pyops image ---------------------------------------------------------------------------


@cli.group()
def image() -> None:
    """Inspect Nanos disk images (ours, Ops's or mkfs's)."""


def _image_file(image: str, last_run: bool = False) -> str:
    """An image given as a path, or by the name ``image list`` shows (``--last-run``: the
    copy its last run wrote to)."""
    from pyops.images import images_dir, runs_dir

    if last_run:
        path = runs_dir() / f"{image}.img"
        if not path.is_file():
            raise PyopsError(
                f"image {image!r} has no last run",
                hint=f"pyops run or pkg load boots it; its copy is kept in {runs_dir()}",
            )
        return str(path)
    named = images_dir() / f"{image}.img"
    if "/" not in image and named.is_file():
        return str(named)  # a built image's name wins over a file of that name here
    if os.path.exists(image) or "/" in image:
        return image
    raise PyopsError(
        f"no image file or built image named {image!r}",
        hint="give a path, or a name from 'pyops image list'",
    )


def _open_tree(path: str, boot: bool, last_run: bool = False) -> tuple[Any, Any]:
    from pyops.disk import open_image

    path = _image_file(path, last_run)
    disk = open_image(path)
    if boot:
        tree = disk.boot_tree()
        if tree is None:
            raise PyopsError(f"{path} has no boot filesystem (it is a bare volume)")
        return disk, tree
    return disk, disk.tree()


def _describe(node: Any) -> tuple[str, str, str]:
    from pyops.tree import Directory, File, HardLink, Symlink

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

    from pyops.images import list_images

    entries = list_images()
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    if not entries:
        click.echo("no images (pyops build PROGRAM makes one)")
        return
    width = max(len(e.name) for e in entries)
    for e in entries:
        click.echo(f"{e.name:<{width}}  {e.size / 1048576:8.1f} MiB  {e.path}")


@image.command("rm")
@click.argument("names", nargs=-1, required=True)
def image_rm(names: tuple[str, ...]) -> None:
    """Delete built images by name."""
    from pyops.images import remove_image

    for name in names:
        click.echo(f"removed {remove_image(name)}")


@image.command("ls")
@click.argument("image_path", metavar="IMAGE")
@click.argument("path", default="/")
@click.option("--boot", is_flag=True, help="Look in the boot filesystem (kernel, klibs).")
@click.option("--last-run", is_flag=True, help="Read the copy IMAGE's last run wrote to.")
def image_ls(image_path: str, path: str, boot: bool, last_run: bool) -> None:
    """List a directory of an image (a path, or a name from ``image list``)."""
    from pyops.tree import Directory

    _disk, tree = _open_tree(image_path, boot, last_run)
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
    from pyops.tree import Directory

    _disk, tree = _open_tree(image_path, boot, last_run)
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
    from pyops.tfs import iter_file_contents
    from pyops.tree import Contents, File, ImageData

    _disk, tree = _open_tree(image_path, boot, last_run)
    real, node = tree.lookup(path)
    if not isinstance(node, File):
        raise PyopsError(f"{path} is not a regular file in {image_path}")
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

    from pyops.disk import open_image
    from pyops.limits import JSON_DEPTH
    from pyops.tfs import format_uuid
    from pyops.tuples import canonical, to_text

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


# --- pyops kernel: Nanos releases in the cache ---------------------------------------------


@cli.group()
def kernel() -> None:
    """Manage Nanos releases (kernel, boot.img, klibs) in the cache (PYOPS_HOME)."""


@kernel.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the releases as JSON.")
def kernel_list(as_json: bool) -> None:
    """List the installed Nanos releases, newest last."""
    import json

    from pyops.release import installed_releases, release_info

    releases = installed_releases()
    if as_json:
        click.echo(json.dumps([release_info(r) for r in releases], indent=2))
        return
    if not releases:
        click.echo("no Nanos release installed (pyops kernel install [VERSION])", err=True)
    for release in releases:
        click.echo(f"{release.version}\t{release.path}")


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
def kernel_install(
    version: str | None, source: str | None, from_version: str | None, force: bool
) -> None:
    """Install Nanos VERSION (default: the latest), or a release given with --from."""
    from pyops.release import (
        NanosRelease,
        download_release,
        find_installed,
        install_release_from,
        latest_version,
    )

    release: NanosRelease | None
    if source is not None:
        if version is not None:
            raise click.UsageError("give the version of --from with --version, not as VERSION")
        release = install_release_from(source, version=from_version)
    else:
        if from_version is not None:
            raise click.UsageError("--version goes with --from; give VERSION as an argument")
        chosen = version or latest_version(refresh=force)
        release = None if force else find_installed(chosen)
        if release is not None:
            click.echo(f"Nanos {chosen} is already installed in {release.path}", err=True)
        else:
            release = download_release(chosen, progress=TqdmProgress())
    click.echo(f"{release.version}\t{release.path}")


@kernel.command("rm")
@click.argument("version")
def kernel_rm(version: str) -> None:
    """Remove the installed Nanos release VERSION."""
    from pyops.release import remove_release

    click.echo(f"removed {remove_release(version)}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``pyops`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="pyops")


# Command groups are defined in the sections below, one per concept.


# -- pull: fetch an image from a registry into the store ---------------------------------------


@cli.command("pull")
@click.argument("image")
@click.option("--platform", default="linux/amd64", show_default=True, help="os/arch[/variant].")
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
    platform: str,
    insecure: bool,
    username: str | None,
    password_stdin: bool,
    extract: str | None,
) -> None:
    """Pull IMAGE into the cache (PYOPS_HOME, default ~/.pyops), with no Docker daemon."""

    from pyops.layers import unpack_layers
    from pyops.pull import pull
    from pyops.store import Store

    credentials = _credentials(username, password_stdin)
    progress = TqdmProgress()
    pulled = pull(
        image,
        store=Store.default(),
        platform=platform,
        credentials=credentials,
        insecure=insecure,
        progress=progress,
    )
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

    from pyops.environ import parse_env
    from pyops.ldd import format_tree, resolve

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

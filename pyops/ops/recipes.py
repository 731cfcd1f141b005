"""The recipes behind ``pyops build``, ``pyops run`` and ``pyops pkg load``.

Each command of the CLI is one call here plus printing, so a library user can do exactly
what a command does. A recipe takes Ops's ``config.json`` (an :class:`OpsConfig`) and the
values given on the command line (None or empty: not given; a given value wins over the
file), picks the Nanos release, builds the image (or reuses it when nothing that goes into
it changed), and boots a fresh copy of it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyops.arch import Arch
from pyops.errors import PyopsError
from pyops.ops.build import BuildConfig, BuiltImage, check_image_name, image_name, merge_config
from pyops.ops.config import OpsConfig, merge_ports
from pyops.progress import NULL_PROGRESS, Progress, step

if TYPE_CHECKING:
    from pyops.nanos.release import NanosRelease
    from pyops.ops.advice import Note
    from pyops.ops.instances import Instance
    from pyops.ops.package import Package
    from pyops.ops.volumes import Volume
    from pyops.vm.qemu import Guest, Host, VmConfig


@dataclass(frozen=True, slots=True)
class BuildFlags:
    """What ``pyops build``'s command line gives (None or empty: not given)."""

    program: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None
    target_root: str | None = None
    klibs: tuple[str, ...] = ()
    size: int | None = None
    nanos_version: str | None = None
    force: bool = False
    arch: Arch | None = None
    """The package's architecture, for ``pkg load`` (None: see
    :func:`~pyops.ops.package.load_package`); a program's is its ELF's."""
    missing_files: bool = False
    """Have Nanos list, at shutdown, the files the program failed to open (Ops:
    ``--missing-files``)."""
    mounts: tuple[str, ...] = ()
    """``--mounts VOLUME:/path``: volumes to mount, besides config.json's ``Mounts``."""
    cwd: str | None = None
    """``--cwd``: the program's working directory in the guest."""
    exact_env: bool = False
    """``--exact-env``: the guest's environment is -e's and config.json's Env only."""
    klib_dir: str | None = None
    """``--klib-dir``: klibs are taken from this folder first (config.json ``KlibDir``)."""
    trace: bool = False
    """Ops's ``--trace``: the kernel traces every syscall (with the strace klib)."""
    syscall_summary: bool = False
    """Ops's ``--syscall-summary``: a table of the program's syscalls at exit."""
    no_trace: tuple[str, ...] = ()
    """Ops's ``--no-trace``: syscalls left out of the trace."""
    debug: bool = False
    """Ops's ``-d``: no address randomisation, for a debugger (see RunFlags.debug)."""


@dataclass(frozen=True, slots=True)
class RunFlags:
    """What ``pyops run``'s and ``pkg load``'s command line gives for the VM."""

    ports: tuple[str, ...] = ()
    memory: str | None = None
    cpus: int | None = None
    accel: str | None = None
    verbose: bool | None = None
    udp_ports: tuple[str, ...] = ()
    gdb_port: int | None = None
    """Ops's ``-g``: qemu's gdb server on this TCP port."""
    debug: bool = False
    """Ops's ``-d``: qemu waits for a debugger before the guest starts (port 1234 unless
    ``gdb_port``)."""


CommandHook = Callable[[Sequence[str]], None]
"""Called with the qemu command line before it runs, when ``-v`` (or RunConfig Verbose)
asks for it to be shown."""

NoteHook = Callable[["Note"], None]
"""Called with each note on what will go or went wrong (:mod:`pyops.ops.advice`)."""


def choose_release(
    version: str | None,
    ops: OpsConfig,
    *,
    arch: Arch = Arch.AMD64,
    progress: Progress = NULL_PROGRESS,
) -> NanosRelease:
    """The Nanos release for ``arch`` to build with: ``version``, else config.json's
    NanosVersion, else the newest installed (the network is asked only when none is), with
    config.json's Kernel and Boot replacing its parts."""
    from pyops.nanos.release import get_release, installed_releases

    version = version or ops.nanos_version
    # Like Ops, never update Nanos behind the user's back.
    offline = version is None and bool(installed_releases(arch=arch))
    release = get_release(version, download=not offline, progress=progress, arch=arch)
    if ops.kernel or ops.boot:
        from pyops.nanos.boot import kernel_arch

        kernel = Path(ops.kernel) if ops.kernel else release.kernel
        release = dataclasses.replace(
            release,
            kernel=kernel,
            boot_img=Path(ops.boot) if ops.boot else release.boot_img,
            arch=kernel_arch(kernel)[1],  # what the program is checked against
        )
    return release


def vm_config(
    ops: OpsConfig, flags: RunFlags, host: Host | None = None, guest: Arch = Arch.AMD64
) -> VmConfig:
    """qemu settings: the flags, then config.json's RunConfig, then the defaults (ports:
    config.json's, then the flags' that are not among them). An
    accelerator ``host`` (default: this machine) cannot use for a ``guest`` is refused here,
    before anything is built."""
    from pyops.vm.qemu import Accel, Host, VmConfig, choose_accel, parse_ports

    settings = ops.run
    accel = {"true": "auto", "false": "tcg"}.get(flags.accel or "", flags.accel)  # Ops's bool
    if accel is None:
        accel = "tcg" if settings.accel is False else "auto"
    config = VmConfig(
        memory=flags.memory or settings.memory or "2G",
        cpus=flags.cpus if flags.cpus is not None else settings.cpus,
        accel=Accel(accel),
        # the flags' ports join the file's, as Ops joins them
        ports=parse_ports(merge_ports(settings.ports, flags.ports))
        + parse_ports(merge_ports(settings.udp_ports, flags.udp_ports), "udp"),
        gdb_port=flags.gdb_port or (1234 if flags.debug else None),
        wait_for_gdb=flags.debug,
    )
    choose_accel(config.accel, host or Host.detect(), guest)
    return config


def image_path(name: str, home: str | Path | None = None) -> Path:
    """Where the image ``name`` is kept: ``PYOPS_HOME/images/NAME.img`` (``images/NAME`` in
    an Ops home)."""
    from pyops.home import image_file

    return image_file(check_image_name(name), home)


def build_program(
    ops: OpsConfig,
    flags: BuildFlags,
    *,
    progress: Progress = NULL_PROGRESS,
    before_build: Callable[[Arch], object] | None = None,
    ports: Sequence[str] = (),
) -> BuiltImage:
    """``pyops build``: the image of a host program (and its libraries), reused when
    nothing that goes into it changed. The program's ELF machine is the image's
    architecture; ``before_build`` is given it before a release is chosen. ``ports``: the
    TCP ports ``-p`` forwards, for the guest's ``OPS_PORT``."""
    from pyops.ops.build import build_image, program_arch, resolve_program

    config = merge_config(
        ops,
        flags.program,
        args=flags.args,
        env=flags.env,
        name=flags.name,
        target_root=flags.target_root,
        klibs=flags.klibs,
        size=flags.size,
        ports=ports,
    )
    name = config.name or image_name(config.program)
    config = dataclasses.replace(config, name=check_image_name(name))
    config = _with_debug_keys(config, flags)
    config, volumes = _with_mounts(config, ops, flags.mounts)
    config = _with_program_settings(config, flags)
    resolution = resolve_program(config, progress=progress)
    guest = program_arch(resolution)
    if before_build is not None:
        before_build(guest)
    release = choose_release(flags.nanos_version, ops, arch=guest, progress=progress)
    built = build_image(
        config,
        release,
        image_path(name),
        progress=progress,
        force=flags.force,
        resolution=resolution,
    )
    return dataclasses.replace(built, volumes=volumes)


def run_program(
    ops: OpsConfig,
    flags: BuildFlags,
    run: RunFlags,
    *,
    progress: Progress = NULL_PROGRESS,
    show_command: CommandHook | None = None,
    notes: NoteHook | None = None,
) -> int:
    """``pyops run``: build (or reuse) the image of a host program and boot a fresh copy of
    it in the foreground; returns the guest program's exit code."""
    host = _host()
    vms = [vm_config(ops, run, host)]
    built = build_program(
        ops,
        flags,
        progress=progress,
        before_build=lambda a: vms.append(vm_config(ops, run, host, a)),
        ports=run.ports,
    )
    vm = _attach(vms[-1], built.volumes)
    verbose = _verbose(ops, run)
    return boot(built.path, vm, host, verbose, progress, show_command, notes, (), built.argv)


def run_package(
    ops: OpsConfig,
    package_name: str,
    flags: BuildFlags,
    run: RunFlags,
    *,
    cwd: str | None = None,
    progress: Progress = NULL_PROGRESS,
    show_command: CommandHook | None = None,
    notes: NoteHook | None = None,
) -> int:
    """``pyops pkg load``: build (or reuse) the image of local package ``package_name`` and
    boot a fresh copy of it; returns the guest program's exit code."""

    host = _host()
    package = _load_package(ops, package_name, flags.arch)
    vm = vm_config(ops, run, host, package.arch)
    built = build_package(ops, package_name, flags, cwd=cwd, progress=progress, ports=run.ports)
    vm = _attach(vm, built.volumes)
    entrypoint = package.entrypoint
    return boot(built.path, vm, host, _verbose(ops, run), progress, show_command, notes, entrypoint)


def build_package(
    ops: OpsConfig,
    package_name: str,
    flags: BuildFlags,
    *,
    cwd: str | None = None,
    progress: Progress = NULL_PROGRESS,
    ports: Sequence[str] = (),
) -> BuiltImage:
    """The image of local package ``package_name``, with config.json and the flags
    (``ports``: as for :func:`build_program`)."""
    from pyops.ops.build import build_package_image

    package = _load_package(ops, package_name, flags.arch)
    config: BuildConfig = merge_config(
        ops, package.program, args=flags.args, env=flags.env, name=flags.name, ports=ports
    )
    name = check_image_name(config.name or package.name)
    config = _with_debug_keys(dataclasses.replace(config, name=name), flags)
    config, volumes = _with_mounts(config, ops, flags.mounts)
    release = choose_release(flags.nanos_version, ops, arch=package.arch, progress=progress)
    built = build_package_image(
        package, config, release, image_path(name), cwd=cwd, progress=progress, force=flags.force
    )
    return dataclasses.replace(built, volumes=volumes)


def _load_package(ops: OpsConfig, name: str, arch: Arch | None) -> Package:
    """The package ``name``; a repository one (``NAMESPACE/NAME:VERSION``) is fetched first
    when it is not here, as Ops's ``pkg load`` does."""
    from pyops.errors import PackageError
    from pyops.ops.package import load_package

    try:
        return load_package(name, arch=arch)
    except PackageError as missing:
        if "/" not in name and ":" not in name:
            raise
        from pyops.ops.repository import base_url, get_package, manifest_url

        try:
            return get_package(
                name,
                arch=arch,
                index_url=manifest_url(ops.package_manifest_url),
                base=base_url(ops.package_base_url),
            )
        except PackageError as exc:
            raise PackageError(f"{missing} Fetching it failed: {exc}", hint=exc.hint) from exc


def chosen_mounts(ops: OpsConfig, given: Sequence[str] = ()) -> dict[str, Volume]:
    """The volumes to mount, as guest path -> volume: config.json's ``Mounts``, then
    ``RunConfig.Mounts``, then ``given`` (``--mounts``), a later one replacing an earlier
    one of the same volume."""
    if not (ops.mounts or ops.run.mounts or given):
        return {}
    from pyops.ops.volumes import parse_mounts, resolve_mounts

    merged: dict[str, str] = {}
    for source in ([f"{k}:{v}" for k, v in ops.mounts.items()], ops.run.mounts, given):
        merged.update(parse_mounts(source))
    # the same guest folder from two sources is refused as from one
    parse_mounts([f"{k}:{v}" for k, v in merged.items()])
    return resolve_mounts(merged)


def _with_mounts(
    config: BuildConfig, ops: OpsConfig, given: Sequence[str]
) -> tuple[BuildConfig, tuple[str, ...]]:
    """``config`` with the chosen volumes in its root configuration (and their folders in
    its tree), and the volume files to attach."""
    volumes = chosen_mounts(ops, given)
    if not volumes:
        return config, ()
    from pyops.ops.volumes import mount_point, mounts_manifest

    config = dataclasses.replace(
        config,
        extra_manifest={**config.extra_manifest, "mounts": mounts_manifest(volumes)},
        directories=config.directories + tuple(mount_point(p) for p in volumes),
    )
    return config, tuple(os.fspath(v.path) for v in volumes.values())


def _with_program_settings(config: BuildConfig, flags: BuildFlags) -> BuildConfig:
    """``--cwd``, ``--exact-env`` and ``--klib-dir`` over config.json's."""
    if flags.cwd is not None and not flags.cwd.startswith("/"):
        from pyops.errors import InvalidInput

        raise InvalidInput(f"--cwd {flags.cwd!r} is not an absolute path", hint="write /srv")
    return dataclasses.replace(
        config,
        cwd=flags.cwd or config.cwd,
        exact_env=flags.exact_env or config.exact_env,
        klib_dir=os.path.abspath(flags.klib_dir) if flags.klib_dir else config.klib_dir,
    )


def _attach(vm: VmConfig, volumes: Sequence[str]) -> VmConfig:
    """``vm`` with ``volumes`` attached, once no running instance has one of them."""
    if not volumes:
        return vm
    from pyops.ops.instances import check_volumes_free

    check_volumes_free(volumes)
    return dataclasses.replace(vm, volumes=tuple(volumes))


def _with_debug_keys(config: BuildConfig, flags: BuildFlags) -> BuildConfig:
    """``config`` with the kernel's debugging keys the flags ask for, as Ops sets them
    (``cmd/flags_run_local_instance.go``, ``MergeToConfig``)."""
    keys: dict[str, object] = {}
    if flags.trace:
        keys.update(dict.fromkeys(("trace", "debugsyscalls", "fault", "futex_trace"), "t"))
    if flags.debug:
        keys["noaslr"] = "t"
    if flags.syscall_summary:
        keys["syscall_summary"] = "t"
    if flags.missing_files:
        keys["missing_files"] = "t"
    if flags.no_trace:
        keys["notrace"] = list(flags.no_trace)
    if not keys:
        return config
    klibs = config.klibs
    if (flags.trace or flags.syscall_summary) and "strace" not in klibs:
        klibs = (*klibs, "strace")  # the kernel's syscall tracing lives in this klib
    return dataclasses.replace(
        config, extra_manifest={**config.extra_manifest, **keys}, klibs=klibs
    )


def _host() -> Host:
    from pyops.vm.qemu import Host

    return Host.detect()


def _verbose(ops: OpsConfig, run: RunFlags) -> bool:
    return bool(run.verbose if run.verbose is not None else ops.run.verbose)


def boot(
    image: Path,
    vm: VmConfig,
    host: Host,
    verbose: bool = False,
    progress: Progress = NULL_PROGRESS,
    show_command: CommandHook | None = None,
    notes: NoteHook | None = None,
    entrypoint: Sequence[str] = (),
    argv: Sequence[str] = (),
) -> int:
    """Boot a fresh copy of ``image`` (the built image itself stays as built) in the
    foreground on ``host``, and return the guest program's exit code; with ``verbose``,
    ``show_command`` is given the qemu command line first.

    With ``notes``, what :mod:`pyops.ops.advice` foresees from the program's command line
    ``argv`` and configuration is given before the boot, and what the run's exit, console
    and log files explain after it (also when it is interrupted). ``entrypoint`` is the
    image's, for a package. The image is read only for programs the advice knows, and after
    runs that need explaining."""
    from pyops.ops.images import fresh_run_copy
    from pyops.vm.qemu import guest_of, qemu_command, run_vm

    with step(progress, "copy the image for this run"):
        disk = fresh_run_copy(image)
        # An arm64 kernel is copied out beside the run's disk, for qemu's -kernel.
        guest = guest_of(disk, disk.parent)
    if verbose and show_command is not None:
        show_command(qemu_command(disk, vm, host, guest=guest))
    if notes is None:
        with step(progress, "boot"):
            return run_vm(disk, vm, host=host, stdin=None, guest=guest)
    return _boot_explained(
        image, disk, vm, host, guest, progress, notes, tuple(entrypoint), tuple(argv)
    )


def _boot_explained(
    image: Path,
    disk: Path,
    vm: VmConfig,
    host: Host,
    guest: Guest,
    progress: Progress,
    notes: NoteHook,
    entrypoint: tuple[str, ...],
    argv: tuple[str, ...],
) -> int:
    import time

    from pyops.ops.advice import Run, after_run, before_boot, wants_logs
    from pyops.ops.images import ImageFiles
    from pyops.vm.qemu import Console, run_vm

    built = ImageFiles(image)  # opened on first read
    argv = argv or built.argv
    shown = before_boot(argv, built.read, entrypoint)
    for note in shown:
        notes(note)
    console = Console()
    began = time.monotonic()

    def explain(code: int | None) -> None:
        seconds = time.monotonic() - began
        text = console.text()
        logs = ImageFiles(disk).logs(built) if wants_logs(code, seconds, text) else {}
        for note in after_run(Run(argv, code, seconds, text, logs, entrypoint), built.read):
            if note not in shown:  # said before the boot already
                notes(note)

    try:
        with step(progress, "boot"):
            code = run_vm(disk, vm, host=host, stdin=None, console=console, guest=guest)
    except KeyboardInterrupt:
        explain(None)
        raise
    explain(code)
    return code


def instance_of_image(
    ops: OpsConfig,
    image: str,
    run: RunFlags,
    *,
    name: str | None = None,
    mounts: Sequence[str] = (),
) -> Instance:
    """``pyops instance create IMAGE``: the image (a name of ``pyops image list``, or a disk
    file) started in the background as an instance.

    The volumes its root configuration mounts are attached (found by UUID in the volume
    store). With ``mounts`` (and config.json's), the instance's disk is the image rewritten
    to mount those instead; the image itself stays as built."""
    from pyops.nanos.disk import boot_kernel
    from pyops.ops.instances import create_instance

    path = Path(image)
    if not (os.sep in image or image.endswith(".img")) or not path.is_file():
        path = image_path(image)
    if not path.is_file():
        from pyops.ops.images import list_images

        known = ", ".join(e.name for e in list_images()) or "none"
        raise PyopsError(
            f"there is no image {image!r} (images: {known})",
            hint="give an image name from pyops image list, or the path of a disk image",
        )
    host = _host()
    arch, _ = boot_kernel(path)
    vm = vm_config(ops, run, host, arch)
    volumes = chosen_mounts(ops, mounts)
    if volumes:
        from pyops.nanos.disk import open_image
        from pyops.ops.volumes import mount_point, mounts_manifest

        manifest = open_image(path).manifest
        manifest = dataclasses.replace(
            manifest, extra={**manifest.extra, "mounts": mounts_manifest(volumes)}
        )
        vm = dataclasses.replace(vm, volumes=tuple(os.fspath(v.path) for v in volumes.values()))
        folders = tuple(mount_point(p) for p in volumes)
        return create_instance(
            path, vm, name=name, host=host, manifest=manifest, directories=folders
        )
    vm = dataclasses.replace(vm, volumes=_image_volumes(path))
    return create_instance(path, vm, name=name, host=host)


def _image_volumes(path: Path) -> tuple[str, ...]:
    """The volume files the image at ``path`` mounts (its root's ``mounts``), by UUID."""
    from pyops.nanos.disk import open_image

    mounts = open_image(path).manifest.extra.get("mounts")
    if not isinstance(mounts, Mapping) or not mounts:
        return ()
    from pyops.ops.volumes import find_volume

    found = []
    for key, where in mounts.items():
        try:
            found.append(os.fspath(find_volume(str(key)).path))
        except PyopsError as exc:
            raise PyopsError(
                f"{path.name} mounts volume {key} at {where}, which is not here: {exc}",
                hint=exc.hint,
            ) from exc
    return tuple(found)


def instance_of_package(
    ops: OpsConfig,
    package_name: str,
    flags: BuildFlags,
    run: RunFlags,
    *,
    name: str | None = None,
    cwd: str | None = None,
    progress: Progress = NULL_PROGRESS,
) -> Instance:
    """``pyops pkg load --background`` and ``pyops instance create --package``: the
    package's image built (or reused), then started in the background."""
    from pyops.ops.instances import create_instance

    host = _host()
    package = _load_package(ops, package_name, flags.arch)
    vm = vm_config(ops, run, host, package.arch)
    built = build_package(ops, package_name, flags, cwd=cwd, progress=progress, ports=run.ports)
    vm = dataclasses.replace(vm, volumes=built.volumes)
    with step(progress, "start the instance"):
        return create_instance(built.path, vm, name=name, host=host)

"""Boot to the first line of output: ``pyops run`` of a cached image, against qemu by hand.

    python benchmarks/bench_boot.py [--repeat N] [--scale K] [--plain-env] [--json]

A one-line C hello program (``/bin/echo`` when there is no gcc) is built into an image with
a folder of 1,000 times ``--scale`` small files (``Dirs`` of a config.json; ``--scale 0``: no
folder), by one warm-up ``pyops run`` in a fresh ``PYOPS_HOME`` holding a copy of the newest
installed Nanos release.  Then, best of ``--repeat`` in alternating order, the time from just
before starting the process to the program's line arriving on its standard output:

- pyops: the ``pyops`` console script (``python -m pyops`` when there is none), ``pyops run
  -c config.json PROGRAM``; the image is reused, as nothing that goes into it changed;
- qemu by hand: the command line pyops builds for that image (``pyops.vm.qemu.qemu_command``
  with the default ``VmConfig``, the same accelerator; checked against what ``pyops run -v``
  prints), started directly.

pyops' peak memory is its ``VmHWM`` when the line arrives (all it does before qemu runs).
Target: pyops adds less than 0.3 s.  pyops' modules are loaded from a bytecode cache, as for
an installed package (a ``PYTHONPYCACHEPREFIX`` in the temporary directory, filled by the
warm-up, in case ``PYTHONDONTWRITEBYTECODE`` is set here); ``--plain-env`` keeps this
shell's settings instead (with ``PYTHONDONTWRITEBYTECODE`` and no ``__pycache__`` in the
checkout, every pyops module is compiled at each start).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import MB, ROOT, SKIPPED, Row, emit, first_line

sys.path.insert(0, str(ROOT))

from pyops.arch import Arch  # noqa: E402
from pyops.errors import InvalidInput  # noqa: E402
from pyops.nanos.release import install_release_from, installed_releases  # noqa: E402
from pyops.ops.build import image_name  # noqa: E402
from pyops.ops.images import images_dir, runs_dir  # noqa: E402
from pyops.vm.qemu import Host, VmConfig, choose_accel, find_qemu, qemu_command  # noqa: E402

LINE = b"hello from nanos"
HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from nanos"); return 0; }\n'
TIMEOUT = 300.0  # seconds; a boot that never prints is killed


def find_release() -> Path | str:
    """The release folder to copy (``PYOPS_NANOS_RELEASE``, else the newest installed x86-64
    one), or why there is none."""
    env = os.environ.get("PYOPS_NANOS_RELEASE")
    if env:
        folder = Path(env)
        if (folder / "kernel.img").is_file() and (folder / "boot.img").is_file():
            return folder
        return f"PYOPS_NANOS_RELEASE={env} holds no kernel.img and boot.img"
    releases = installed_releases(arch=Arch.AMD64)
    if not releases:
        return "no x86-64 Nanos release installed (pyops kernel install --from TARBALL)"
    return releases[-1].path


def pyops_command() -> tuple[list[str], str]:
    """How a user starts pyops here, and its name for the note."""
    script = Path(sys.executable).parent / "pyops"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], "the pyops console script"
    return [sys.executable, "-m", "pyops"], "python -m pyops"


def make_program(work: Path) -> tuple[str, list[str]]:
    """The program and its ``pyops run`` arguments."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is not None:
        source = work / "hello.c"
        source.write_text(HELLO_C)
        done = subprocess.run([cc, "-O2", "-o", str(work / "hello"), str(source)], check=False)
        if done.returncode == 0:
            return str(work / "hello"), []
    return "/bin/echo", ["-a", LINE.decode()]


def make_data(work: Path, count: int) -> None:
    """``count`` small files in ``work/data``, 100 to a folder."""
    for i in range(count):
        folder = work / "data" / f"d{i // 100:03d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"f{i:05d}.txt").write_text(f"file {i} of the boot benchmark\n" * 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--scale", type=int, default=1, help="1,000 x K small files in the image")
    parser.add_argument("--plain-env", action="store_true", help="no bytecode cache prefix")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    release = find_release()
    if isinstance(release, str):
        print(release)
        sys.exit(SKIPPED)
    if shutil.which("qemu-system-x86_64") is None:
        print("qemu-system-x86_64 is not installed")
        sys.exit(SKIPPED)
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        row = compare(Path(tmp), release, args)
    emit(row, args.json)


def compare(work: Path, release_folder: Path, args: argparse.Namespace) -> Row:
    home = work / "home"
    try:
        install_release_from(release_folder, home=home)
    except InvalidInput:  # a folder whose name is not a version
        install_release_from(release_folder, version="0.0.0-bench", home=home)
    env = dict(os.environ, PYOPS_HOME=str(home))
    if not args.plain_env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    program, program_args = make_program(work)
    files = 1000 * args.scale
    config = work / "config.json"
    if files:
        make_data(work, files)
        config.write_text('{"Dirs": ["data"]}\n')
    else:
        config.write_text("{}\n")
    starter, how = pyops_command()
    if starter[0] == sys.executable:
        env["PYTHONPATH"] = str(ROOT)
    run = [*starter, "run", "-c", str(config), program, *program_args]

    # Warm-up: builds and caches the image, and shows the qemu command line pyops uses.
    warm = subprocess.run(
        [*run, "-v"], cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True,
        timeout=TIMEOUT, check=False,
    )  # fmt: skip
    if warm.returncode != 0 or LINE not in warm.stdout:
        raise SystemExit(f"warm-up pyops run failed: {warm.stderr.decode(errors='replace')}")
    built = images_dir(home) / f"{image_name(program)}.img"
    # pyops boots a fresh copy of the built image each run; qemu by hand boots that copy.
    disk = runs_dir(home) / built.name
    qemu = qemu_command(disk, VmConfig(), Host.detect())
    if shlex.join(qemu) not in warm.stderr.decode(errors="replace"):
        raise SystemExit(f"pyops ran another qemu command line than {shlex.join(qemu)}")
    qemu[0] = find_qemu(qemu[0])
    accel = choose_accel(VmConfig().accel, Host.detect())
    written = built.stat().st_mtime_ns

    argvs = {"pyops": run, "qemu": qemu}
    times: dict[str, list[float]] = {"pyops": [], "qemu": []}
    peaks: list[float] = []
    for repetition in range(args.repeat):
        order = ["pyops", "qemu"] if repetition % 2 == 0 else ["qemu", "pyops"]
        for tool in order:
            got = first_line(argvs[tool], env, work, LINE, TIMEOUT)
            seconds, status, peak = got.seconds, got.status, got.peak_mb
            # pyops exits with the program's status; qemu with (status << 1) | 1
            expected = 0 if tool == "pyops" else 1
            if status != expected:
                raise SystemExit(f"{tool}: exit status {status}, expected {expected}")
            times[tool].append(seconds)
            if tool == "pyops":
                peaks.append(peak)
    if built.stat().st_mtime_ns != written:
        raise SystemExit(f"pyops run wrote {built} again: the image was not reused")
    best = {tool: min(values) for tool, values in times.items()}
    added = best["pyops"] - best["qemu"]
    median = statistics.median(times["pyops"]) - statistics.median(times["qemu"])
    image_mb = built.stat().st_size / MB
    contents = f"{Path(program).name}" + (f" + {files:,} small files" if files else "")
    return Row(
        name="boot to first output",
        size=f"{contents}, image {image_mb:.1f} MB, {accel.value}",
        baseline="qemu by hand",
        pyops_s=best["pyops"],
        baseline_s=best["qemu"],
        target="adds < 0.3 s",
        met=added < 0.3,
        pyops_peak_mb=max(peaks) if any(peaks) else None,
        note=f"pyops adds {added:.3f} s (medians: {median:.3f} s); {how}, cached image"
        + (", this shell's bytecode settings" if args.plain_env else ""),
        runs={tool: [round(v, 3) for v in values] for tool, values in times.items()},
    )


if __name__ == "__main__":
    main()

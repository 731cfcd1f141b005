"""Boot to the first line of output on each guest architecture: an arm64 guest against an
x86-64 guest, both emulated by qemu's TCG, in the same run.

    python benchmarks/bench_arch.py [--repeat N] [--json]

The same small program (``fixtures/arch_hello.c``, linked statically) is compiled with gcc
for x86-64 and with aarch64-linux-gnu-gcc for arm64, and each is built into an image by one
warm-up ``python -m pyops run --accel tcg PROGRAM`` in a fresh ``PYOPS_HOME`` holding a copy
of the newest installed release of each architecture (``PYOPS_NANOS_RELEASE`` and
``PYOPS_NANOS_RELEASE_ARM64`` name others). Then, ``--repeat`` times in alternating order,
the time from starting ``pyops run`` (the image is reused) to the program's first line
(``arch machine: aarch64`` or ``x86_64``) on its standard output; each run must also end
with the program's exit code, 3.

The row's two times are the medians (the best of each is in the note): in ``run_all.py``'s
table the arm64 guest stands in the "pyops" column and the x86-64 guest in the "baseline"
one, and the ratio is arm64's over x86-64's. Target: at most 2 (an arm64 guest waits at
most twice as long as an x86-64 one on the same emulator). ``--scale`` is accepted for
``run_all.py`` and changes nothing.
Exits with status 77 and the reason when a release, a qemu or a compiler is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, SKIPPED, Row, emit, first_line

sys.path.insert(0, str(ROOT))

from pyops.arch import Arch  # noqa: E402
from pyops.errors import InvalidInput  # noqa: E402
from pyops.nanos.release import install_release_from, installed_releases  # noqa: E402

SOURCE = ROOT / "fixtures" / "arch_hello.c"
LINE = b"arch machine: "
EXIT_CODE = 3  # arch_hello's when given no number
TIMEOUT = 600.0  # seconds; a boot that never prints is killed
TARGET = 2.0  # arm64 / x86-64: an arm64 guest waits at most twice as long on the same emulator
GUESTS = {
    # arch: (compiler, qemu, release variable, what uname says)
    "amd64": ("gcc", "qemu-system-x86_64", "PYOPS_NANOS_RELEASE", "x86_64"),
    "arm64": (
        "aarch64-linux-gnu-gcc",
        "qemu-system-aarch64",
        "PYOPS_NANOS_RELEASE_ARM64",
        "aarch64",
    ),
}
HOW = {
    "amd64": "pyops kernel install --from nanos-release-linux-VERSION.tar.gz",
    "arm64": "pyops kernel install --from nanos-release-linux-VERSION-virt.tar.gz",
}


def find_release(arch: str) -> Path | str:
    """The release folder of ``arch`` to copy, or why there is none."""
    variable = GUESTS[arch][2]
    env = os.environ.get(variable)
    if env:
        if (Path(env) / "kernel.img").is_file():
            return Path(env)
        return f"{variable}={env} holds no kernel.img"
    found = installed_releases(arch=Arch(arch))
    if not found:
        return f"no {arch} Nanos release installed ({HOW[arch]})"
    return found[-1].path


def missing() -> str:
    """Why the benchmark cannot run here, or ""."""
    for arch in GUESTS:
        release = find_release(arch)
        if isinstance(release, str):
            return release
    for compiler, qemu, _variable, _uname in GUESTS.values():
        for tool in (compiler, qemu):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
    return ""


def compile_static(arch: str, out: Path) -> Path:
    compiler = GUESTS[arch][0]
    done = subprocess.run(
        [compiler, "-O2", "-static", "-o", str(out), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"{compiler} cannot link a static program here: {tail}")
        sys.exit(SKIPPED)
    return out


def install(folder: Path, home: Path, arch: str) -> str:
    """Install a release folder into ``home``; return its version."""
    try:
        return install_release_from(folder, home=home).version
    except InvalidInput:  # a folder whose name is not a version
        return install_release_from(folder, version=f"0.0.0-bench-{arch}", home=home).version


def compare(work: Path, repeat: int) -> Row:
    home = work / "home"
    versions = {}
    for arch in GUESTS:
        release = find_release(arch)
        assert isinstance(release, Path)
        versions[arch] = install(release, home, arch)
    env = dict(os.environ, PYOPS_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    argvs = {}
    for arch in GUESTS:
        program = compile_static(arch, work / f"arch_hello-{arch}")
        argvs[arch] = [
            sys.executable, "-m", "pyops", "run", "--accel", "tcg", "-m", "512M", str(program),
            "--nanos-version", versions[arch],
        ]  # fmt: skip
    # Warm-up: builds and caches each image, and checks that each guest is what it says.
    for arch, argv in argvs.items():
        got = first_line(argv, env, work, LINE, TIMEOUT)
        status, line = got.status, got.line
        expected = LINE + GUESTS[arch][3].encode()
        if line != expected or status != EXIT_CODE:
            raise SystemExit(f"{arch}: printed {line!r} and exited {status}, expected {expected!r}")
    images = sorted((home / "images").glob("*.img"))
    written = {image: image.stat().st_mtime_ns for image in images}
    if len(images) != len(GUESTS):
        raise SystemExit(f"the warm-up wrote {len(images)} images, expected {len(GUESTS)}")
    times: dict[str, list[float]] = {arch: [] for arch in GUESTS}
    for repetition in range(repeat):
        order = list(GUESTS) if repetition % 2 == 0 else list(reversed(GUESTS))
        for arch in order:
            got = first_line(argvs[arch], env, work, LINE, TIMEOUT)
            seconds, status = got.seconds, got.status
            if status != EXIT_CODE:
                raise SystemExit(f"{arch}: exit status {status}, expected {EXIT_CODE}")
            times[arch].append(seconds)
    if any(image.stat().st_mtime_ns != mtime for image, mtime in written.items()):
        raise SystemExit("pyops run wrote an image again: the images were not reused")
    median = {arch: statistics.median(values) for arch, values in times.items()}
    best = {arch: min(values) for arch, values in times.items()}
    ratio = median["arm64"] / median["amd64"]
    return Row(
        name="boot to first output, arm64 guest",
        size=f"arch_hello static, Nanos {versions['arm64']}, TCG, median of {repeat}",
        baseline="x86-64 guest",
        pyops_s=median["arm64"],
        baseline_s=median["amd64"],
        target=f"ratio <= {TARGET:g}",
        met=ratio <= TARGET,
        note=f"best: arm64 {best['arm64']:.3f} s, x86-64 {best['amd64']:.3f} s; "
        "pyops run of a cached image, both under TCG",
        runs={arch: [round(v, 3) for v in values] for arch, values in times.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, default=1, help="accepted; changes nothing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    why = missing()
    if why:
        print(why)
        sys.exit(SKIPPED)
    with tempfile.TemporaryDirectory(prefix="bench-arch-") as tmp:
        row = compare(Path(tmp), max(1, args.repeat))
    if args.json:
        emit(row, True)
        return
    print(f"{row.name}: {row.size}")
    print(f"  arm64 guest:  {row.pyops_s:8.3f} s (median)")
    print(f"  x86-64 guest: {row.baseline_s:8.3f} s (median)")
    for arch, values in row.runs.items():
        print(f"  runs {arch}: " + " ".join(f"{v:.3f}" for v in values))
    status = "met" if row.met else "NOT met"
    print(f"  ratio arm64/x86-64: {row.ratio:.2f}   target {row.target}: {status}")
    print(f"  {row.note}")


if __name__ == "__main__":
    main()

"""Resolving the libraries of many ELF files with pyops and with lddtree, and compare.

    python benchmarks/bench_ldd.py [--files 400] [--repeat 3] [--scale K] [--json]

The files are the first ``--files`` times ``--scale`` dynamically linked ELF files of
/usr/bin, /usr/sbin, /usr/libexec and /usr/lib (programs first).  Both tools resolve all of
them in one process each (interpreter start-up included), best of ``--repeat`` in
alternating order, with peak memory.  pyops is also timed inside this process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from common import SKIPPED, Row, Sample, emit, measure, pyops_argv, summarize

from pyops.elf.ldd import Resolver
from pyops.elf.reader import read_elf
from pyops.errors import PyopsError

PYOPS_CHILD = """
import sys
from pyops.elf.ldd import Resolver
resolver = Resolver(None, env={})
for path in sys.argv[1:]:
    resolver.resolve(path, allow_missing=True)
"""


POOL = ("/usr/bin", "/usr/sbin", "/usr/libexec", "/usr/lib")


def dynamic_files(count: int) -> list[str]:
    """The first ``count`` dynamically linked ELF files of ``POOL`` (programs first, then
    libraries and helpers), each real file once, in a stable order."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for top in POOL:
        for dirpath, dirnames, filenames in os.walk(top):
            # separate debug symbols look like programs but hold no loadable contents
            dirnames[:] = sorted(d for d in dirnames if d != "debug")
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                    if os.path.islink(path) or (st.st_dev, st.st_ino) in seen:
                        continue
                    with open(path, "rb") as handle:
                        if handle.read(4) != b"\x7fELF":
                            continue
                    info = read_elf(path)
                except (OSError, PyopsError):
                    continue
                if info.interpreter is None and not info.needed:
                    continue
                seen.add((st.st_dev, st.st_ino))
                found.append(path)
                if len(found) == count:
                    return found
    return found


def lddtree_command() -> list[str]:
    found = shutil.which("lddtree")
    if found is None:
        print("skipped: lddtree is not installed (Debian: apt-get install pax-utils)")
        sys.exit(SKIPPED)
    with open(found, "rb") as handle:
        first = handle.readline()
    # Debian's lddtree is a Python script; run it with this interpreter, which has
    # pyelftools. Older pax-utils ship a shell version, which runs as is.
    return [sys.executable, found] if b"python" in first else [found]


def compare(files: list[str], repeat: int) -> dict[str, list[Sample]]:
    argvs = {
        "pyops": pyops_argv(PYOPS_CHILD, *files),
        "lddtree": [*lddtree_command(), "-l", *files],
    }
    samples: dict[str, list[Sample]] = {"pyops": [], "lddtree": []}
    for repetition in range(repeat):
        order = ["pyops", "lddtree"] if repetition % 2 == 0 else ["lddtree", "pyops"]
        for tool in order:
            samples[tool].append(measure(argvs[tool]))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400, help="ELF files at scale 1")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1, help="resolve K times more files")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("LD_")]:
        del os.environ[name]  # the children inherit this environment
    files = dynamic_files(args.files * args.scale)
    samples = compare(files, args.repeat)
    summary = summarize(samples)
    best, peak = summary.best, summary.peak_mb
    in_process = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        resolver = Resolver(None, env={})
        for path in files:
            resolver.resolve(path, allow_missing=True)
        in_process = min(in_process, time.perf_counter() - start)
    row = Row(
        name="resolving libraries",
        size=f"{len(files):,} ELF files",
        baseline="lddtree",
        pyops_s=best["pyops"],
        baseline_s=best["lddtree"],
        target="faster than lddtree (ratio < 1)",
        met=best["pyops"] < best["lddtree"],
        pyops_peak_mb=peak["pyops"],
        baseline_peak_mb=peak["lddtree"],
        note=f"pyops in an already running process: {in_process:.3f} s",
        runs=summary.runs,
    )
    emit(row, args.json)


if __name__ == "__main__":
    main()

"""Resolve every dynamic program of a directory with pyops and with lddtree, and compare.

Both run over the same files in one process each (startup included), as subprocesses
of this script, the best of ``--repeat`` runs is kept, and the ratio is printed. pyops is
also timed inside this process, without interpreter startup.

    python benchmarks/bench_ldd.py [--dir /usr/bin] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pyops.elf import read_elf
from pyops.errors import PyopsError
from pyops.ldd import Resolver

PYOPS_CHILD = """
import sys
from pyops.ldd import Resolver
resolver = Resolver(None, env={})
for path in sys.argv[1:]:
    resolver.resolve(path, allow_missing=True)
"""


def dynamic_programs(directory: str) -> list[str]:
    found = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            info = read_elf(path)
        except PyopsError:
            continue
        if info.interpreter is not None:
            found.append(path)
    return found


def lddtree_command() -> list[str]:
    found = shutil.which("lddtree")
    if found is None:
        sys.exit("lddtree is not installed (Debian: apt-get install pax-utils)")
    with open(found, "rb") as handle:
        first = handle.readline()
    # Debian's lddtree is a Python script; run it with this interpreter, which has
    # pyelftools. Older pax-utils ship a shell version, which runs as is.
    return [sys.executable, found] if b"python" in first else [found]


def best_of(repeat: int, argv: list[str]) -> float:
    best = float("inf")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env)
        elapsed = time.perf_counter() - start
        if not done.stdout and done.returncode != 0:
            sys.exit(f"{argv[:2]} failed: {done.stderr.decode(errors='replace')[-500:]}")
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/usr/bin")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    programs = dynamic_programs(args.dir)
    print(f"{len(programs)} dynamic programs in {args.dir}")

    in_process = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        resolver = Resolver(None, env={})
        for path in programs:
            resolver.resolve(path, allow_missing=True)
        in_process = min(in_process, time.perf_counter() - start)

    src = str(Path(__file__).resolve().parent.parent)
    pyops_argv = [sys.executable, "-c", f"import sys; sys.path.insert(0, {src!r})\n" + PYOPS_CHILD]
    pyops_time = best_of(args.repeat, [*pyops_argv, *programs])
    lddtree_time = best_of(args.repeat, [*lddtree_command(), "-l", *programs])

    print(f"pyops (in process):     {in_process:8.3f} s")
    print(f"pyops (new process):    {pyops_time:8.3f} s")
    print(f"lddtree (new process):  {lddtree_time:8.3f} s")
    print(f"ratio lddtree / pyops:  {lddtree_time / pyops_time:8.1f}x")


if __name__ == "__main__":
    main()

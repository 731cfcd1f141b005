"""What every benchmark shares: timing a process with its peak memory, and the result row.

Each ``bench_*.py`` script measures pyops and a baseline tool in the same run and, with
``--json``, prints one :class:`Row` as a JSON line; ``run_all.py`` collects the rows into
one table.  All times are wall-clock seconds, the best of several runs; the ratio is
pyops' time over the baseline's (below 1: pyops is faster).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
SKIPPED = 77  # exit status of a benchmark whose tools are missing (it prints why)

# Starts one command and reports its wall time and peak memory.  A process started by the
# benchmark itself would report at least the benchmark's memory as its peak (Linux keeps
# the high-water mark of the address space it had before ``exec``); this small starter
# lowers that floor to its own size, about 10 MB.
STARTER = """
import os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_pid, status, usage = os.wait4(proc.pid, 0)
elapsed = time.perf_counter() - start
print(elapsed, usage.ru_maxrss * 1024)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_bytes: int


def child_env() -> dict[str, str]:
    """This environment with Python's bytecode cache on, as for an installed package.

    Where ``PYTHONDONTWRITEBYTECODE`` is set, every module of pyops (and of lddtree) would
    be compiled again at each start; the cache goes to ``.benchmarks/pycache`` instead of
    the checkout, and the warm-up runs fill it.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / ".benchmarks" / "pycache"))
    return env


def measure(argv: list[str], cwd: Path | None = None) -> Sample:
    """Wall time and peak RSS of one process (``argv``), started by a small starter."""
    result = subprocess.run(
        [sys.executable, "-S", "-c", STARTER, *argv],
        stdout=subprocess.PIPE,
        cwd=cwd or ROOT,
        env=child_env(),
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"failed (exit status {result.returncode}): {' '.join(argv)[:200]}")
    elapsed, peak = result.stdout.split()
    return Sample(float(elapsed), int(peak))


@dataclass(frozen=True)
class Summary:
    """Each tool's best time, its peak memory (MB) over all runs, and every run's time."""

    best: dict[str, float]
    peak_mb: dict[str, float]
    runs: dict[str, list[float]]


def summarize(samples: dict[str, list[Sample]]) -> Summary:
    return Summary(
        best={tool: min(s.seconds for s in runs) for tool, runs in samples.items()},
        peak_mb={tool: max(s.peak_bytes for s in runs) / MB for tool, runs in samples.items()},
        runs={tool: [round(s.seconds, 3) for s in runs] for tool, runs in samples.items()},
    )


def tree_stats(root: str | os.PathLike[str]) -> tuple[int, int]:
    """Entries under ``root`` and the bytes of its files (symlinks not followed)."""
    entries = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.lstat(path).st_size
    return entries, total


def local_registry(work: Path) -> Any:
    """Debian's docker-registry on a free loopback port, storage in ``work`` (not started)."""
    sys.path.insert(0, str(ROOT))
    from tests.registry_server import Registry, _config, free_port

    storage = work / "storage"
    storage.mkdir()
    port = free_port()
    config = work / "registry.yml"
    config.write_text(_config(storage, port, ""))
    return Registry("bench", port, config, work / "registry.log")


def pyops_argv(code: str, *args: str) -> list[str]:
    """A Python process running ``code`` with this checkout's pyops importable."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code}", *args]


@dataclass(frozen=True)
class Row:
    """One line of the table: pyops against its baseline on the same input."""

    name: str  # what is measured, e.g. "filesystem writing"
    size: str  # the input, e.g. "62,089 entries, 0.94 GB"
    baseline: str  # the baseline tool, e.g. "tar cf"
    pyops_s: float
    baseline_s: float
    target: str  # in words, e.g. "ratio <= 1.3"
    met: bool
    pyops_peak_mb: float | None = None
    baseline_peak_mb: float | None = None
    note: str = ""
    runs: dict[str, list[float]] = field(default_factory=dict)  # every run, per tool

    @property
    def ratio(self) -> float:
        return self.pyops_s / self.baseline_s

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["ratio"] = round(self.ratio, 3)
        return json.dumps(data)


def emit(row: Row, as_json: bool) -> None:
    """Print the row, as JSON for ``run_all.py`` or as a few readable lines."""
    if as_json:
        print(row.to_json())
        return
    print(f"{row.name}: {row.size}")
    peak = f"   peak {row.pyops_peak_mb:.0f} MB" if row.pyops_peak_mb is not None else ""
    base_peak = f"   peak {row.baseline_peak_mb:.0f} MB" if row.baseline_peak_mb is not None else ""
    print(f"  pyops:        {row.pyops_s:8.3f} s{peak}")
    print(f"  {row.baseline + ':':13} {row.baseline_s:8.3f} s{base_peak}")
    for tool, values in row.runs.items():
        print(f"  runs {tool}: " + " ".join(f"{v:.3f}" for v in values))
    status = "met" if row.met else "NOT met"
    print(f"  ratio pyops/baseline: {row.ratio:.2f}   target {row.target}: {status}")
    if row.note:
        print(f"  {row.note}")


@dataclass
class FirstLine:
    """When a started program printed the line looked for."""

    seconds: float
    status: int
    line: bytes
    peak_mb: float
    """The process's peak memory when the line came (0 where /proc is not there)."""


def first_line(
    argv: list[str], env: dict[str, str], cwd: Path, marker: bytes, timeout: float
) -> FirstLine:
    """Start ``argv`` and time it to the first line of its output holding ``marker``; the
    process is killed after ``timeout`` seconds. Exits with the reason when no such line
    comes."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        elapsed = peak = 0.0
        seen = b""
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if marker in line:
                    elapsed = time.perf_counter() - start
                    peak = vm_hwm(proc.pid)
                    seen = line.strip()
                    break
            proc.communicate()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not elapsed:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise SystemExit(f"{shlex.join(argv)[:200]}: no {marker.decode()!r} line ({tail[0]})")
    return FirstLine(elapsed, proc.returncode, seen, peak)


def vm_hwm(pid: int) -> float:
    """Peak resident memory of a running process, in MB (its own, not inherited across exec)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return 0.0

"""The benchmark scripts run, measure both tools, and print the row ``run_all.py`` reads.

Only the plumbing is checked here, on small inputs; the figures themselves are for
``benchmarks/run_all.py`` (timed asserts do not belong in tests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def row_of(script: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--json", "--repeat", "1", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    row: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def check_row(row: dict[str, object], baseline: str) -> None:
    assert row["baseline"] == baseline
    runs = row["runs"]
    assert isinstance(runs, dict) and len(runs) == 2
    assert all(len(times) == 1 and times[0] > 0 for times in runs.values())
    assert isinstance(row["pyops_s"], float) and isinstance(row["baseline_s"], float)
    assert row["ratio"] == pytest.approx(row["pyops_s"] / row["baseline_s"], rel=1e-2)
    assert isinstance(row["met"], bool)


def test_filesystem_writing_benchmark_on_a_small_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(BENCHMARKS.parent / "pyops", tree)
    row = row_of("bench_tfs.py", "--tree", str(tree), "--scale", "2", "--out", str(tmp_path))
    check_row(row, "tar cf")
    files = sum(1 for p in tree.rglob("*"))
    assert row["size"].startswith(f"{2 * files:,} entries")  # type: ignore[union-attr]
    assert not list(tmp_path.glob("tmp*")), "the benchmark left its output behind"


def test_resolving_benchmark_on_a_few_files() -> None:
    if shutil.which("lddtree") is None:
        pytest.skip("lddtree is not installed (Debian: pax-utils)")
    row = row_of("bench_ldd.py", "--files", "5")
    check_row(row, "lddtree")
    assert row["size"] == "5 ELF files"


def test_run_all_lists_a_benchmark_it_cannot_run_as_skipped(tmp_path: Path) -> None:
    """A missing tool is a skipped row with its reason, not a failure of the whole table."""
    env_path = tmp_path / "bin"
    env_path.mkdir()
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--only", "hash", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": str(env_path), "HOME": str(tmp_path)},
        check=True,
    )
    assert "skipped" in done.stdout
    assert "sha256sum" in done.stdout

"""benchmarks/bench_arch.py: the row it prints when both guests boot, and its skip when a
release is missing. The figures themselves are for ``benchmarks/run_all.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import install_test_release

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_arch.py"
SKIPPED = 77


def bench(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYOPS_NANOS_RELEASE", "PYOPS_NANOS_RELEASE_ARM64")
    }
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        env={**env, "PYOPS_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_without_an_arm64_release_it_skips_and_says_why(
    tmp_path: Path, synthetic_release: Path
) -> None:
    home = tmp_path / "home"
    install_test_release(synthetic_release, home)  # x86-64 only
    done = bench(home, "--json", "--repeat", "1")
    assert done.returncode == SKIPPED, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("no arm64 Nanos release installed")
    assert "virt.tar.gz" in done.stdout


@pytest.mark.boot
def test_both_guests_boot_and_the_row_has_the_ratio(
    tmp_path: Path, nanos_release: Path, nanos_release_arm64: Path, cc: str, aarch64_cc: str
) -> None:
    home = tmp_path / "home"
    install_test_release(nanos_release, home)
    install_test_release(nanos_release_arm64, home)
    done = bench(home, "--json", "--repeat", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["baseline"] == "x86-64 guest"
    assert set(row["runs"]) == {"amd64", "arm64"}
    assert all(len(times) == 1 and times[0] > 0 for times in row["runs"].values())
    assert row["ratio"] == pytest.approx(row["pyops_s"] / row["baseline_s"], rel=1e-2)
    assert isinstance(row["met"], bool)

"""The codebase's own rules: typed, linted, and each third-party library in one module."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pyops"

# Each third-party library is imported by one module only (style.md, "one home").
HOMES = {
    "requests": {"net.py"},
    "elftools": {"elf.py"},
    "click": {"cli.py"},
    "tqdm": {"cli.py"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_third_party_libraries_have_one_home() -> None:
    offenders = []
    for module in sorted(PACKAGE.glob("*.py")):
        for lib in imported_roots(module) & HOMES.keys():
            if module.name not in HOMES[lib]:
                offenders.append(f"{module.name} imports {lib}")
    assert offenders == []


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed (pip install -e '.[test]')")
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_mypy_strict_is_clean() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", "pyops", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_tool("ruff", "format", "--check", "pyops", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr

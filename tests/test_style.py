"""The codebase's own rules: typed, linted, and each third-party library in one module."""

from __future__ import annotations

import ast
import os
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
    """Run a check tool: the one beside this Python if it has one, else the one on PATH.

    A missing tool skips the check on a developer's machine and fails it in CI
    (``CI=true``), where the pinned test dependencies are always installed.
    """
    beside = Path(sys.executable).parent / argv[0]
    found = str(beside) if beside.is_file() else shutil.which(argv[0])
    if found is None:
        message = f"{argv[0]} is not installed (see the README's test command)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run([found, *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False)


def test_mypy_strict_is_clean() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", "pyops", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_tool("ruff", "format", "--check", "pyops", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_check_tool_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        run_tool("pyops-no-such-check-tool")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        run_tool("pyops-no-such-check-tool")

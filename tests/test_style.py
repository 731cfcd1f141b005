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

# Each third-party library is imported by one module only (style.md, "one home"); click, the
# command line's library, by the modules of pyops/cli/.
HOMES = {
    "requests": {"oci/net.py"},
    "urllib3": {"oci/net.py"},
    "elftools": {"elf/reader.py"},
    "click": {"cli/*"},
    "tqdm": {"cli/_app.py"},
}


def modules() -> list[tuple[str, Path]]:
    """Every module of pyops, by its path relative to the package."""
    return [(p.relative_to(PACKAGE).as_posix(), p) for p in sorted(PACKAGE.rglob("*.py"))]


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _at_home(relative: str, homes: set[str]) -> bool:
    return any(relative == h or (h.endswith("/*") and relative.startswith(h[:-1])) for h in homes)


def test_third_party_libraries_have_one_home() -> None:
    offenders = []
    seen: set[str] = set()
    for relative, path in modules():
        for lib in imported_roots(path) & HOMES.keys():
            seen.add(lib)
            if not _at_home(relative, HOMES[lib]):
                offenders.append(f"{relative} imports {lib}")
    assert offenders == []
    assert seen == set(HOMES), "a home names a library nothing imports any more"


def _module_name(relative: str) -> str:
    name = "pyops." + relative.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def _load_time_imports(path: Path, known: set[str]) -> set[str]:
    """The pyops modules imported when ``path`` is loaded: top-level imports, not those in
    functions (loaded on first use) nor under ``if TYPE_CHECKING``."""
    out: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pyops"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("pyops"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return {name for name in out if name in known}


def test_no_import_cycles() -> None:
    names = {_module_name(relative): path for relative, path in modules()}
    graph = {name: _load_time_imports(path, set(names)) for name, path in names.items()}
    # A package's __init__ imports are what loading the package runs; a module of the
    # package loads its package first, which is not a cycle of ours to find.
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph[nxt])))
    assert cycles == []


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

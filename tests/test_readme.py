"""The README's example command, run as a new user would: a fresh home, offline."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def offline_example() -> str:
    """The command under "Without internet" in the README."""
    text = README.read_text()
    section = text.split("Without internet", 1)[1]
    match = re.search(r"```sh\n(.+?)\n```", section, re.S)
    assert match, "the README has no offline example"
    return match.group(1).strip()


@pytest.mark.boot
def test_readme_example_runs_for_a_new_user(tmp_path: Path, nanos_release: Path) -> None:
    """Everything after ``pip install`` (which CI itself runs first) from the README line,
    with HOME pointing at an empty folder and the release as a tarball copied over."""
    command = offline_example()
    assert command.startswith("python3 -m pip install -e . && ")
    example = command.split(" && ", 1)[1]
    named = re.search(r"nanos-release-linux-[\w.]+\.tar\.gz", example)
    assert named, example
    tarball = tmp_path / named.group(0)
    with tarfile.open(tarball, "w:gz") as tar:
        for entry in sorted(os.listdir(nanos_release)):
            tar.add(nanos_release / entry, arcname=entry)
    home = tmp_path / "user"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYOPS_")}
    env["HOME"] = str(home)
    env["PYOPS_RELEASE_URL"] = "http://127.0.0.1:9/unreachable"  # no network for a new user
    result = subprocess.run(
        ["bash", "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "hello from Nanos" in result.stdout.splitlines()
    assert (home / ".pyops" / "images" / "echo.img").is_file()


def test_ci_runs_the_readmes_test_command() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    section = readme.split("## Run the tests", 1)[1]
    command = section.split("```sh\n", 1)[1].split("\n", 1)[0]
    assert "-c tests/constraints.txt" in command and "pytest" in command
    ci = (root / ".ci" / "run").read_text()
    assert any(line.startswith(command) for line in ci.splitlines()), command

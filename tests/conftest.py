"""Shared fixtures: a Nanos release to boot, qemu, and compiled test programs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyops.release import NanosRelease

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def find_release() -> tuple[Path | None, str]:
    """A folder holding kernel.img and boot.img, and why there is none otherwise.

    ``PYOPS_NANOS_RELEASE`` names one; otherwise the newest release installed in the pyops
    cache (``PYOPS_HOME``, default ``~/.pyops``) is used.
    """
    env = os.environ.get("PYOPS_NANOS_RELEASE")
    if env:
        folder = Path(env)
        if (folder / "kernel.img").is_file() and (folder / "boot.img").is_file():
            return folder, ""
        return None, f"PYOPS_NANOS_RELEASE={env} holds no kernel.img and boot.img"
    try:
        from pyops.release import installed_releases
    except ImportError:
        return None, "no Nanos release: set PYOPS_NANOS_RELEASE to a release folder"
    releases = installed_releases()
    if releases:
        return releases[-1].path, ""
    return None, "no Nanos release installed (pyops kernel install --from TARBALL)"


@pytest.fixture(scope="session")
def nanos_release() -> Path:
    """A Nanos release folder; skips the test when there is none or no qemu."""
    folder, why = find_release()
    if folder is None:
        pytest.skip(why)
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return folder


@pytest.fixture(scope="session")
def cc() -> str:
    """The C compiler; skips when there is none."""
    found = shutil.which("gcc")
    if found is None:
        pytest.skip("gcc is not installed")
    return found


def fixture_source(name: str) -> str:
    """The text of a source file in ``fixtures/`` (the C programs the tests compile)."""
    return (FIXTURES / name).read_text()


def compile_c(cc: str, source: str, out: Path, *flags: str) -> Path:
    """Compile one C file given as text."""
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run([cc, "-O1", "-o", str(out), str(src), *flags], check=True)
    return out


def install_test_release(folder: Path, home: Path) -> NanosRelease:
    """Install the release ``folder`` into a test's own pyops home, and return it."""
    from pyops.errors import InvalidInput
    from pyops.release import get_release, install_release_from

    try:
        return install_release_from(folder, home=home)
    except InvalidInput:  # a folder whose name is not a version
        install_release_from(folder, version="0.0.0-test", home=home)
        return get_release("0.0.0-test", home=home, download=False)

"""One image, two architectures: ``pkg from-docker --arch`` picks a platform from an index and
says which, and ``pkg load`` boots the package on a Nanos of its own architecture.

The image is ``test/hello-multi:1`` of tests/registry_server.py: an OCI index over an amd64
and an arm64 image of fixtures/arch_hello.c, each dynamically linked with its own glibc. The
tests that boot need the release of that architecture (``nanos_release`` and
``nanos_release_arm64`` in conftest.py) and skip without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyops.errors import PackageError
from pyops.ops.package import Package, load_package

from ..conftest import install_test_release
from ..registry_server import Registries

CHECKOUT = Path(__file__).resolve().parents[2]
ELF_MACHINES = {"amd64": 62, "arm64": 183}
LOADERS = {"amd64": "ld-linux-x86-64.so.2", "arm64": "ld-linux-aarch64.so.1"}
PROGRAM = ("-f", "arch_hello")  # on the image's PATH
RELEASE_FIXTURES = {"amd64": "nanos_release", "arm64": "nanos_release_arm64"}


@dataclass(frozen=True)
class Home:
    """A pyops home of this module's own, used through the command line."""

    path: Path

    def pyops(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        path = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
        return subprocess.run(
            [sys.executable, "-m", "pyops", *args],
            env={**os.environ, "PYOPS_HOME": os.fspath(self.path), "PYTHONPATH": path},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def package(self, name: str) -> Package:
        return load_package(name, self.path)


@pytest.fixture(scope="module")
def hello_multi(registries: Registries) -> str:
    """The reference of the two-architecture image; skips when it could not be built."""
    images = registries.images
    if images.hello_multi_missing:
        pytest.skip(f"no test/hello-multi image: {images.hello_multi_missing}")
    return f"{registries.plain.host}/{images.hello_multi}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return Home(tmp_path_factory.mktemp("multiarch") / "home")


@pytest.fixture(scope="module")
def packages(home: Home, hello_multi: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """``pkg from-docker IMAGE --arch ARCH --name hello-ARCH``, made once for each architecture."""
    made = {}
    for arch in ("arm64", "amd64"):
        made[arch] = home.pyops(
            "pkg", "from-docker", hello_multi, *PROGRAM, "--arch", arch, "--name", f"hello-{arch}"
        )
    return made


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", path
    return int.from_bytes(head[18:20], "little")


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_from_docker_takes_the_platform_asked_for_and_says_which(
    home: Home,
    packages: dict[str, subprocess.CompletedProcess[str]],
    registries: Registries,
    arch: str,
) -> None:
    result = packages[arch]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"hello-{arch}"  # the package name, last
    said = result.stdout + result.stderr
    other = "amd64" if arch == "arm64" else "arm64"
    assert re.search(rf"\blinux/{arch}\b", said), said
    assert f"linux/{other}" not in said, said
    # The package holds that platform's program and loader, and records the platform.
    package = home.package(f"hello-{arch}")
    assert package.arch == arch
    sysroot = package.sysroot
    program = sysroot / registries.images.hello_multi_program.lstrip("/")
    assert elf_machine(program) == ELF_MACHINES[arch]
    loaders = [p for p in sysroot.rglob(LOADERS[arch]) if p.is_file() and not p.is_symlink()]
    assert loaders and all(elf_machine(p) == ELF_MACHINES[arch] for p in loaders)
    assert not list(sysroot.rglob(LOADERS[other]))
    manifest = json.loads((package.path / "package.manifest").read_text())
    platform = manifest["ManifestPassthrough"]["pyops_image"]["Platform"]
    assert platform.startswith(f"linux/{arch}"), platform


def test_platform_spelled_as_docker_does_picks_the_same_image(
    home: Home, packages: dict[str, subprocess.CompletedProcess[str]], hello_multi: str
) -> None:
    result = home.pyops(
        "pkg", "from-docker", hello_multi, *PROGRAM, "--platform", "linux/arm64", "--name", "p"
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"\blinux/arm64\b", result.stdout + result.stderr)
    program = "usr/bin/arch_hello"
    assert home.package("p").arch == "arm64"
    assert (home.package("p").sysroot / program).read_bytes() == (
        home.package("hello-arm64").sysroot / program
    ).read_bytes()


def test_an_architecture_nanos_does_not_run_on_is_refused(home: Home, hello_multi: str) -> None:
    result = home.pyops(
        "pkg", "from-docker", hello_multi, *PROGRAM, "--arch", "riscv64", "--name", "none"
    )
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert "riscv64" in result.stderr, result.stderr
    with pytest.raises(PackageError):
        home.package("none")


def test_an_architecture_the_image_is_not_built_for_is_a_clear_error(
    home: Home, registries: Registries
) -> None:
    """test/demo:1 is one amd64 image, no index."""
    ref = f"{registries.plain.host}/{registries.images.demo}"
    result = home.pyops("pkg", "from-docker", ref, "-f", "ls", "--arch", "arm64", "--name", "none")
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert "linux/amd64" in result.stderr and "linux/arm64" in result.stderr, result.stderr
    with pytest.raises(PackageError):
        home.package("none")


@pytest.mark.boot
@pytest.mark.parametrize(("arch", "machine"), [("arm64", "aarch64"), ("amd64", "x86_64")])
def test_pkg_load_boots_each_platform_on_a_nanos_of_its_architecture(
    home: Home,
    packages: dict[str, subprocess.CompletedProcess[str]],
    registries: Registries,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    arch: str,
    machine: str,
) -> None:
    assert packages[arch].returncode == 0, packages[arch].stderr
    release = install_test_release(request.getfixturevalue(RELEASE_FIXTURES[arch]), home.path)
    assert release.arch == arch
    result = home.pyops(
        "pkg",
        "load",
        f"hello-{arch}",
        "-a",
        "given word",
        "--accel",
        "tcg",
        "-m",
        "512M",
        cwd=tmp_path,
    )
    lines = [line for line in result.stdout.replace("\r", "").splitlines() if "arch " in line]
    assert lines[:1] == [f"arch machine: {machine}"], result.stdout + result.stderr
    assert "arch arg 1: given word" in lines, lines
    assert f"arch env: {registries.images.hello_multi_greeting}" in lines, lines
    assert f"arch readback: written on {machine}" in lines, lines
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr

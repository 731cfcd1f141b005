"""arm64 guests: ``pyops run`` of an aarch64 program boots it on an arm64 Nanos under
qemu-system-aarch64, and a program whose loader is of the other architecture is refused.

The program (fixtures/arch_hello.c) is compiled here with Debian's cross compiler, linked
dynamically against its arm64 glibc (libc6-arm64-cross, in /usr/aarch64-linux-gnu), and
run from a small target root holding those libraries where an arm64 Debian has them. The
boot test needs an arm64 release (``nanos_release_arm64`` in conftest.py) and skips
without one; the refusals need none (a synthetic release stands in).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyops.nanos.disk import open_image
from pyops.nanos.tree import File

from ..conftest import (
    compile_c,
    fixture_source,
    install_test_release,
    make_release_folder,
    tiny_elf,
)

ARCH_HELLO = fixture_source("arch_hello.c")
ARM64_LIBS = Path("/usr/aarch64-linux-gnu/lib")
ARM64_LOADER = "lib/ld-linux-aarch64.so.1"
ARM64_LIBC = "lib/aarch64-linux-gnu/libc.so.6"
X86_LOADER = "lib64/ld-linux-x86-64.so.2"
X86_LIBC = "lib/x86_64-linux-gnu/libc.so.6"
EM_AARCH64 = 183
CHECKOUT = Path(__file__).resolve().parents[2]


def pyops(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m pyops ARGS`` of this checkout, with its own ``PYOPS_HOME``."""
    path = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pyops", *args],
        env={**os.environ, "PYOPS_HOME": os.fspath(home), "PYTHONPATH": path},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def arm64_glibc() -> tuple[Path, Path]:
    """Debian's arm64 loader and libc.so.6; skips when libc6-arm64-cross is missing."""
    loader, libc = ARM64_LIBS / "ld-linux-aarch64.so.1", ARM64_LIBS / "libc.so.6"
    if not (loader.is_file() and libc.is_file()):
        pytest.skip(f"no arm64 glibc in {ARM64_LIBS} (Debian: libc6-arm64-cross)")
    return loader, libc


def x86_glibc() -> tuple[Path, Path]:
    """The host's x86-64 loader and libc.so.6; skips on a host without them."""
    loader, libc = Path("/", X86_LOADER), Path("/", X86_LIBC)
    if not (loader.is_file() and libc.is_file()):
        pytest.skip(f"needs an x86-64 Debian-style host with {loader} and {libc}")
    return loader.resolve(), libc.resolve()


def make_root(root: Path, program: Path, libs: dict[str, Path]) -> Path:
    """A target root: ``program`` as ``/arch_hello``, each library at its path."""
    root.mkdir(parents=True)
    shutil.copy2(program, root / "arch_hello")
    for path, source in libs.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / path)
    return root


@pytest.fixture(scope="module")
def arm64_program(tmp_path_factory: pytest.TempPathFactory, aarch64_cc: str) -> Path:
    """fixtures/arch_hello.c for arm64, dynamically linked against Debian's arm64 glibc."""
    arm64_glibc()
    out = tmp_path_factory.mktemp("arm64") / "arch_hello"
    compile_c(aarch64_cc, ARCH_HELLO, out, f"-L{ARM64_LIBS}")
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == EM_AARCH64
    assert b"/" + ARM64_LOADER.encode() in data, "not linked dynamically"
    return out


@pytest.fixture(scope="module")
def x86_program(tmp_path_factory: pytest.TempPathFactory, cc: str) -> Path:
    """fixtures/arch_hello.c for x86-64, dynamically linked against the host's glibc."""
    out = tmp_path_factory.mktemp("x86") / "arch_hello"
    return compile_c(cc, ARCH_HELLO, out)


def console(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The program's lines of a run's output (the kernel prints others)."""
    return [line for line in result.stdout.replace("\r", "").splitlines() if "arch " in line]


@pytest.mark.boot
def test_arm64_program_runs_on_arm64_nanos_and_its_exit_code_is_pyops_exit_status(
    tmp_path: Path, nanos_release_arm64: Path, arm64_program: Path
) -> None:
    loader, libc = arm64_glibc()
    root = make_root(tmp_path / "root", arm64_program, {ARM64_LOADER: loader, ARM64_LIBC: libc})
    home = tmp_path / "home"
    release = install_test_release(nanos_release_arm64, home)
    assert release.arch == "arm64"
    result = pyops(
        home, "run", "--target-root", str(root), "/arch_hello", "--accel", "tcg", "-m", "512M",
        "-a", "two words", "-a", "ünï", "-e", "ARCH_GREETING=hello from arm64",
        cwd=tmp_path,
    )  # fmt: skip
    lines = console(result)
    assert lines[0] == "arch machine: aarch64", result.stdout + result.stderr
    assert re.fullmatch(r"arch arg 0: \S*arch_hello", lines[1]), lines
    assert lines[2:] == [
        "arch arg 1: two words",
        "arch arg 2: ünï",
        "arch env: hello from arm64",
        "arch readback: written on aarch64",
    ], result.stdout + result.stderr
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    # The image holds the program and its arm64 libraries at their paths in the root.
    (image,) = (home / "images").glob("*.img")
    tree = open_image(image).tree()
    for path in ("/arch_hello", "/" + ARM64_LOADER, "/" + ARM64_LIBC):
        assert isinstance(tree.get(path), File), path


@pytest.mark.boot
def test_a_given_exit_code_comes_back_from_an_arm64_guest(
    tmp_path: Path, nanos_release_arm64: Path, arm64_program: Path
) -> None:
    loader, libc = arm64_glibc()
    root = make_root(tmp_path / "root", arm64_program, {ARM64_LOADER: loader, ARM64_LIBC: libc})
    home = tmp_path / "home"
    install_test_release(nanos_release_arm64, home)
    result = pyops(
        home, "run", "--target-root", str(root), "/arch_hello", "--accel", "tcg", "-m", "512M",
        "-a", "42", cwd=tmp_path,
    )  # fmt: skip
    assert "arch arg 1: 42" in console(result), result.stdout + result.stderr
    assert result.returncode == 42, result.stderr


def make_arm64_release_folder(folder: Path) -> Path:
    """A synthetic arm64 release (kernel and klibs with an aarch64 ELF header, no boot.img):
    it passes pyops's checks and makes disk images, but boots nothing."""
    (folder / "klibs").mkdir(parents=True)
    (folder / "kernel.img").write_bytes(tiny_elf(EM_AARCH64, b"synthetic arm64 kernel\n" * 64))
    for name in ("ntp", "strace"):
        (folder / "klibs" / name).write_bytes(tiny_elf(EM_AARCH64, name.encode() * 16))
    return folder


@pytest.fixture
def synthetic_home(tmp_path: Path) -> Path:
    """A pyops home holding a synthetic release of each architecture."""
    home = tmp_path / "home"
    install_test_release(make_release_folder(tmp_path / "x86" / "0.1.99"), home)
    install_test_release(make_arm64_release_folder(tmp_path / "arm" / "0.1.99-arm"), home)
    return home


MISMATCHES = {
    # An arm64 program whose loader and libc, at the arm64 paths, are x86-64 files.
    "arm64 program, x86-64 libraries": ("arm64", {ARM64_LOADER: "x86", ARM64_LIBC: "x86"}),
    # An x86-64 program whose loader and libc, at the x86-64 paths, are arm64 files.
    "x86-64 program, arm64 libraries": ("x86", {X86_LOADER: "arm64", X86_LIBC: "arm64"}),
}


@pytest.mark.parametrize("command", ["build", "run"])
@pytest.mark.parametrize("case", list(MISMATCHES))
def test_libraries_of_the_other_architecture_are_refused_before_any_image_is_written(
    tmp_path: Path, synthetic_home: Path, request: pytest.FixtureRequest, command: str, case: str
) -> None:
    program_arch, layout = MISMATCHES[case]
    program: Path = request.getfixturevalue(f"{program_arch}_program")
    arm64_loader, arm64_libc = arm64_glibc()
    x86_loader, x86_libc = x86_glibc()
    sources = {
        "arm64": {"loader": arm64_loader, "libc": arm64_libc},
        "x86": {"loader": x86_loader, "libc": x86_libc},
    }
    libs = {
        path: sources[kind]["loader" if "ld-linux" in path else "libc"]
        for path, kind in layout.items()
    }
    root = make_root(tmp_path / "root", program, libs)
    result = pyops(synthetic_home, command, "--target-root", str(root), "/arch_hello", cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.lower()
    assert "interpreter" in message, result.stderr
    assert re.search(r"x86[-_]64", message) and re.search(r"aarch64|arm64", message), message
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # a message, not a dump
    written = [p for p in synthetic_home.rglob("*.img") if "releases" not in p.parts]
    assert written == [], written


def test_a_library_of_the_other_architecture_is_named_in_the_error(
    tmp_path: Path, synthetic_home: Path, arm64_program: Path
) -> None:
    """The loader is right, libc.so.6 is an x86-64 file where an arm64 one belongs."""
    arm64_loader, _ = arm64_glibc()
    _, x86_libc = x86_glibc()
    root = make_root(
        tmp_path / "root", arm64_program, {ARM64_LOADER: arm64_loader, ARM64_LIBC: x86_libc}
    )
    result = pyops(synthetic_home, "build", "--target-root", str(root), "/arch_hello")
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert not [p for p in synthetic_home.rglob("*.img") if "releases" not in p.parts]
    assert "/" + ARM64_LIBC in result.stderr, result.stderr
    assert re.search(r"x86[-_]64", result.stderr.lower()), result.stderr

"""Shared fixtures: a Nanos release to boot, qemu, and compiled test programs."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# Session fixtures shared by every module: the test registries (started once per run, with
# the images pushed to them) and the Debian images. Defined here, not imported into each
# module, so that pytest keeps one instance for the whole session.
from .debian_images import debian_image  # noqa: F401
from .registry_server import registries  # noqa: F401

if TYPE_CHECKING:
    from pyops.nanos.release import NanosRelease

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
        from pyops.arch import Arch
        from pyops.nanos.release import installed_releases
    except ImportError:
        return None, "no Nanos release: set PYOPS_NANOS_RELEASE to a release folder"
    # Only x86-64 releases: an arm64 one is nanos_release_arm64's.
    releases = installed_releases(arch=Arch.AMD64)
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


ARM64_HOW = "pyops kernel install --from nanos-release-linux-VERSION-virt.tar.gz"


def find_release_arm64() -> tuple[Path | None, str]:
    """An arm64 release folder (holding kernel.img), and why there is none otherwise.

    ``PYOPS_NANOS_RELEASE_ARM64`` names one; otherwise the newest installed release whose
    ``arch`` is arm64 is used.
    """
    env = os.environ.get("PYOPS_NANOS_RELEASE_ARM64")
    if env:
        folder = Path(env)
        if (folder / "kernel.img").is_file():
            return folder, ""
        return None, f"PYOPS_NANOS_RELEASE_ARM64={env} holds no kernel.img"
    from pyops.arch import Arch
    from pyops.nanos.release import installed_releases

    releases = installed_releases(arch=Arch.ARM64)
    if releases:
        return releases[-1].path, ""
    return None, f"no arm64 Nanos release installed ({ARM64_HOW})"


@pytest.fixture(scope="session")
def nanos_release_arm64() -> Path:
    """An arm64 Nanos release folder; skips the test when there is none or no
    qemu-system-aarch64."""
    folder, why = find_release_arm64()
    if folder is None:
        pytest.skip(why)
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed (Debian: qemu-system-arm)")
    return folder


@pytest.fixture(scope="session")
def aarch64_cc() -> str:
    """The arm64 cross compiler; skips when there is none."""
    found = shutil.which("aarch64-linux-gnu-gcc")
    if found is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed (Debian: gcc-aarch64-linux-gnu)")
    return found


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
    from pyops.nanos.release import install_release_from

    try:
        return install_release_from(folder, home=home)
    except InvalidInput:  # a folder whose name is not a version
        return install_release_from(folder, version="0.0.0-test", home=home)


# --- a synthetic release and a stand-in for qemu, for the tests that do not boot -------------


def make_boot_img(path: Path, stage2_sectors: int = 94) -> bytes:
    """A structurally valid boot.img: signature, region record, stage2 length."""
    sector = bytearray(512)
    struct.pack_into("<QQI", sector, 0x1AA, 0x8000, stage2_sectors * 512, 12)
    sector[510:512] = b"\x55\xaa"
    data = bytes(sector) + bytes(range(256)) * (stage2_sectors * 2)
    path.write_bytes(data)
    return data


def tiny_elf(machine: int = 62, body: bytes = b"") -> bytes:
    """A 64-bit little-endian ELF header (x86-64 unless ``machine`` says otherwise) and
    ``body``: enough for pyops's release checks, which read only the header."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, machine, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    return header + body


SYNTHETIC_KLIBS = ("gpu_nvidia", "ntp", "strace", "tls")


def make_release_folder(folder: Path, machine: int = 62) -> Path:
    """A release as Nanos's ``make release`` lays it out, with stand-in contents: it passes
    pyops's checks and makes real disk images, but boots nothing. ``machine`` 183 makes an
    arm64 one (no boot.img)."""
    (folder / "klibs").mkdir(parents=True)
    if machine == 62:
        make_boot_img(folder / "boot.img")
    (folder / "kernel.img").write_bytes(tiny_elf(machine, b"synthetic kernel\n" * 64))
    for name in SYNTHETIC_KLIBS:
        (folder / "klibs" / name).write_bytes(tiny_elf(machine, name.encode() * 16))
    return folder


@pytest.fixture(scope="session")
def synthetic_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic release folder (see :func:`make_release_folder`)."""
    return make_release_folder(tmp_path_factory.mktemp("release") / "nanos-release-linux-0.1.99")


_FAKE_QEMU = """#!{python}
import json, os, sys
with open(os.environ["PYOPS_TEST_QEMU_LOG"], "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
drive = next(a.split("file=", 1)[1].split(",format=")[0] for a in sys.argv if "file=" in a)
with open(drive, "r+b") as disk:
    import hashlib
    with open(os.environ["PYOPS_TEST_QEMU_LOG"] + ".drives", "a") as seen:
        seen.write(drive + " " + hashlib.sha256(disk.read()).hexdigest() + "\\n")
    marker = os.environ.get("PYOPS_TEST_QEMU_WRITE", "")
    if marker:  # what a guest does: write to its disk
        disk.seek(-4096, 2)
        disk.write(marker.encode())
with open(os.environ["PYOPS_TEST_QEMU_LOG"] + ".pids", "a") as pids:
    pids.write(str(os.getpid()) + "\\n")
sys.stdout.write(os.environ.get("PYOPS_TEST_QEMU_OUTPUT", ""))
sys.stdout.flush()
if os.environ.get("PYOPS_TEST_QEMU_HANG"):  # a guest that never stops
    import time
    time.sleep(600)
sys.stderr.write(os.environ.get("PYOPS_TEST_QEMU_STDERR", ""))
sys.exit(int(os.environ.get("PYOPS_TEST_QEMU_STATUS", "0")))
"""


@dataclass
class FakeQemu:
    """A qemu on PATH that records each command line and exits with ``status``."""

    log: Path
    monkeypatch: pytest.MonkeyPatch

    def runs(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def drives(self) -> list[tuple[str, str]]:
        """The disk each run booted, with the SHA-256 of its content when qemu started."""
        seen = Path(f"{self.log}.drives")
        if not seen.exists():
            return []
        return [tuple(line.split(" ")) for line in seen.read_text().splitlines()]  # type: ignore[misc]

    def pids(self) -> list[int]:
        """The process id of each run."""
        seen = Path(f"{self.log}.pids")
        return [int(x) for x in seen.read_text().split()] if seen.exists() else []

    def hang(self) -> None:
        """Make the next runs never stop by themselves."""
        self.monkeypatch.setenv("PYOPS_TEST_QEMU_HANG", "1")

    def answer(self, status: int = 0, output: str = "", stderr: str = "", write: str = "") -> None:
        """How the next runs behave: exit status, console output, and bytes the "guest"
        writes near the end of its disk."""
        self.monkeypatch.setenv("PYOPS_TEST_QEMU_WRITE", write)
        self.monkeypatch.setenv("PYOPS_TEST_QEMU_STATUS", str(status))
        self.monkeypatch.setenv("PYOPS_TEST_QEMU_OUTPUT", output)
        self.monkeypatch.setenv("PYOPS_TEST_QEMU_STDERR", stderr)


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeQemu:
    """Puts a stand-in ``qemu-system-x86_64`` and ``qemu-system-aarch64`` first on PATH
    (see :class:`FakeQemu`)."""
    bindir = tmp_path / "fake-qemu-bin"
    bindir.mkdir()
    for name in ("qemu-system-x86_64", "qemu-system-aarch64"):
        script = bindir / name
        script.write_text(_FAKE_QEMU.format(python=sys.executable))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    log = tmp_path / "qemu-runs.jsonl"
    monkeypatch.setenv("PYOPS_TEST_QEMU_LOG", str(log))
    fake = FakeQemu(log, monkeypatch)
    fake.answer()
    return fake


@pytest.fixture(scope="session")
def _empty_ops_defaults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ops-defaults") / "opsrc.json"
    path.write_text("{}")
    return path


@pytest.fixture(autouse=True)
def _no_ops_defaults(_empty_ops_defaults: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ops default config (``~/.opsrc``) and ``ops_render_config`` of whoever runs the
    tests stay out of them: the default config is an empty one. Ops's package repository is
    a loopback port nothing listens on (no test reaches the internet); tests that use one
    serve their own."""
    monkeypatch.setenv("OPS_DEFAULT_CONFIG", str(_empty_ops_defaults))
    monkeypatch.delenv("ops_render_config", raising=False)
    monkeypatch.setenv("OPS_PACKAGE_MANIFEST_URL", "http://127.0.0.1:9/manifest.json")
    monkeypatch.setenv("OPS_PACKAGE_BASE_URL", "http://127.0.0.1:9/packages")


# --- one line on the tests that need Nanos: how many ran, how many skipped and why ---------

_NANOS_TESTS: dict[str, tuple[str, str]] = {}


def _needs_nanos(item: pytest.Item) -> bool:
    interop = ("test_tfs_interop", "test_mkfs_dump_interop")
    return item.get_closest_marker("boot") is not None or any(n in item.nodeid for n in interop)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _NANOS_NODEIDS:
        return
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
        _NANOS_TESTS[report.nodeid] = ("skipped", str(reason).removeprefix("Skipped: "))
    elif report.failed:
        _NANOS_TESTS[report.nodeid] = ("failed", "")
    elif report.when == "call":
        _NANOS_TESTS.setdefault(report.nodeid, ("ran", ""))


_NANOS_NODEIDS: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Only boot tests may need a real Nanos release; the others use the synthetic one.
    unmarked = [
        item.nodeid
        for item in items
        if {"nanos_release", "nanos_release_arm64"} & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("boot") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that need a real Nanos release must be marked boot: " + ", ".join(unmarked)
        )
    _NANOS_NODEIDS.update(item.nodeid for item in items if _needs_nanos(item))


def nanos_summary() -> str:
    """``boot and interop tests: N ran, N skipped (reason; reason)``."""
    ran = sum(1 for outcome, _ in _NANOS_TESTS.values() if outcome == "ran")
    failed = sum(1 for outcome, _ in _NANOS_TESTS.values() if outcome == "failed")
    reasons: dict[str, int] = {}
    for outcome, reason in _NANOS_TESTS.values():
        if outcome == "skipped":
            reasons[reason] = reasons.get(reason, 0) + 1
    skipped = sum(reasons.values())
    why = "; ".join(f"{n}: {reason}" for reason, n in sorted(reasons.items()))
    text = f"boot and interop tests: {ran} ran, {failed} failed, {skipped} skipped"
    return text + (f" ({why})" if why else "")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _NANOS_TESTS:
        return
    line = nanos_summary()
    terminalreporter.write_line(line)
    target = os.environ.get("PYOPS_NANOS_SUMMARY")
    if target:
        Path(target).write_text(line + "\n")


# --- deep folder chains: the hostile-input tests make them, thousands of folders deep. At the
# end of a session pytest removes old temporary folders with shutil.rmtree, which recurses
# once per level on Python 3.11. The limit is raised for that step only (a pure-Python call
# does not grow the C stack on 3.11), so that tests still see the normal limit.


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish() -> Any:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)

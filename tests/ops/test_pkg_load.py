"""``pyops pkg load``: from an image on a registry to a program running on Nanos.

Boots when a Nanos release is installed (see conftest.py), else skips with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.nanos.disk import open_image
from pyops.nanos.release import NanosRelease
from pyops.nanos.tree import File
from pyops.oci.store import Store
from pyops.ops.build import HOSTS, BuildConfig, build_package_image, package_tree
from pyops.ops.package import from_docker, load_package

from ..conftest import FakeQemu, install_test_release
from .test_package import PkgImage, pkg_image, store  # noqa: F401


@pytest.fixture
def release(store: Store, nanos_release: Path) -> NanosRelease:  # noqa: F811
    return install_test_release(nanos_release, store.root)


def test_argument_files_from_the_current_directory_go_to_the_working_directory(
    pkg_image: PkgImage,  # noqa: F811
    store: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    package = from_docker(pkg_image.ref, "ls", name="lister", store=store)
    (tmp_path / "hi.txt").write_text("hi\n")
    tree = package_tree(package, ["-l", "hi.txt", "absent.txt", "../up.txt"], cwd=str(tmp_path))
    node = tree.get("/srv/hi.txt")  # the image's WorkingDir
    assert isinstance(node, File)
    assert not tree.exists("/srv/absent.txt")


@pytest.mark.boot
def test_package_from_a_registry_boots_with_its_own_and_given_arguments(
    pkg_image: PkgImage,  # noqa: F811
    store: Store,  # noqa: F811
    release: NanosRelease,
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["pkg", "from-docker", pkg_image.ref, "-f", "ls", "--name", "lister"])
    assert made.exit_code == 0, made.output
    assert made.output.strip().endswith("lister")

    (tmp_path / "hi.txt").write_text("hi\n")
    env = {**os.environ, "PYOPS_HOME": str(store.root)}
    result = subprocess.run(
        [sys.executable, "-m", "pyops", "pkg", "load", "lister", "-l", "-a", "hi.txt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert "hi.txt" in result.stdout.splitlines()

    # The library does the same: the image's Entrypoint/Cmd and Env when no -a is given.
    greeter = from_docker(pkg_image.ref, "greet", name="greeter", store=store)
    assert load_package("greeter", store.root).name == "greeter"
    built = build_package_image(
        greeter, BuildConfig(program=greeter.program), release, tmp_path / "greeter.img"
    )
    manifest = open_image(built.path).manifest
    assert manifest.cwd == "/srv"
    assert manifest.environment["GREETING"] == "hello"
    assert manifest.environment["LD_LIBRARY_PATH"] == "/opt/lib:/opt/lib2"
    log = tmp_path / "console"
    from pyops.vm.qemu import VmConfig, run_vm

    with open(log, "wb") as out:
        code = run_vm(built.path, VmConfig(memory="512M"), stdout=out.fileno(), timeout=240)
    console = log.read_text(errors="replace").replace("\r", "").splitlines()
    assert code == 0, console
    assert manifest.environment["PWD"] == "/srv"
    assert "new" in console, console  # libgreet.so of the image's last layer says "new"

    # In the background: the command returns once qemu runs; the instance keeps the
    # program's console and, once it is over, its exit code.
    bg = subprocess.run(
        [sys.executable, "-m", "pyops", "pkg", "load", "lister", "--background"]
        + ["--instance-name", "bg", "-a", "hi.txt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert bg.returncode == 0, bg.stderr
    assert bg.stdout.strip() == "bg"
    import time

    from pyops.ops.instances import get_instance, stop_instance

    deadline = time.monotonic() + 240
    while get_instance("bg", store.root).state != "stopped" and time.monotonic() < deadline:
        time.sleep(0.5)
    done = get_instance("bg", store.root)
    assert (done.state, done.exit_code) == ("stopped", 0), done
    assert "hi.txt" in done.console.read_text(errors="replace")
    assert stop_instance("bg", home=store.root).state == "stopped"  # nothing to stop


def test_pkg_load_builds_the_package_image_and_boots_a_fresh_copy(
    pkg_image: PkgImage,  # noqa: F811
    store: Store,  # noqa: F811
    synthetic_release: Path,
    fake_qemu: FakeQemu,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Everything ``pkg load`` does up to qemu, with a synthetic release and a stand-in qemu."""
    install_test_release(synthetic_release, store.root)
    monkeypatch.setenv("PYOPS_HOME", str(store.root))
    runner = CliRunner()
    made = runner.invoke(cli, ["pkg", "from-docker", pkg_image.ref, "-f", "greet", "--name", "g"])
    assert made.exit_code == 0, made.output
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hi.txt").write_text("hi\n")
    fake_qemu.answer(status=5)  # the guest exits 2
    result = runner.invoke(cli, ["pkg", "load", "g", "-a", "hi.txt", "-m", "1G", "--smp", "2"])
    assert result.exit_code == 2, result.output
    (argv,) = fake_qemu.runs()
    copy = store.root / "runs" / "g.img"
    assert f"file={copy},format=raw,if=none,id=hd0" in argv
    assert argv[argv.index("-m") + 1] == "1G" and argv[argv.index("-smp") + 1] == "2"
    disk = open_image(store.root / "images" / "g.img")
    manifest = disk.manifest
    assert manifest.arguments == ("/usr/bin/greet", "hi.txt")
    assert manifest.cwd == "/srv"
    assert manifest.environment["GREETING"] == "hello"
    assert manifest.environment["NANOS_VERSION"] == "0.1.99"
    tree = disk.tree()
    hi = tree.get("/srv/hi.txt")
    assert isinstance(hi, File)
    # localhost resolves in every guest (Docker gives every container an /etc/hosts).
    hosts = tree.get("/etc/hosts")
    assert isinstance(hosts, File) and hosts.size == len(HOSTS)

"""An Ops user's ``~/.ops`` as pyops's home: its releases, packages and volumes, laid out as
Ops lays them out (Ops's lepton/ and cmd/ code: releases at the top, ``local_packages/<arch>/``,
``packages/<arch>/<namespace>/<name>_<version>``), are listed and their packages boot.

The home is made by each test from that layout, with a synthetic release (it makes real
images but boots nothing) and a stand-in qemu; the boot test uses a real Nanos release.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops import home as pyops_home
from pyops.cli import cli
from pyops.nanos.disk import open_image

from ..conftest import FakeQemu, compile_c, fixture_source

HELLO = fixture_source("hello.c")


def ops_package(folder: Path, program: Path, name: str) -> Path:
    """A package as Ops lays one out: ``package.manifest``, the program beside ``sysroot/``
    (named ``<folder>/<exe>`` in the manifest), the libraries inside ``sysroot/``."""
    from pyops.elf.ldd import resolve

    (folder / "sysroot").mkdir(parents=True)
    shutil.copy2(program, folder / program.name)
    for lib in resolve(str(program)).libraries + (resolve(str(program)).interpreter,):
        if lib is None:
            continue
        dest = folder / "sysroot" / lib.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib.host_path, dest)
    manifest = {"Program": f"{name}/{program.name}", "Args": [program.name], "Version": "1.0"}
    (folder / "package.manifest").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def ops_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_release: Path, cc: str
) -> Path:
    home = tmp_path / ".ops"
    shutil.copytree(synthetic_release, home / "0.1.99")
    (home / "images").mkdir(parents=True)
    (home / "volumes").mkdir()
    hello = compile_c(cc, HELLO, tmp_path / "hello")
    ops_package(home / "local_packages/amd64/hello_1.0", hello, "hello_1.0")
    ops_package(home / "packages/amd64/eyberg/greeter_v2.0", hello, "greeter_v2.0")
    monkeypatch.setenv("PYOPS_HOME", str(home))
    monkeypatch.delenv(pyops_home.LAYOUT_ENV, raising=False)
    return home


def test_an_ops_home_is_told_apart(tmp_path: Path, ops_home: Path) -> None:
    assert pyops_home.layout(ops_home) == pyops_home.OPS
    assert pyops_home.releases_dir(ops_home) == ops_home  # releases at the top, as Ops has them
    pyops_like = tmp_path / "p"
    (pyops_like / "releases").mkdir(parents=True)
    assert pyops_home.layout(pyops_like) == pyops_home.PYOPS
    assert pyops_home.layout(tmp_path / "empty") == pyops_home.PYOPS
    other = tmp_path / "elsewhere"
    shutil.copytree(ops_home / "0.1.99", other / "0.1.99")  # a release folder at the top
    assert pyops_home.layout(other) == pyops_home.OPS
    env = {pyops_home.LAYOUT_ENV: "ops", "PYOPS_HOME": str(pyops_like)}
    assert pyops_home.layout(env=env) == pyops_home.OPS


def test_its_releases_and_packages_are_listed(
    ops_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["kernel", "list"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[:2] == ["0.1.99", "amd64"]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # images/, volumes/...
    listed = json.loads(runner.invoke(cli, ["pkg", "list", "-l", "--json"]).stdout)
    assert [(p["name"], p["arch"], p["program"]) for p in listed] == [
        ("hello_1.0", "amd64", "hello_1.0/hello")
    ]


def test_its_packages_load(ops_home: Path, fake_qemu: FakeQemu) -> None:
    fake_qemu.answer(status=7)  # the guest exits 3
    runner = CliRunner()
    result = runner.invoke(cli, ["pkg", "load", "hello_1.0", "-l"])
    assert result.exit_code == 3, result.output
    result = runner.invoke(cli, ["pkg", "load", "eyberg/greeter:2.0"])  # Ops's v fallback
    assert result.exit_code == 3, result.output
    images = sorted(p.name for p in (ops_home / "images").iterdir())
    assert images == ["greeter_v2.0", "hello_1.0"]  # Ops's names: no .img
    image = open_image(ops_home / "images" / "hello_1.0")
    assert image.manifest.program == "/hello"  # the program beside the sysroot, as Ops adds it
    assert image.tree().exists("/hello")
    result = runner.invoke(cli, ["pkg", "load", "eyberg/nope:1"])
    assert result.exit_code == 1 and "there is no package 'eyberg/nope:1'" in result.stderr


@pytest.mark.boot
def test_an_ops_package_in_an_ops_home_boots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nanos_release: Path, cc: str
) -> None:
    import os
    import subprocess
    import sys

    home = tmp_path / ".ops"
    shutil.copytree(nanos_release, home / "0.1.55")
    hello = compile_c(cc, HELLO, tmp_path / "hello")
    ops_package(home / "local_packages/amd64/hello_1.0", hello, "hello_1.0")
    env = {**os.environ, "PYOPS_HOME": str(home)}
    env.pop(pyops_home.LAYOUT_ENV, None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyops",
            "pkg",
            "load",
            "-l",
            "hello_1.0",
            "-a",
            "from",
            "-a",
            "ops",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "arg 1: from" in result.stdout and "arg 2: ops" in result.stdout
    assert (home / "images" / "hello_1.0").is_file()  # where Ops looks for it
    assert not (home / "images" / "hello_1.0.img").exists()
    assert not (home / "releases").exists() and not (home / "runs").exists()


def test_pkg_add_and_image_create(ops_home: Path, tmp_path: Path) -> None:
    """Ops's ``pkg add`` of a folder or a .tar.gz, and ``image create --package``."""
    import tarfile

    source = ops_home / "local_packages/amd64/hello_1.0"
    archive = tmp_path / "hi_2.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="hi_2.0")  # the package in the archive's one folder
    runner = CliRunner()
    result = runner.invoke(cli, ["pkg", "add", str(archive)])
    assert (result.exit_code, result.stdout) == (0, "hi_2.0\n"), result.output
    result = runner.invoke(cli, ["pkg", "add", str(source), "--name", "copied", "-l"])
    assert (result.exit_code, result.stdout) == (0, "copied\n"), result.output
    for name in ("hi_2.0", "copied"):
        added = ops_home / "local_packages/amd64" / name
        assert (added / "package.manifest").is_file() and (added / "hello").is_file()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli, ["pkg", "add", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "holds no package.manifest" in result.stderr
    result = runner.invoke(cli, ["pkg", "add", str(tmp_path)])  # the home is inside it
    assert result.exit_code == 1 and "holds the package store" in result.stderr
    assert sorted(p.name for p in (ops_home / "local_packages/amd64").iterdir()) == [
        "copied",
        "hello_1.0",
        "hi_2.0",
    ]

    result = runner.invoke(cli, ["image", "create", "--package", "hi_2.0", "-l", "-i", "made"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(ops_home / "images" / "made")
    assert open_image(ops_home / "images" / "made").manifest.program == "/hello"


def test_pkg_from_run_makes_an_ops_package_that_loads(
    ops_home: Path, tmp_path: Path, cc: str, fake_qemu: FakeQemu
) -> None:
    hello = compile_c(cc, HELLO, tmp_path / "hi")
    runner = CliRunner()
    result = runner.invoke(cli, ["pkg", "from-run", str(hello), "--version", "0.3", "-a", "7"])
    assert (result.exit_code, result.stdout) == (0, "hi_0.3\n"), result.output
    folder = ops_home / "local_packages/amd64/hi_0.3"
    manifest = json.loads((folder / "package.manifest").read_text())
    assert (manifest["Program"], manifest["Args"]) == ("hi_0.3/hi", ["hi", "7"])
    assert (folder / "hi").is_file()
    libs = [p for p in (folder / "sysroot").rglob("libc.so*")]
    assert libs, sorted(str(p) for p in (folder / "sysroot").rglob("*"))
    fake_qemu.answer(status=15)
    result = runner.invoke(cli, ["pkg", "load", "hi_0.3"])
    assert result.exit_code == 7, result.output

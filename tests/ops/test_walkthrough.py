"""The README's walkthrough, end to end: a Node.js image on a registry, packaged with
``pyops pkg from-docker`` and booted with ``pyops pkg load``, by the CLI and by the library.

The image is made from this machine's own ``node`` and its libraries, laid out like the
official ``node:20`` image (Debian bookworm, merged /usr, node in /usr/local/bin), and
pushed to a real registry on loopback.  The boot needs a Nanos release (see conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import pyops
from pyops.elf.ldd import resolve

from ..conftest import install_test_release
from ..registry_server import Registries, _umoci_rootless, run

HI_JS = "console.log('hi from Nanos!');\n"


@dataclass(frozen=True)
class NodeImage:
    ref: str


@pytest.fixture(scope="module")
def node_image(
    registries: Registries,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> NodeImage:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed on this machine")
    node = os.path.realpath(node)
    work = tmp_path_factory.mktemp("node-image")
    layout, bundle = work / "oci", work / "bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:20")
    run("umoci", "unpack", *_umoci_rootless(), "--image", f"{layout}:20", bundle)
    root = bundle / "rootfs"
    for d in ("usr/bin", "usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/local/bin", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin")):
        os.symlink(target, root / link)
    shutil.copy2(node, root / "usr/local/bin/node")
    for lib in resolve(node).libraries:
        real = Path(lib.host_path)
        shutil.copy2(real, root / "usr/lib/x86_64-linux-gnu" / real.name)
        name = os.path.basename(lib.path)
        if name != real.name:
            os.symlink(real.name, root / "usr/lib/x86_64-linux-gnu" / name)
    interp = resolve(node).interpreter
    assert interp is not None
    shutil.copy2(interp.host_path, root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    os.symlink(
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "usr/lib64/ld-linux-x86-64.so.2"
    )
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n"
    )
    run("umoci", "repack", "--image", f"{layout}:20", bundle)
    run(
        "umoci", "config", "--image", f"{layout}:20",
        "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.env", "NODE_VERSION=20",
        "--config.cmd", "node", "--architecture", "amd64", "--os", "linux",
    )  # fmt: skip
    host = registries.plain.host
    run(
        "skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
        f"oci:{layout}:20", f"docker://{host}/library/node:20",
    )  # fmt: skip
    return NodeImage(f"{host}/library/node:20")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nanos_release: Path) -> Path:
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    return tmp_path / "home"


@pytest.mark.boot
def test_node_walkthrough_on_the_command_line(
    node_image: NodeImage, home: Path, nanos_release: Path, tmp_path: Path
) -> None:
    install_test_release(nanos_release, home)
    env = {**os.environ, "PYOPS_HOME": str(home)}

    def pyops_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pyops", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    made = pyops_cli("pkg", "from-docker", node_image.ref, "-f", "node")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "node_20"
    (tmp_path / "hi.js").write_text(HI_JS)
    loaded = pyops_cli("pkg", "load", "node_20", "-a", "hi.js", "-m", "1G")
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    assert "hi from Nanos!" in loaded.stdout.splitlines()


@pytest.mark.boot
def test_node_walkthrough_through_the_library(
    node_image: NodeImage, home: Path, nanos_release: Path, tmp_path: Path
) -> None:
    release = install_test_release(nanos_release, home)
    package = pyops.from_docker(node_image.ref, "node")
    assert package.name == "node_20"
    (tmp_path / "hi.js").write_text(HI_JS)
    config = pyops.BuildConfig(program=package.program, args=("hi.js",))
    built = pyops.build_package_image(
        package, config, release, tmp_path / "node.img", cwd=str(tmp_path)
    )
    console = tmp_path / "console"
    with open(console, "wb") as out:
        code = pyops.run_vm(
            built.path, pyops.VmConfig(memory="1G"), stdout=out.fileno(), timeout=600
        )
    lines = console.read_text(errors="replace").replace("\r", "").splitlines()
    assert code == 0, lines
    assert "hi from Nanos!" in lines

"""Real server software from real images, as a new user runs it: redis, nginx, Python and
Node.js from Debian bookworm's own packages (tests/debian_images.py: a base layer and an app
layer, pushed to the test registry), and a static Go server built here.

Every package is made with pyops's defaults (``pkg from-docker IMAGE -f PROGRAM``) and run
with only what a Docker user would pass. The tests that boot need a Nanos release (they skip
without one); clients talk to the guests through forwarded ports.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyops.ops.build import HOSTS, PASSWD, RESOLV_CONF
from pyops.ops.contents import read_contents
from pyops.ops.images import ImageFiles

from ..conftest import install_test_release
from ..debian_images import NGINX_MARKER, NODE_MARKER, PYTHON_MARKER
from ..registry_server import free_port


@dataclass(frozen=True)
class Home:
    """A pyops home of this module's own, used through the CLI."""

    path: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYOPS_HOME": os.fspath(self.path)}

    def pyops(
        self, *args: str, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pyops", *args],
            env=self.env(),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def package(self, name: str) -> Path:
        return self.path / "local_packages" / "amd64" / name


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return Home(tmp_path_factory.mktemp("servers") / "home")


@pytest.fixture(scope="module")
def made(home: Home, debian_image: Callable[[str], str]) -> Callable[..., str]:  # noqa: F811
    """``made(image, program, *flags)``: the package made once with ``from-docker``; its
    stderr is kept in ``made.notes[name]``."""
    done: dict[tuple[str, ...], str] = {}

    def make(image: str, program: str, *flags: str) -> str:
        key = (image, program, *flags)
        if key not in done:
            result = home.pyops("pkg", "from-docker", debian_image(image), "-f", program, *flags)
            assert result.returncode == 0, result.stderr
            done[key] = result.stdout.strip()
            notes[done[key]] = result.stderr
        return done[key]

    notes: dict[str, str] = {}
    make.notes = notes  # type: ignore[attr-defined]
    return make


@pytest.fixture
def release(home: Home, nanos_release: Path) -> None:
    install_test_release(nanos_release, home.path)


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.lstat(path).st_size
    return total


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def guest(home: Home, *args: str, cwd: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    """``pyops ARGS`` in the background (a server); stopped at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyops", *args],
        env=home.env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it, even when these tests run in a background job
        # (whose commands a shell starts with SIGINT ignored, which the child would keep).
        preexec_fn=_default_sigint,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # pyops stops qemu first
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def ask(port: int, request: bytes, proc: subprocess.Popen[str], seconds: float = 120) -> bytes:
    """Send ``request`` to the forwarded ``port`` until the guest answers; its answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"pyops exited with {proc.returncode} before answering:\n{out}\n{err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                sock.settimeout(20)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                    if request.startswith(b"PING") and answer.endswith(b"\r\n"):
                        break
                if answer:
                    return answer
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no answer on port {port} within {seconds:g} s")


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    return proc.communicate(timeout=30)


HTTP_GET = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"


# -- what packages hold ---------------------------------------------------------------------


def test_default_packages_keep_what_the_program_needs_and_say_why(
    home: Home, made: Callable[..., str]
) -> None:
    nginx = made("nginx", "nginx")
    contents = read_contents(home.package(nginx) / "contents.json")
    assert contents is not None
    reasons = [part.reason for part in contents.parts]
    assert "dpkg packages nginx, nginx-common" in reasons
    paths = set(contents.paths())
    # Debian's configuration, and the site its configuration names (root /var/www/html).
    assert {"/etc/nginx/nginx.conf", "/etc/nginx/mime.types"} <= paths
    assert "/var/www/html/index.html" in paths
    result = home.pyops("pkg", "contents", nginx)
    assert "dpkg packages nginx, nginx-common: " in result.stdout
    assert "paths named in the configuration of dpkg packages nginx, nginx-common" in result.stdout

    python = made("python", "python3")
    contents = read_contents(home.package(python) / "contents.json")
    assert contents is not None
    kinds = {part.kind for part in contents.parts}
    assert {"program", "workdir", "runtime", "owner"} <= kinds
    paths = set(contents.paths())
    assert "/app/hello.py" in paths and "/usr/lib/python3.11/json/__init__.py" in paths
    assert any(p.startswith("/usr/lib/python3.11/lib-dynload/_ssl.") for p in paths)

    # No package holds documentation, or the resolv.conf of the machine that built the image.
    for name in (nginx, python):
        sysroot = home.package(name) / "sysroot"
        assert not (sysroot / "usr/share/doc").exists()
        assert not (sysroot / "usr/share/man").exists()
        assert not (sysroot / "etc/resolv.conf").exists()


def test_the_wrapper_entrypoint_is_named(made: Callable[..., str]) -> None:
    name = made("redis", "redis-server")
    notes = made.notes[name]  # type: ignore[attr-defined]
    assert "the image's entrypoint docker-entrypoint.sh is a script" in notes
    assert "runs /usr/bin/redis-server directly" in notes


def test_python_package_is_a_fraction_of_the_whole_filesystem(
    home: Home, made: Callable[..., str]
) -> None:
    small = _size(home.package(made("python", "python3")) / "sysroot")
    whole = _size(home.package(made("python", "python3", "--copy", "--name", "python_copy")))
    assert small * 4 <= whole, (small, whole)


# -- booting them ---------------------------------------------------------------------------


@pytest.mark.boot
def test_redis_answers_ping_through_a_port(
    home: Home, made: Callable[..., str], release: None
) -> None:
    name = made("redis", "redis-server")
    port = free_port()
    with guest(home, "pkg", "load", name, "-p", f"{port}:6379") as proc:
        # As pyops says before the boot: protected mode refuses clients through -p.
        assert ask(port, b"PING\r\n", proc).startswith(b"-DENIED")
        _out, err = stop(proc)
    assert "redis runs in protected mode" in err and "-a --protected-mode -a no" in err

    port = free_port()
    with guest(home, "pkg", "load", name, "-p", f"{port}:6379",
               "-a", "--protected-mode", "-a", "no") as proc:  # fmt: skip
        assert ask(port, b"PING\r\n", proc) == b"+PONG\r\n"


@pytest.mark.boot
def test_redis_with_debian_config_file_names_daemonize(
    home: Home, made: Callable[..., str], release: None
) -> None:
    name = made("redis", "redis-server")
    result = home.pyops("pkg", "load", name, "-a", "/etc/redis/redis.conf", timeout=120)
    # redis forks, the fork fails, and it exits 0 at once, printing nothing: pyops says why.
    assert result.returncode == 0
    assert "/etc/redis/redis.conf sets 'daemonize yes'" in result.stderr
    assert "fix: add -a --daemonize -a no" in result.stderr
    assert "redis-server exited with status 0 after" in result.stderr


@pytest.mark.boot
def test_nginx_serves_the_image_page(home: Home, made: Callable[..., str], release: None) -> None:
    name = made("nginx", "nginx")
    port = free_port()
    with guest(home, "pkg", "load", name, "-p", f"{port}:80",
               "-a", "-g", "-a", "daemon off; master_process off;") as proc:  # fmt: skip
        answer = ask(port, HTTP_GET, proc)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert NGINX_MARKER.encode() in answer


@pytest.mark.boot
def test_python_runs_the_image_script_and_a_local_one(
    home: Home, made: Callable[..., str], release: None, tmp_path: Path
) -> None:
    name = made("python", "python3")
    result = home.pyops("pkg", "load", name, timeout=180)
    assert result.returncode == 0, result.stderr
    assert PYTHON_MARKER in result.stdout and "(3, 11)" in result.stdout

    (tmp_path / "check.py").write_text(
        "import hashlib, json, os, socket, ssl\n"
        "print(json.dumps({'sha': hashlib.sha256(b'pyops').hexdigest(), 'cwd': os.getcwd(),\n"
        "    'localhost': socket.gethostbyname('localhost'),\n"
        "    'tls': ssl.create_default_context().protocol.name}))\n"
    )
    result = home.pyops("pkg", "load", name, "-a", "check.py", cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    line = [raw for raw in result.stdout.splitlines() if raw.startswith("{")][-1]
    answer = json.loads(line)
    assert answer["sha"] == hashlib.sha256(b"pyops").hexdigest()
    assert answer["cwd"] == "/app" and answer["localhost"] == "127.0.0.1"
    assert answer["tls"] == "PROTOCOL_TLS_CLIENT"


@pytest.mark.boot
def test_node_prints_and_serves_http(
    home: Home, made: Callable[..., str], release: None, tmp_path: Path
) -> None:
    name = made("node", "node")
    result = home.pyops("pkg", "load", name, timeout=180)
    assert result.returncode == 0, result.stderr
    assert NODE_MARKER in result.stdout and "v18." in result.stdout

    (tmp_path / "server.js").write_text(
        'const http = require("http");\n'
        'require("dns").lookup("localhost", { family: 4 }, (err, address) => {\n'
        "  const text = `node: localhost is ${err ? err.code : address}`;\n"
        "  http.createServer((req, res) => res.end(text)).listen(8080);\n"
        "});\n"
    )
    port = free_port()
    with guest(home, "pkg", "load", name, "-p", f"{port}:8080", "-a", "server.js",
               cwd=tmp_path) as proc:  # fmt: skip
        answer = ask(port, HTTP_GET, proc)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(b"node: localhost is 127.0.0.1")


@pytest.mark.boot
def test_probe_finds_what_nginx_needs_without_the_dpkg_data(
    home: Home, made: Callable[..., str], release: None
) -> None:
    name = made("nginx", "nginx", "--closure-only", "--name", "nginx_bare")
    sysroot = home.package(name) / "sysroot"
    assert not (sysroot / "etc/nginx").exists()
    args = ("-a", "-g", "-a", "daemon off; master_process off;")
    result = home.pyops("pkg", "probe", name, *args, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "(nothing more missing)" in result.stderr
    for path in ("/etc/nginx/nginx.conf", "/etc/nginx/mime.types", "/var/lib/nginx"):
        assert f"+ {path}\n" in result.stderr
        assert os.path.lexists(sysroot / path.lstrip("/"))
    contents = read_contents(home.package(name) / "contents.json")
    assert contents is not None and contents.parts[-1].kind == "probe"

    port = free_port()
    with guest(home, "pkg", "load", name, "-p", f"{port}:80", *args) as proc:
        assert ask(port, HTTP_GET, proc).startswith(b"HTTP/1.1 ")


# -- a static Go server, from the host -------------------------------------------------------

GO_SERVER = """\
package main

import (
	"fmt"
	"net"
	"net/http"
)

func main() {
	addrs, err := net.LookupHost("localhost")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "go: localhost is %v %v", addrs, err)
	})
	fmt.Println("listening")
	http.ListenAndServe(":8080", nil)
}
"""


@pytest.fixture(scope="module")
def go_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail("go is missing (CI installs golang-go)")
        pytest.skip("needs go (apt-get install golang-go)")
    work = tmp_path_factory.mktemp("go")
    (work / "main.go").write_text(GO_SERVER)
    env = {**os.environ, "CGO_ENABLED": "0", "GOCACHE": os.fspath(work / "cache"),
           "GOPATH": os.fspath(work / "gopath"), "GO111MODULE": "off", "GOFLAGS": ""}  # fmt: skip
    subprocess.run([go, "build", "-o", "server", "main.go"], cwd=work, env=env, check=True)
    return work / "server"


@pytest.mark.boot
def test_static_go_server_and_no_host_file_in_its_image(
    home: Home, release: None, go_server: Path
) -> None:
    port = free_port()
    with guest(home, "run", os.fspath(go_server), "-p", f"{port}:8080") as proc:
        answer = ask(port, HTTP_GET, proc)
    assert answer.startswith(b"HTTP/1.0 200 OK")  # Go answers in the request's version
    assert answer.endswith(b"go: localhost is [127.0.0.1 ::1] <nil>")
    # The image holds pyops's own lookup files, not the host's.
    files = ImageFiles(home.path / "images" / "server.img")
    assert files.read("/etc/hosts") == HOSTS
    assert files.read("/etc/resolv.conf") == RESOLV_CONF
    assert files.read("/etc/passwd") == PASSWD
    assert files.read("/etc/nsswitch.conf") is None


@pytest.mark.boot
def test_nginx_with_the_image_command_hangs_and_pyops_says_why(
    home: Home, made: Callable[..., str], release: None
) -> None:
    name = made("nginx", "nginx")  # Args: the image's Cmd, -g 'daemon off;'
    with guest(home, "pkg", "load", name) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "en1: assigned" in line:
                break
        time.sleep(8)  # nginx starts, fails to start a worker, and waits
        proc.send_signal(signal.SIGINT)  # as Ctrl-C
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    # Before the boot, from its command line; after it, from its own log in the image.
    assert "nginx's master process starts its workers with fork" in err
    assert "nginx tried to start another process, and Nanos has no fork" in err
    assert "/var/log/nginx/error.log in the image says:" in err
    assert "ioctl(FIOASYNC) failed" in err


@pytest.mark.boot
def test_perl_finds_its_modules(home: Home, made: Callable[..., str], release: None) -> None:
    # Debian's perl comes with python3 (its dependencies): its @INC folders are kept, with
    # the libraries of its XS modules (POSIX is one).
    name = made("python", "perl", "--name", "perl_5")
    script = (
        'use POSIX qw(floor); use File::Spec; print floor(7.9), File::Spec->catfile("a", "b"), '
        '"\\n"'
    )
    result = home.pyops("pkg", "load", name, "-a", "-e", "-a", script, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "7a/b" in result.stdout.splitlines()

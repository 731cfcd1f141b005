"""Test support: real registries on loopback, a minimal token server, images built with umoci.

One ``docker-registry`` storage directory is served by three processes on free loopback ports:
``plain`` (no auth, used for pushing), ``basic`` (htpasswd) and ``token`` (bearer tokens from
the in-process :class:`TokenServer`, reference doc section 7.7). Images are assembled from
files of the test machine with ``umoci`` and pushed with ``skopeo``. Everything lives in a
temporary directory and is torn down at the end of the session.

Use it through the session fixture :func:`registries` (import it into a test module).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

USER, PASSWORD = "alice", "s3cret"
REFRESH_TOKEN = "refresh-alice"
TOOLS = ("docker-registry", "skopeo", "umoci", "htpasswd", "openssl")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [os.fspath(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


# -- RS256 with the standard library (reference doc section 7.7, step 4) -----------------------


def _der_read(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    return tag, pos, pos + length


def _rsa_key(pem: str) -> tuple[int, int]:
    """(n, d) from a PKCS#8 PEM private key."""
    der = base64.b64decode("".join(line for line in pem.splitlines() if "-----" not in line))
    _, pos, _ = _der_read(der, 0)  # PrivateKeyInfo sequence
    _, _, end = _der_read(der, pos)  # version
    _, _, end = _der_read(der, end)  # algorithm identifier
    tag, start, _ = _der_read(der, end)  # privateKey octet string
    assert tag == 0x04
    _, pos, _ = _der_read(der, start)  # RSAPrivateKey sequence
    values = []
    for _ in range(4):  # version, n, e, d
        _, start, end = _der_read(der, pos)
        values.append(int.from_bytes(der[start:end], "big"))
        pos = end
    return values[1], values[3]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Issues registry tokens: pull for everyone except ``private/*``, push for alice."""

    key_pem: str
    cert_pem: str
    ttl: int = 300
    port: int = 0
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def sign(self, claims: dict[str, Any]) -> str:
        cert_der_b64 = "".join(line for line in self.cert_pem.splitlines() if "-----" not in line)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [cert_der_b64]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        n, d = _rsa_key(self.key_pem)
        size = (n.bit_length() + 7) // 8
        prefix = bytes.fromhex("3031300d060960864801650304020105000420")
        digest = prefix + hashlib.sha256(signing_input.encode()).digest()
        em = b"\x00\x01" + b"\xff" * (size - len(digest) - 3) + b"\x00" + digest
        signature = pow(int.from_bytes(em, "big"), d, n).to_bytes(size, "big")
        return signing_input + "." + _b64url(signature)

    def grant(self, user: str, scope: str) -> dict[str, Any] | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")  # names may contain host:port: parse from the right
        if kind != "repository":
            return None
        allowed = set()
        if user or not name.startswith("private/"):
            allowed.add("pull")
        if user:
            allowed.add("push")
        granted = [a for a in actions.split(",") if a in allowed]
        return {"type": kind, "name": name, "actions": granted}

    def handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        user = ""
        if handler.command == "POST":
            # OAuth2 refresh-token grant (distribution docs/spec/auth/oauth.md).
            length = int(handler.headers.get("Content-Length", "0"))
            form = parse_qs(handler.rfile.read(length).decode())
            self.requests.append(form)
            if form.get("grant_type") != ["refresh_token"]:
                return 400, {"error": "unsupported_grant_type"}
            if form.get("refresh_token") != [REFRESH_TOKEN]:
                return 400, {"error": "invalid_grant"}
            user = USER
            query = {"service": form.get("service", [""]), "scope": form["scope"][0].split()}
        else:
            query = parse_qs(urlsplit(handler.path).query)
            self.requests.append(query)
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if (name, password) != (USER, PASSWORD):
                return 401, {"details": "wrong credentials"}
            user = name
        now = int(time.time())
        access = [g for s in query.get("scope", []) if (g := self.grant(user, s)) is not None]
        claims = {
            "iss": "test-issuer",
            "sub": user,
            "aud": query.get("service", [""])[0],
            "exp": now + self.ttl,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = self.sign(claims)
        issued = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
        body = {"token": token, "access_token": token, "expires_in": self.ttl, "issued_at": issued}
        return 200, body

    def start(self) -> None:
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                status, body = server_self.handle(self)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# -- registry processes ----------------------------------------------------------------------


@dataclass
class Registry:
    """One ``docker-registry`` process on loopback."""

    name: str
    port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", os.fspath(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"registry {self.name} exited:\n{self.log.read_text()}")
            try:
                if requests.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"registry {self.name} did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _config(storage: Path, port: int, auth: str) -> str:
    return (
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: pyops-test-secret\n{auth}"
    )


# -- images --------------------------------------------------------------------------------


@dataclass
class Images:
    """What the session pushed, with the facts tests compare against."""

    demo: str = "test/demo:1"
    """Four layers: base, per-file whiteouts and hard links, an opaque dir, a new file."""
    demo_docker: str = "test/demo-v2s2:1"
    """The same image with Docker schema 2 media types."""
    multi: str = "test/multi:latest"
    """An OCI index listing arm64 first, then amd64."""
    private: str = "private/secret:1"
    amd64_marker: bytes = b""
    arm64_marker: bytes = b""
    host_ls: bytes = b""
    hello_multi: str = "test/hello-multi:1"
    """An OCI index over two images of fixtures/arch_hello.c, amd64 first, then arm64: each
    holds the program dynamically linked against its architecture's glibc, with that glibc
    at Debian's paths; Entrypoint :attr:`hello_multi_program`. Not pushed when a compiler or
    library is missing (:attr:`hello_multi_missing` says which)."""
    hello_multi_missing: str = ""
    hello_multi_program: str = "/usr/bin/arch_hello"
    hello_multi_greeting: str = "hello from the image"
    """The image's ``ARCH_GREETING``."""
    hello_multi_machines: dict[str, str] = field(
        default_factory=lambda: {"amd64": "x86_64", "arm64": "aarch64"}
    )
    """What the program prints as its machine, by the image's architecture."""


def _umoci_rootless() -> list[str]:
    return [] if os.geteuid() == 0 else ["--rootless"]


def build_images(work: Path, push_host: str) -> Images:
    """Build images with umoci from host files and push them with skopeo to ``push_host``."""
    images = Images()
    layout = work / "oci"
    bundle = work / "bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:demo")

    def unpack() -> Path:
        if bundle.exists():
            shutil.rmtree(bundle)
        run("umoci", "unpack", *_umoci_rootless(), "--image", f"{layout}:demo", bundle)
        return bundle / "rootfs"

    def repack() -> None:
        run("umoci", "repack", "--image", f"{layout}:demo", bundle)

    ls = Path(shutil.which("ls") or "/bin/ls").resolve()
    images.host_ls = ls.read_bytes()
    # Layer 1: a base from host files.
    root = unpack()
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2(ls, root / "usr/bin/ls")
    (root / "etc").mkdir()
    shutil.copy2("/etc/os-release", root / "etc/os-release")
    for name in ("old-a", "old-b"):
        (root / "opt/app").mkdir(parents=True, exist_ok=True)
        (root / "opt/app" / name).write_text(name)
    (root / "data/tree").mkdir(parents=True)
    (root / "data/tree/x").write_text("x")
    (root / "data/gone.txt").write_text("gone")
    (root / "data/keep.txt").write_text("keep")
    repack()
    # Layer 2: deletions (per-file whiteouts), hard links, an absolute symlink.
    root = unpack()
    (root / "data/gone.txt").unlink()
    shutil.rmtree(root / "data/tree")
    os.link(root / "usr/bin/ls", root / "usr/bin/dir")
    os.link(root / "data/keep.txt", root / "data/keep-link")
    (root / "lib64").mkdir()
    os.symlink("/usr/bin/ls", root / "lib64/abs-link")
    repack()
    # Layer 3: an opaque directory (umoci 0.4.7 writes this tar without end blocks).
    new_app = work / "new-app"
    new_app.mkdir()
    (new_app / "new").write_text("new")
    run("umoci", "insert", "--image", f"{layout}:demo", "--opaque", new_app, "/opt/app")
    # Layer 4: the platform marker.
    marker = work / "marker"
    marker.write_text("amd64")
    run("umoci", "insert", "--image", f"{layout}:demo", marker, "/etc/platform")
    run(
        "umoci", "config", "--image", f"{layout}:demo",
        "--config.entrypoint", "/usr/bin/ls", "--config.cmd", "-la", "--config.cmd", "/opt",
        "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.env", "GREETING=hello", "--config.workingdir", "/opt",
        "--architecture", "amd64", "--os", "linux",
    )  # fmt: skip
    images.amd64_marker = b"amd64"

    # An arm64 image (content is only a marker: the test checks which one is picked).
    run("umoci", "new", "--image", f"{layout}:arm")
    run("umoci", "config", "--image", f"{layout}:arm", "--architecture", "arm64", "--os", "linux")
    marker.write_text("arm64")
    run("umoci", "insert", "--image", f"{layout}:arm", marker, "/etc/platform")
    images.arm64_marker = b"arm64"

    def push(tag: str, dest: str, *extra: str) -> None:
        run(
            "skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", *extra,
            f"oci:{layout}:{tag}", f"docker://{push_host}/{dest}",
        )  # fmt: skip

    push("demo", images.demo)
    push("demo", images.demo_docker, "--format", "v2s2")
    push("demo", images.private)
    push("demo", "test/multi:amd64")
    push("arm", "test/multi:arm64")
    _push_index(push_host, "test/multi", "latest", ["arm64", "amd64"])
    images.hello_multi_missing = _build_hello_multi(work, layout, images)
    if images.hello_multi_missing:
        images.hello_multi = ""
    else:
        repository, _, tag = images.hello_multi.partition(":")
        for arch in images.hello_multi_machines:
            push(f"hello-{arch}", f"{repository}:{arch}")
        _push_index(push_host, repository, tag, list(images.hello_multi_machines))
    return images


ARM64_GLIBC = Path("/usr/aarch64-linux-gnu/lib")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _ldd_paths(program: Path) -> list[str]:
    """The absolute paths the host's ``ldd`` lists for ``program`` (its loader included)."""
    out = run("ldd", program)
    paths = []
    for line in out.splitlines():
        match = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+) \(", line)
        if match:
            paths.append(match.group(1))
    return paths


def _build_hello_multi(work: Path, layout: Path, images: Images) -> str:
    """Tags ``hello-amd64`` and ``hello-arm64`` in ``layout``: fixtures/arch_hello.c built
    with gcc against the host's glibc, and with aarch64-linux-gnu-gcc against Debian's arm64
    glibc, each with its libraries. Returns why they could not be built, or ""."""
    gcc, cross = shutil.which("gcc"), shutil.which("aarch64-linux-gnu-gcc")
    if gcc is None or cross is None:
        return "needs gcc and aarch64-linux-gnu-gcc (Debian: gcc, gcc-aarch64-linux-gnu)"
    arm_libs = {
        "/lib/ld-linux-aarch64.so.1": ARM64_GLIBC / "ld-linux-aarch64.so.1",
        "/lib/aarch64-linux-gnu/libc.so.6": ARM64_GLIBC / "libc.so.6",
    }
    if not all(path.is_file() for path in arm_libs.values()):
        return f"needs the arm64 glibc in {ARM64_GLIBC} (Debian: libc6-arm64-cross)"
    build = work / "hello-multi"
    build.mkdir()
    source = FIXTURES / "arch_hello.c"
    programs = {"amd64": build / "arch_hello-amd64", "arm64": build / "arch_hello-arm64"}
    try:
        run(gcc, "-O1", "-o", programs["amd64"], source)
        run(cross, "-O1", "-o", programs["arm64"], source, f"-L{ARM64_GLIBC}")
        host_libs = _ldd_paths(programs["amd64"])
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        return f"cannot build fixtures/arch_hello.c for both architectures: {reason}"
    if not any("ld-linux-x86-64" in path for path in host_libs):
        return f"needs an x86-64 glibc host (ldd lists {host_libs})"
    libraries = {
        "amd64": {path: Path(path).resolve() for path in host_libs},
        "arm64": arm_libs,
    }
    bundle = work / "bundle-hello"
    for arch, program in programs.items():
        image = f"{layout}:hello-{arch}"
        run("umoci", "new", "--image", image)
        if bundle.exists():
            shutil.rmtree(bundle)
        run("umoci", "unpack", *_umoci_rootless(), "--image", image, bundle)
        root = bundle / "rootfs"
        for path, host in {images.hello_multi_program: program, **libraries[arch]}.items():
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host, root / path.lstrip("/"))
        (root / "srv").mkdir()
        run("umoci", "repack", "--image", image, bundle)
        run(
            "umoci", "config", "--image", image,
            "--config.entrypoint", images.hello_multi_program, "--config.cmd", "from-the-image",
            "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--config.env", f"ARCH_GREETING={images.hello_multi_greeting}",
            "--config.workingdir", "/srv", "--architecture", arch, "--os", "linux",
        )  # fmt: skip
    return ""


def _push_index(host: str, repository: str, tag: str, tags: list[str]) -> None:
    """PUT an OCI index over the raw API (reference doc section 7.5)."""
    entries = []
    accept = "application/vnd.oci.image.manifest.v1+json"
    for child in tags:
        response = requests.get(
            f"http://{host}/v2/{repository}/manifests/{child}", headers={"Accept": accept}
        )
        response.raise_for_status()
        platform = {"architecture": child, "os": "linux"}
        if child == "arm64":
            platform["variant"] = "v8"
        entries.append(
            {
                "mediaType": accept,
                "digest": "sha256:" + hashlib.sha256(response.content).hexdigest(),
                "size": len(response.content),
                "platform": platform,
            }
        )
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }
    response = requests.put(
        f"http://{host}/v2/{repository}/manifests/{tag}",
        data=json.dumps(index).encode(),
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    response.raise_for_status()


@dataclass
class Registries:
    """The running registries and what they hold."""

    plain: Registry
    basic: Registry
    token: Registry
    token_server: TokenServer
    images: Images
    work: Path


@pytest.fixture(scope="session")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    """Start the three registries and the token server, push the test images, tear down."""
    missing = missing_tools()
    if missing:
        packages = "docker-registry skopeo umoci apache2-utils openssl"
        pytest.skip(f"needs {', '.join(missing)} (apt-get install {packages})")
    work = tmp_path_factory.mktemp("registry")
    storage = work / "storage"
    storage.mkdir()
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", work / "token.key",
        "-out", work / "token.crt", "-days", "2", "-subj", "/CN=test-token-issuer")  # fmt: skip
    (work / "htpasswd").write_text(run("htpasswd", "-Bbn", USER, PASSWORD))
    token_server = TokenServer((work / "token.key").read_text(), (work / "token.crt").read_text())
    token_server.start()
    started: list[Registry] = []
    try:
        made: dict[str, Registry] = {}
        for name, auth in {
            "plain": "",
            "basic": f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {work / 'htpasswd'}\n",
            "token": (
                f"auth:\n  token:\n    realm: http://127.0.0.1:{token_server.port}/token\n"
                "    service: test-registry\n    issuer: test-issuer\n"
                f"    rootcertbundle: {work / 'token.crt'}\n"
            ),
        }.items():
            port = free_port()
            config = work / f"{name}.yml"
            config.write_text(_config(storage, port, auth))
            made[name] = Registry(name, port, config, work / f"{name}.log")
            made[name].start()
            started.append(made[name])
        images = build_images(work, made["plain"].host)
        yield Registries(made["plain"], made["basic"], made["token"], token_server, images, work)
    finally:
        for registry in started:
            registry.stop()
        token_server.stop()

"""A tiny in-process registry for faults a real registry will not produce.

It serves manifests and blobs from dictionaries over plain HTTP on loopback, records every
request, and can be told to cut a blob download half-way, ignore ``Range``, serve bytes that do
not match the digest, redirect blobs to another host name, or demand Basic auth; and, for the
hostile-server tests, to trickle a blob or a manifest, answer 429/5xx a few times, or have the
redirect target ask for credentials with a Bearer realm of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pyops.oci import schema as oci


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeRegistry:
    """State of the fake server; tests change the knobs between requests."""

    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    cut_blobs_once: set[str] = field(default_factory=set)
    """Digests whose next download stops after half the bytes (connection closed)."""
    ignore_range: bool = False
    corrupt_blobs: dict[str, bytes] = field(default_factory=dict)
    """Digest -> bytes served instead of the real content."""
    redirect_blobs_to: str | None = None
    """``host:port`` that blob requests are redirected to (e.g. ``localhost:<port>``)."""
    basic_auth: tuple[str, str] | None = None
    port: int = 0
    redirect_target_challenge: bool = False
    """The redirect target (``localhost``) answers 401 with a Bearer realm on itself."""
    token_requests: list[Request] = field(default_factory=list)
    """Requests to ``/token`` (the realm of the redirect target's challenge)."""
    fail_next: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """Answers (status, headers) given to the next requests other than ``/v2/``, in order."""
    slow: dict[str, float] = field(default_factory=dict)
    """Digest (blob) or ``repo:reference`` (manifest) -> seconds between chunks."""
    slow_chunk: int = 1024
    on_chunk: Callable[[str, int], None] | None = None
    """Called after each chunk of a slow body is sent, with the key and bytes sent so far."""
    sent: dict[str, int] = field(default_factory=dict)
    """Bytes of each slow body sent before it ended."""
    aborted: set[str] = field(default_factory=set)
    """Slow bodies whose connection the client closed before the end."""
    cut_manifests_once: set[str] = field(default_factory=set)
    """``repo:reference`` keys whose next answer stops half-way (connection closed)."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set when the server shuts down: slow bodies stop."""

    def add_image(
        self, repository: str, tag: str, layers: list[bytes], config: dict[str, Any]
    ) -> str:
        """Store a single-platform OCI image; return its manifest digest."""
        config_bytes = json.dumps(config).encode()
        self.blobs[sha256(config_bytes)] = config_bytes
        for layer in layers:
            self.blobs[sha256(layer)] = layer
        manifest = {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {
                "mediaType": oci.OCI_CONFIG,
                "digest": sha256(config_bytes),
                "size": len(config_bytes),
            },
            "layers": [
                {"mediaType": oci.LAYER_GZIP, "digest": sha256(x), "size": len(x)} for x in layers
            ],
        }
        data = json.dumps(manifest).encode()
        digest = sha256(data)
        self.manifests[f"{repository}:{tag}"] = (data, oci.OCI_MANIFEST)
        self.manifests[f"{repository}:{digest}"] = (data, oci.OCI_MANIFEST)
        return digest

    def blob_requests(self) -> list[Request]:
        return [r for r in self.requests if "/blobs/" in r.path]


def _handler(state: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _send(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _trickle(self, key: str, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = 0
            try:
                while sent < len(body) and not state.stop.is_set():
                    piece = body[sent : sent + state.slow_chunk]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    sent += len(piece)
                    state.sent[key] = sent
                    if state.on_chunk is not None:
                        state.on_chunk(key, sent)
                    if sent < len(body):
                        time.sleep(state.slow[key])
            except OSError:
                state.aborted.add(key)
            self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802
            request = Request("GET", self.path, dict(self.headers.items()))
            state.requests.append(request)
            host = self.headers.get("Host", "")
            if self.path.startswith("/token"):
                state.token_requests.append(request)
                self._send(200, b'{"token": "stolen"}')
                return
            if state.fail_next and self.path != "/v2/":
                status, headers = state.fail_next.pop(0)
                self._send(status, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}', headers)
                return
            if state.basic_auth and not host.startswith("localhost"):
                expected = "Basic " + base64.b64encode(":".join(state.basic_auth).encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self._send(401, b"{}", {"WWW-Authenticate": 'Basic realm="fake"'})
                    return
            parts = self.path.split("?")[0].split("/")
            if self.path == "/v2/":
                self._send(200, b"{}")
            elif "manifests" in parts:
                i = parts.index("manifests")
                key = "/".join(parts[2:i]) + ":" + parts[i + 1]
                if key not in state.manifests:
                    self._send(
                        404,
                        b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}',
                    )
                    return
                data, media_type = state.manifests[key]
                headers = {"Content-Type": media_type, "Docker-Content-Digest": sha256(data)}
                if key in state.cut_manifests_once:
                    state.cut_manifests_once.discard(key)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif key in state.slow:
                    self._trickle(key, 200, data, headers)
                else:
                    self._send(200, data, headers)
            elif "blobs" in parts:
                self._blob(parts[-1], host)
            else:
                self._send(404)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.do_GET()

        def _blob(self, digest: str, host: str) -> None:
            if state.redirect_blobs_to and not host.startswith("localhost"):
                target = f"http://{state.redirect_blobs_to}{self.path}"
                self._send(307, b"", {"Location": target})
                return
            if state.redirect_target_challenge and host.startswith("localhost"):
                realm = f"http://{host}/token"
                challenge = f'Bearer realm="{realm}",service="cdn",scope="repository:x:pull"'
                self._send(401, b"{}", {"WWW-Authenticate": challenge})
                return
            if digest not in state.blobs:
                self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                return
            data = state.corrupt_blobs.get(digest, state.blobs[digest])
            start = 0
            header = self.headers.get("Range")
            if header and not state.ignore_range:
                start = int(header.removeprefix("bytes=").split("-")[0])
            body = data[start:]
            if digest in state.cut_blobs_once:
                state.cut_blobs_once.discard(digest)
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if digest in state.slow:
                self._trickle(digest, 200, body, headers)
                return
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._send(206, body, headers)
            else:
                self._send(200, body, headers)

    return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-answer is what the fault tests make happen: say
        # nothing (socketserver would print a traceback into a later test's output).
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextmanager
def serve(state: FakeRegistry | None = None) -> Iterator[FakeRegistry]:
    """Run the fake registry on a free loopback port for the duration of the block."""
    state = state or FakeRegistry()
    server = _Server(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

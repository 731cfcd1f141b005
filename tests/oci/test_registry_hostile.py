"""A registry, a redirect target or a token server that is hostile: issue 18's attacks.

Each test plays one attack with the in-process fake registry (a real registry does not
misbehave on purpose), with the limits lowered so that each fault trips at once. None of them
times anything: they assert what the server saw, or how far a download got.
"""

from __future__ import annotations

import _thread
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyops import atomic
from pyops.errors import AuthError, LimitExceeded, NetworkError, RegistryError
from pyops.oci import schema as oci
from pyops.oci.auth import Credentials
from pyops.oci.net import HttpClient
from pyops.oci.pull import pull
from pyops.oci.registry import Challenge, _error_detail, parse_token_answer
from pyops.oci.store import Store

from ..fake_registry import FakeRegistry, serve, sha256

REPO = "test/hostile"
LAYER = os.urandom(64 * 1024)
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "config": {}}).encode()


@pytest.fixture()
def fake() -> Iterator[FakeRegistry]:
    with serve() as state:
        yield state


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    return Store.default()


def _manifest(config: dict[str, Any], layers: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": config, "layers": layers}
    ).encode()


def _image(fake: FakeRegistry, layer: bytes = LAYER) -> str:
    fake.add_image(REPO, "1", [layer], {"architecture": "amd64", "os": "linux", "config": {}})
    return f"127.0.0.1:{fake.port}/{REPO}:1"


def _put_manifest(fake: FakeRegistry, data: bytes, media_type: str, tag: str | None = None) -> str:
    digest = sha256(data)
    fake.manifests[f"{REPO}:{digest}"] = (data, media_type)
    if tag is not None:
        fake.manifests[f"{REPO}:{tag}"] = (data, media_type)
    return digest


def _wait_for(condition: Any) -> None:
    """Wait (bounded, not timed) for the server's side of an exchange to finish."""
    for _ in range(400):
        if condition():
            return
        time.sleep(0.025)
    raise AssertionError("the server never saw the end of the exchange")


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if atomic.is_temp(p.name) or p.name.endswith(".new")]


# -- 3: credentials ------------------------------------------------------------------------


def test_credentials_never_go_to_a_redirect_targets_realm(fake: FakeRegistry, store: Store) -> None:
    fake.basic_auth = ("user", "secret")
    fake.redirect_blobs_to = f"localhost:{fake.port}"
    fake.redirect_target_challenge = True
    ref = _image(fake)
    with pytest.raises(AuthError, match="sends credentials only to the registry"):
        pull(ref, store=store, credentials=Credentials("user", "secret"))
    assert fake.token_requests == []
    for request in fake.requests:
        if request.headers.get("Host", "").startswith("localhost"):
            assert "Authorization" not in request.headers
    assert any(r.headers.get("Host", "").startswith("localhost") for r in fake.requests)


def test_a_form_is_not_redirected_to_another_origin(fake: FakeRegistry) -> None:
    # A token server's 307 would resend the refresh token to wherever it points.
    fake.redirect_blobs_to = f"localhost:{fake.port}"
    with pytest.raises(NetworkError, match="redirected a form"):
        HttpClient().request(
            "POST", f"http://127.0.0.1:{fake.port}/v2/x/blobs/y", data={"refresh_token": "s"}
        )
    assert not any(r.headers.get("Host", "").startswith("localhost") for r in fake.requests)


# -- 5: fan-out and deadlines ---------------------------------------------------------------


def test_index_fan_out_is_bounded(
    fake: FakeRegistry, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_MANIFESTS", "20")
    document = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []})
    data = document.encode()
    for level in range(3):  # 40 x 40 x 40 indexes without a platform, all to be searched
        digest = _put_manifest(fake, data, oci.OCI_INDEX)
        entry = {"mediaType": oci.OCI_INDEX, "digest": digest, "size": len(data)}
        data = json.dumps(
            {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry] * 40}
        ).encode()
        assert level < 3
    _put_manifest(fake, data, oci.OCI_INDEX, tag="1")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_MANIFESTS"):
        pull(f"127.0.0.1:{fake.port}/{REPO}:1", store=store)
    assert len([r for r in fake.requests if "/manifests/" in r.path]) <= 20


def test_slow_server_hits_the_deadline(
    fake: FakeRegistry, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_REQUEST_SECONDS", "2")
    monkeypatch.setenv("PYOPS_LIMIT_MIN_RATE", "1000000")
    ref = _image(fake)
    fake.slow[sha256(LAYER)] = 0.1  # 1 KiB every 100 ms: 64 KiB would take over 6 s
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_REQUEST_SECONDS") as caught:
        pull(ref, store=store)
    assert "PYOPS_LIMIT_MIN_RATE" in str(caught.value)
    _wait_for(lambda: sha256(LAYER) in fake.aborted)
    assert fake.sent[sha256(LAYER)] < len(LAYER)
    assert not store.has_blob(sha256(LAYER))
    assert _temporaries(store.root) == []


def test_slow_manifest_hits_the_deadline(
    fake: FakeRegistry, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_REQUEST_SECONDS", "2")
    ref = _image(fake)
    fake.slow[f"{REPO}:1"] = 0.1  # 4 bytes every 100 ms: the manifest would take over 8 s
    fake.slow_chunk = 4
    with pytest.raises(LimitExceeded, match="too slow"):
        pull(ref, store=store)
    _wait_for(lambda: f"{REPO}:1" in fake.aborted)


# -- 6: sizes before downloads --------------------------------------------------------------


def test_oversized_config_is_refused_before_download(fake: FakeRegistry, store: Store) -> None:
    config = {"mediaType": oci.OCI_CONFIG, "digest": sha256(b"big"), "size": 1_500_000_000}
    layer = {"mediaType": oci.LAYER_GZIP, "digest": sha256(LAYER), "size": len(LAYER)}
    _put_manifest(fake, _manifest(config, [layer]), oci.OCI_MANIFEST, tag="1")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_JSON_BYTES"):
        pull(f"127.0.0.1:{fake.port}/{REPO}:1", store=store)
    assert fake.blob_requests() == []


def test_oversized_manifest_is_refused_before_download(
    fake: FakeRegistry, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = {
        "mediaType": oci.OCI_MANIFEST,
        "digest": sha256(b"huge"),
        "size": 1_500_000_000,
        "platform": {"os": "linux", "architecture": "amd64"},
    }
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry]})
    _put_manifest(fake, index.encode(), oci.OCI_INDEX, tag="1")
    with pytest.raises(LimitExceeded, match="declared size"):
        pull(f"127.0.0.1:{fake.port}/{REPO}:1", store=store)
    assert not any(sha256(b"huge") in r.path for r in fake.requests)
    # A manifest whose Content-Length is over the limit is refused without reading it.
    monkeypatch.setenv("PYOPS_LIMIT_JSON_BYTES", "100")
    ref = _image(fake)
    with pytest.raises(LimitExceeded, match="Content-Length"):
        pull(ref, store=store)


# -- 8: deep JSON -------------------------------------------------------------------------


def test_deep_json_is_refused(fake: FakeRegistry, store: Store) -> None:
    deep = b'{"schemaVersion": 2, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    _put_manifest(fake, deep, oci.OCI_MANIFEST, tag="1")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_JSON_DEPTH"):
        pull(f"127.0.0.1:{fake.port}/{REPO}:1", store=store)
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_JSON_DEPTH"):
        parse_token_answer(b'{"token": "t", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    assert _error_detail(b'{"errors": ' + b"[" * 50_000 + b"]" * 50_000 + b"}") == ""


def test_token_answer_types_are_checked() -> None:
    assert parse_token_answer(b'{"token": "abc", "expires_in": 300}') == ("abc", 300.0)
    assert parse_token_answer(b'{"access_token": "abc", "expires_in": 1e999}') == ("abc", 60.0)
    assert parse_token_answer(b'{"token": "abc", "expires_in": true}') == ("abc", 60.0)
    for body in (b"[]", b'{"token": 5}', b'{"token": ""}', b'{"token": "a\\nb"}', b"\xff"):
        with pytest.raises(RegistryError):
            parse_token_answer(body)
    assert _error_detail(b'{"errors": [1, {"code": 5, "message": "m"}]}') == " (m)"


# -- 12: retries ----------------------------------------------------------------------------


def test_5xx_and_429_are_retried_with_retry_after(fake: FakeRegistry, store: Store) -> None:
    ref = _image(fake)
    fake.fail_next = [(503, {}), (429, {"Retry-After": "2"}), (502, {})]
    waits: list[float] = []
    pulled = pull(ref, store=store, http=HttpClient(sleep=waits.append))
    assert waits == [0.25, 2.0, 1.0]
    assert pulled.layers[0].read_bytes() == LAYER
    # A server asking for longer than RETRY_AFTER_MAX gets its answer as an error at once.
    fake.fail_next = [(429, {"Retry-After": "3600"})]
    waits.clear()
    with pytest.raises(RegistryError, match="wait 3,600 seconds"):
        pull(ref, store=Store(store.root / "other"), http=HttpClient(sleep=waits.append))
    assert waits == []


def test_cut_manifest_is_fetched_again(fake: FakeRegistry, store: Store) -> None:
    ref = _image(fake)
    fake.cut_manifests_once.add(f"{REPO}:1")
    assert pull(ref, store=store).layers[0].read_bytes() == LAYER
    assert len([r for r in fake.requests if r.path.endswith("/manifests/1")]) == 2


def test_connection_failures_are_retried() -> None:
    with serve() as gone:
        port = gone.port
    waits: list[float] = []
    with pytest.raises(NetworkError, match="cannot reach"):
        HttpClient(sleep=waits.append).request("GET", f"http://127.0.0.1:{port}/v2/")
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0]
    # Not the non-idempotent ones.
    waits.clear()
    with pytest.raises(NetworkError):
        HttpClient(sleep=waits.append).request("POST", f"http://127.0.0.1:{port}/token")
    assert waits == []


# -- 11: Ctrl-C ---------------------------------------------------------------------------


def test_ctrl_c_cancels_a_pull_promptly(fake: FakeRegistry, store: Store) -> None:
    big = os.urandom(256 * 1024)
    ref = _image(fake, big)
    key = sha256(big)
    fake.slow[key] = 0.02  # 1 KiB every 20 ms: over 5 s for the layer
    interrupted = threading.Event()

    def interrupt(name: str, sent: int) -> None:
        if name == key and sent >= 8 * 1024 and not interrupted.is_set():
            interrupted.set()
            _thread.interrupt_main()

    fake.on_chunk = interrupt
    # interrupt_main() does nothing while SIGINT is ignored, as it is when the tests run in
    # a shell's background job: Python's own handler, as in a terminal, for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            pull(ref, store=store)
    finally:
        signal.signal(signal.SIGINT, previous)
    # The worker stopped and closed the connection long before the layer's end.
    _wait_for(lambda: key in fake.aborted)
    assert fake.sent[key] < len(big) // 2
    assert [t for t in threading.enumerate() if t.name.startswith("pyops-layer")] == []
    # Nothing half-written in the cache: no blob, no temporary; the partial download is a
    # prefix of the layer, the resume point of the next pull.
    assert not store.has_blob(key)
    assert _temporaries(store.root) == []
    for partial in (store.root / "blobs" / "tmp").glob("*.partial"):
        assert big.startswith(partial.read_bytes())
    fake.slow.clear()
    assert pull(ref, store=store).layers[0].read_bytes() == big


# -- fuzz-style unit checks of the challenge parser ------------------------------------------


def test_challenge_parser_takes_hostile_headers() -> None:
    assert Challenge.parse('Bearer realm="a\\"b",x=').params == {"realm": 'a"b', "x": ""}
    assert Challenge.parse("Bearer " + "a=" * 10_000).scheme == "bearer"
    assert Challenge.parse("").scheme == ""


def test_a_name_that_does_not_resolve_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from pyops.errors import NetworkError
    from pyops.oci.net import HttpClient

    calls: list[str] = []

    def no_such_name(host: object, *args: object, **kwargs: object) -> object:
        calls.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(NetworkError, match="cannot reach") as caught:
        HttpClient().request("GET", "https://registry.example.invalid/v2/")
    assert caught.value.hint is not None and "host name" in caught.value.hint
    assert calls == ["registry.example.invalid"]  # asked once, not five times

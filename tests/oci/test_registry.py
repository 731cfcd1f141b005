"""Pulling from registries: a real docker-registry on loopback, and a fake one for faults."""

from __future__ import annotations

import base64
import gzip
import json
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.errors import (
    AuthError,
    DigestMismatch,
    LayerError,
    ManifestNotFound,
    PlatformNotFound,
    UnsafeLayerPath,
)
from pyops.oci import schema as oci
from pyops.oci.auth import Credentials, load_docker_credentials
from pyops.oci.layers import resolve_in_root, split_image_path, unpack_layers
from pyops.oci.net import HttpClient, HttpResponse
from pyops.oci.pull import PulledImage, pull
from pyops.oci.registry import Challenge, RegistryClient
from pyops.oci.store import ArrivingBlob, Store

from ..fake_registry import FakeRegistry, serve, sha256
from ..layer_fixtures import F, tar_bytes
from ..registry_server import PASSWORD, REFRESH_TOKEN, USER, Registries


class CountingHttp(HttpClient):
    """An HttpClient that records the URLs it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def request(self, method: str, url: str, **kwargs: object) -> HttpResponse:
        self.urls.append(url)
        return super().request(method, url, **kwargs)  # type: ignore[arg-type]

    def blob_urls(self) -> list[str]:
        return [u for u in self.urls if "/blobs/" in u]


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    return Store.default()


def _cached_files(store: Store) -> list[str]:
    return sorted(p.name for p in store.root.rglob("*") if p.is_file())


# -- real registry ----------------------------------------------------------------------------


def _check_demo_tree(pulled: PulledImage, root: Path, host_ls: bytes) -> None:
    unpack_layers(pulled.layers, root, diff_ids=pulled.config.diff_ids)
    assert (root / "usr/bin/ls").read_bytes() == host_ls
    assert (root / "etc/platform").read_bytes() == b"amd64"
    # per-file whiteouts from umoci repack
    assert not (root / "data/gone.txt").exists()
    assert not (root / "data/tree").exists()
    # hard links, including to a file from the layer below
    assert (root / "data/keep-link").stat().st_ino == (root / "data/keep.txt").stat().st_ino
    assert (root / "usr/bin/dir").stat().st_ino == (root / "usr/bin/ls").stat().st_ino
    # the opaque directory kept only the new content
    assert sorted(os.listdir(root / "opt/app")) == ["new"]
    # an absolute symlink, resolved inside the image root
    assert os.readlink(root / "lib64/abs-link") == "/usr/bin/ls"
    assert resolve_in_root(root, split_image_path("/lib64/abs-link")) == ("usr", "bin", "ls")
    assert stat.S_ISREG((root / "usr/bin/ls").lstat().st_mode)


def test_anonymous_pull_through_token_auth(
    registries: Registries,  # noqa: F811
    store: Store,
    tmp_path: Path,
) -> None:
    http = CountingHttp()
    before = len(registries.token_server.requests)
    pulled = pull(f"{registries.token.host}/{registries.images.demo}", store=store, http=http)
    assert pulled.config.entrypoint == ("/usr/bin/ls",)
    assert pulled.config.cmd == ("-la", "/opt")
    assert pulled.config.working_dir == "/opt"
    assert "GREETING=hello" in pulled.config.env
    assert pulled.manifest.media_type == oci.OCI_MANIFEST
    assert len(pulled.layers) == len(pulled.config.diff_ids) == 4
    assert all(p.is_relative_to(store.root) for p in pulled.layers)
    # One token served every manifest and blob request of the pull.
    assert len(registries.token_server.requests) - before == 1
    assert registries.token_server.requests[-1]["scope"] == ["repository:test/demo:pull"]
    _check_demo_tree(pulled, tmp_path / "root", registries.images.host_ls)


def test_second_pull_downloads_no_blob(
    registries: Registries,  # noqa: F811
    store: Store,
) -> None:
    ref = f"{registries.plain.host}/{registries.images.demo}"
    first_http = CountingHttp()
    first = pull(ref, store=store, http=first_http)
    assert len(first_http.blob_urls()) == 5  # config and four layers
    http = CountingHttp()
    second = pull(ref, store=store, http=http)
    assert http.blob_urls() == []
    assert second.layers == first.layers and second.digest == first.digest
    # Pinned by digest, with everything cached, not even the manifest is fetched.
    pinned_http = CountingHttp()
    pinned = pull(first.ref.with_digest(first.digest), store=store, http=pinned_http)
    assert pinned_http.urls == [] and pinned.layers == first.layers


def test_docker_schema2_media_types(
    registries: Registries,  # noqa: F811
    store: Store,
    tmp_path: Path,
) -> None:
    pulled = pull(f"{registries.plain.host}/{registries.images.demo_docker}", store=store)
    assert pulled.manifest.media_type == oci.DOCKER_MANIFEST
    assert {layer.media_type for layer in pulled.manifest.layers} == {oci.DOCKER_LAYER_GZIP}
    _check_demo_tree(pulled, tmp_path / "root", registries.images.host_ls)


def test_private_repository_needs_credentials(
    registries: Registries,  # noqa: F811
    store: Store,
) -> None:
    ref = f"{registries.token.host}/{registries.images.private}"
    with pytest.raises(AuthError, match="private/secret") as info:
        pull(ref, store=store)
    assert "private or does not exist" in str(info.value)
    assert info.value.hint
    assert not list((store.root / "blobs").rglob("*")) if (store.root / "blobs").exists() else True
    pulled = pull(ref, store=store, credentials=Credentials(USER, PASSWORD))
    assert len(pulled.layers) == 4
    with pytest.raises(AuthError, match="refused the credentials"):
        pull(ref, store=Store(store.root / "other"), credentials=Credentials(USER, "wrong"))


def test_identity_token_uses_oauth2_refresh_grant(
    registries: Registries,  # noqa: F811
    store: Store,
) -> None:
    ref = f"{registries.token.host}/{registries.images.private}"
    pulled = pull(ref, store=store, credentials=Credentials(identity_token=REFRESH_TOKEN))
    assert len(pulled.layers) == 4
    assert registries.token_server.requests[-1]["grant_type"] == ["refresh_token"]
    with pytest.raises(AuthError, match="refused the credentials"):
        pull(ref, store=Store(store.root / "2"), credentials=Credentials(identity_token="bad"))


def test_basic_auth(
    registries: Registries,  # noqa: F811
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = f"{registries.basic.host}/{registries.images.demo}"
    with pytest.raises(AuthError, match="requires a user name and password"):
        pull(ref, store=store)
    with pytest.raises(AuthError, match="wrong user name or password"):
        pull(ref, store=store, credentials=Credentials(USER, "nope"))
    assert _cached_files(store) == []
    # From ~/.docker/config.json (an old-style URL key).
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {f"http://{registries.basic.host}/v1/": {"auth": auth}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    assert len(pull(ref, store=store).layers) == 4


def test_credential_helper(
    registries: Registries,  # noqa: F811
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-pyopstest"
    helper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 1\n'
        "read server\n"
        f'[ "$server" = "{registries.token.host}" ] || exit 1\n'
        f'echo \'{{"ServerURL": "\'$server\'", "Username": "{USER}", "Secret": "{PASSWORD}"}}\'\n'
    )
    helper.chmod(0o755)
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {registries.token.host: {}}, "credsStore": "pyopstest"})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    found = load_docker_credentials(registries.token.host)
    assert found == Credentials(USER, PASSWORD)
    assert load_docker_credentials("other.example:5000") is None  # the helper says no
    pulled = pull(f"{registries.token.host}/{registries.images.private}", store=store)
    assert len(pulled.layers) == 4
    assert registries.token_server.requests[-1].get("account") == [USER]


def test_multi_arch_index_picks_amd64(
    registries: Registries,  # noqa: F811
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pyops.arch

    ref = f"{registries.token.host}/{registries.images.multi}"
    monkeypatch.setattr(pyops.arch, "host", lambda: pyops.arch.Arch.AMD64)
    pulled = pull(ref, store=store)
    assert (pulled.config.os, pulled.config.architecture) == ("linux", "amd64")
    assert str(pulled.platform) == "linux/amd64"
    unpack_layers(pulled.layers, tmp_path / "amd64")
    assert (tmp_path / "amd64/etc/platform").read_bytes() == registries.images.amd64_marker
    arm = pull(ref, store=store, platform="linux/arm64")
    assert arm.config.architecture == "arm64"
    unpack_layers(arm.layers, tmp_path / "arm64")
    assert (tmp_path / "arm64/etc/platform").read_bytes() == registries.images.arm64_marker
    with pytest.raises(PlatformNotFound, match="linux/s390x.*linux/amd64, linux/arm64/v8"):
        pull(ref, store=store, platform="linux/s390x")


def test_default_platform_follows_the_host(
    registries: Registries,  # noqa: F811
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As Docker on the host: the host's own architecture when the index has it, else
    amd64; a single-platform image as it is, when Nanos runs it."""
    import pyops.arch
    from pyops.arch import Arch

    ref = f"{registries.plain.host}/{registries.images.multi}"
    monkeypatch.setattr(pyops.arch, "host", lambda: Arch.ARM64)  # an Apple Silicon Mac
    pulled = pull(ref, store=store)
    assert (pulled.config.architecture, str(pulled.platform)) == ("arm64", "linux/arm64")
    monkeypatch.setattr(pyops.arch, "host", lambda: Arch.RISCV64)  # no Nanos for it
    assert str(pull(ref, store=store).platform) == "linux/amd64"
    monkeypatch.setattr(pyops.arch, "host", lambda: Arch.AMD64)
    # the arm64 image alone, asked for with no platform on an x86-64 host: taken as it is
    single = pull(f"{registries.plain.host}/test/multi:arm64", store=store)
    assert str(single.platform) == "linux/arm64"
    with pytest.raises(PlatformNotFound, match="is for linux/arm64, not linux/amd64"):
        pull(f"{registries.plain.host}/test/multi:arm64", store=store, platform="linux/amd64")


def test_single_platform_image_for_another_platform(
    registries: Registries,  # noqa: F811
    store: Store,
) -> None:
    with pytest.raises(PlatformNotFound, match="is for linux/amd64, not linux/arm64"):
        pull(
            f"{registries.plain.host}/{registries.images.demo}", store=store, platform="linux/arm64"
        )


def test_unknown_image_and_tag(
    registries: Registries,  # noqa: F811
    store: Store,
) -> None:
    for name in ("test/demo:no-such-tag", "test/no-such-repo:1"):
        ref = f"{registries.plain.host}/{name}"
        with pytest.raises(ManifestNotFound, match=name.replace("/", ".")) as info:
            pull(ref, store=store)
        assert "MANIFEST_UNKNOWN" in str(info.value)
    assert _cached_files(store) == []


def test_token_reused_until_expiry(registries: Registries) -> None:  # noqa: F811
    server = registries.token_server
    old_ttl = server.ttl
    server.ttl = 2  # the client renews after half the lifetime (margin = min(10 s, ttl / 2))
    try:
        client = RegistryClient(registries.token.host)
        for _ in range(3):
            client.fetch_manifest("test/demo", "1", image="demo")
        assert client.token_requests == 1
        time.sleep(1.2)
        client.fetch_manifest("test/demo", "1", image="demo")
        assert client.token_requests == 2
    finally:
        server.ttl = old_ttl


# -- fake registry: faults the real one cannot produce -------------------------------------------


def _layer(*entries: object) -> bytes:
    return gzip.compress(tar_bytes(list(entries)), mtime=0)  # type: ignore[arg-type]


@pytest.fixture()
def fake() -> Iterator[FakeRegistry]:
    with serve() as state:
        yield state


def _config(layers: list[bytes]) -> Mapping[str, object]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/app"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(gzip.decompress(x)) for x in layers]},
    }


def _fake_image(fake: FakeRegistry, layers: list[bytes], tag: str = "1") -> str:
    fake.add_image("test/fake", tag, layers, dict(_config(layers)))
    return f"127.0.0.1:{fake.port}/test/fake:{tag}"


def test_cut_download_resumes_with_range(fake: FakeRegistry, store: Store, tmp_path: Path) -> None:
    big = _layer(F("bin/app", os.urandom(400_000)))
    ref = _fake_image(fake, [big])
    fake.cut_blobs_once.add(sha256(big))
    pulled = pull(ref, store=store)
    ranges = [r.headers.get("Range") for r in fake.blob_requests() if sha256(big) in r.path]
    assert ranges[0] is None
    assert ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:].rstrip("-")) > 0
    assert pulled.layers[0].read_bytes() == big
    unpack_layers(pulled.layers, tmp_path / "root", diff_ids=pulled.config.diff_ids)
    assert (tmp_path / "root/bin/app").stat().st_size == 400_000


def test_server_ignoring_range(fake: FakeRegistry, store: Store) -> None:
    big = _layer(F("bin/app", os.urandom(300_000)))
    ref = _fake_image(fake, [big])
    fake.cut_blobs_once.add(sha256(big))
    fake.ignore_range = True
    assert pull(ref, store=store).layers[0].read_bytes() == big


def test_blob_digest_mismatch(fake: FakeRegistry, store: Store) -> None:
    good = _layer(F("bin/app", b"app"))
    ref = _fake_image(fake, [good])
    fake.corrupt_blobs[sha256(good)] = _layer(F("bin/app", b"evil"))[: len(good)].ljust(
        len(good), b"\0"
    )
    with pytest.raises(DigestMismatch, match=r"test/fake:1 layer 1/1") as info:
        pull(ref, store=store)
    assert sha256(good) in str(info.value)
    assert not store.has_blob(sha256(good))
    assert not list((store.root / "blobs" / "tmp").iterdir())
    del fake.corrupt_blobs[sha256(good)]
    assert pull(ref, store=store).layers[0].read_bytes() == good


def test_manifest_digest_mismatch(fake: FakeRegistry, store: Store) -> None:
    layers = [_layer(F("a", b"a"))]
    ref = _fake_image(fake, layers)
    other = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    wanted = "sha256:" + "0" * 64
    fake.manifests[f"test/fake:{wanted}"] = (other, oci.OCI_INDEX)
    with pytest.raises(DigestMismatch, match="not the sha256:0000"):
        pull(ref.split(":1")[0] + ":1@" + wanted, store=store)
    assert not store.has_blob(sha256(other))


def test_malicious_layer_is_refused_at_unpack(
    fake: FakeRegistry, store: Store, tmp_path: Path
) -> None:
    evil = _layer(F("ok", b"fine"), F("../../escape.txt", b"pwned"))
    pulled = pull(_fake_image(fake, [evil]), store=store)
    with pytest.raises(UnsafeLayerPath, match="escape.txt"):
        unpack_layers(pulled.layers, tmp_path / "a" / "b" / "root")
    assert not list(tmp_path.rglob("escape.txt"))


def test_zstd_layer_is_refused_before_download(fake: FakeRegistry, store: Store) -> None:
    layers = [_layer(F("a", b"a"))]
    ref = _fake_image(fake, layers)
    data, media_type = fake.manifests["test/fake:1"]
    doc = json.loads(data)
    doc["layers"][0]["mediaType"] = oci.LAYER_ZSTD
    fake.manifests["test/fake:1"] = (json.dumps(doc).encode(), media_type)
    with pytest.raises(Exception, match=r"zstd \(application/vnd.oci.image.layer.v1.tar\+zstd\)"):
        pull(ref, store=store)
    assert fake.blob_requests()[-1].path.endswith(doc["config"]["digest"])


def test_authorization_dropped_on_cross_host_redirect(fake: FakeRegistry, store: Store) -> None:
    layers = [_layer(F("a", b"a"))]
    ref = _fake_image(fake, layers)
    fake.basic_auth = (USER, PASSWORD)
    fake.redirect_blobs_to = f"localhost:{fake.port}"
    pull(ref, store=store, credentials=Credentials(USER, PASSWORD))
    redirected = [
        r for r in fake.blob_requests() if r.headers.get("Host", "").startswith("localhost")
    ]
    direct = [r for r in fake.blob_requests() if r.headers.get("Host", "").startswith("127.")]
    assert redirected and direct
    assert all("Authorization" not in r.headers for r in redirected)
    assert any("Authorization" in r.headers for r in direct)


def test_challenge_parsing() -> None:
    challenge = Challenge.parse(
        'Bearer realm="http://127.0.0.1:5003/token",service="test-registry",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "http://127.0.0.1:5003/token",
        "service": "test-registry",
        "scope": "repository:a/b:pull,push",
        "error": "insufficient_scope",
    }
    assert Challenge.parse('Basic realm="test realm"').params == {"realm": "test realm"}


def test_cli_pull_and_extract(fake: FakeRegistry, tmp_path: Path, store: Store) -> None:
    layers = [_layer(F("bin/app", b"app"))]
    ref = _fake_image(fake, layers)
    result = CliRunner().invoke(cli, ["pull", ref, "--extract", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "@sha256:" in result.output
    assert (tmp_path / "out/bin/app").read_bytes() == b"app"
    missing = CliRunner().invoke(cli, ["pull", ref.replace(":1", ":2")])
    assert missing.exit_code == 1
    assert "error:" in missing.output and "test/fake:2" in missing.output
    # A non-empty destination is refused; a failed unpack leaves nothing behind.
    again = CliRunner().invoke(cli, ["pull", ref, "--extract", str(tmp_path / "out")])
    assert again.exit_code == 1 and "is not empty" in again.output
    bad = _fake_image(fake, [_layer(F("../escape", b"x"))], tag="bad")
    failed = CliRunner().invoke(cli, ["pull", bad, "--extract", str(tmp_path / "new")])
    assert failed.exit_code == 1, failed.output
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# -- credentials from config.json ------------------------------------------------------------


def _write_config(tmp_path: Path, doc: Mapping[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def test_docker_config_entries(tmp_path: Path) -> None:
    auth = base64.b64encode(b"bob:pa:ss:word").decode()  # split at the first colon only
    path = _write_config(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": auth},
                "ghcr.io": {"username": "u", "password": "p"},
                "quay.io": {"identitytoken": "refresh"},
                "reg.example:5000": {"registrytoken": "ready"},
                "empty.example": {},
            }
        },
    )
    assert load_docker_credentials("docker.io", config_path=path) == Credentials(
        "bob", "pa:ss:word"
    )
    assert load_docker_credentials("ghcr.io", config_path=path) == Credentials("u", "p")
    assert load_docker_credentials("quay.io", config_path=path) == Credentials(
        identity_token="refresh"
    )
    assert load_docker_credentials("reg.example:5000", config_path=path) == Credentials(
        registry_token="ready"
    )
    assert load_docker_credentials("empty.example", config_path=path) is None
    assert load_docker_credentials("unknown.example", config_path=path) is None
    assert load_docker_credentials("x", config_path=tmp_path / "missing.json") is None
    assert "pa:ss" not in repr(Credentials("bob", "pa:ss:word"))


def test_cred_helpers_take_precedence_and_missing_helpers_are_soft(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-hubhelper"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'echo "{\\"Username\\": \\"<token>\\", \\"Secret\\": \\"$server\\"}"\n'
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    auth = base64.b64encode(b"a:b").decode()
    path = _write_config(
        tmp_path,
        {
            "auths": {"docker.io": {"auth": auth}, "gone.example": {"auth": auth}},
            "credHelpers": {"index.docker.io": "hubhelper", "gone.example": "not-installed"},
        },
    )
    # Docker Hub's helper is asked for the Hub server URL; "<token>" means an identity token.
    assert load_docker_credentials("docker.io", config_path=path) == Credentials(
        identity_token="https://index.docker.io/v1/"
    )
    assert load_docker_credentials("gone.example", config_path=path) is None
    assert "docker-credential-not-installed" in caplog.text


def test_scheme_choice() -> None:
    assert RegistryClient("registry.example.com").base_url == "https://registry.example.com"
    assert RegistryClient("10.0.0.5:5000").base_url == "https://10.0.0.5:5000"
    assert RegistryClient("10.0.0.5:5000", insecure=True).base_url == "http://10.0.0.5:5000"
    assert RegistryClient("localhost:5000").base_url == "http://localhost:5000"
    assert RegistryClient("[::1]:5000").base_url == "http://[::1]:5000"


def test_nested_index_and_docker_list(fake: FakeRegistry, store: Store) -> None:
    layers = [_layer(F("etc/marker", b"nested"))]
    _fake_image(fake, layers)
    child, media_type = fake.manifests["test/fake:1"]
    arm = {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 10}
    inner = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [
            {**arm, "platform": {"os": "linux", "architecture": "arm64"}},
            {
                "mediaType": media_type,
                "digest": sha256(child),
                "size": len(child),
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    }
    inner_bytes = json.dumps(inner).encode()
    fake.manifests[f"test/fake:{sha256(inner_bytes)}"] = (inner_bytes, oci.OCI_INDEX)
    outer = {
        "schemaVersion": 2,
        "mediaType": oci.DOCKER_LIST,
        "manifests": [
            {"mediaType": oci.OCI_INDEX, "digest": sha256(inner_bytes), "size": len(inner_bytes)}
        ],
    }
    outer_bytes = json.dumps(outer).encode()
    fake.manifests["test/fake:nested"] = (outer_bytes, oci.DOCKER_LIST)
    pulled = pull(f"127.0.0.1:{fake.port}/test/fake:nested", store=store)
    assert pulled.digest == sha256(child)
    assert store.has_blob(sha256(outer_bytes)) and store.has_blob(sha256(inner_bytes))
    with pytest.raises(PlatformNotFound, match="linux/riscv64"):
        pull(f"127.0.0.1:{fake.port}/test/fake:nested", store=store, platform="linux/riscv64")


# -- layers handed over while later ones download ----------------------------------------------


class _Recorder:
    """A LayerConsumer that notes, for each layer, whether the last layer was there yet."""

    def __init__(self, store: Store, last: str, fail_at: int | None = None) -> None:
        self.store = store
        self.last = last
        self.fail_at = fail_at
        self.started: list[int] = []
        self.layers: list[tuple[int, bool]] = []

    def start(self, config: oci.ImageConfig, layers: Sequence[oci.Descriptor]) -> None:
        self.started.append(len(layers))

    def layer(self, number: int, path: Path) -> None:
        assert path.is_file()
        self.layers.append((number, self.store.has_blob(self.last)))
        if number == self.fail_at:
            raise LayerError(f"layer {number} refused by the consumer")


def test_layers_reach_the_consumer_in_order_while_later_ones_download(
    fake: FakeRegistry, store: Store
) -> None:
    first = _layer(F("bin/app", b"app"))
    second = _layer(F("lib/one", b"1"))
    slow = _layer(F("data/big", os.urandom(60_000)))
    ref = _fake_image(fake, [first, second, slow])
    fake.slow[sha256(slow)] = 0.01  # about a second for the last layer
    recorder = _Recorder(store, sha256(slow))
    pulled = pull(ref, store=store, consumer=recorder)
    assert recorder.started == [3]
    # Layers 1 and 2 were handed over before the last one was complete, in order.
    assert recorder.layers == [(1, False), (2, False), (3, True)]
    assert [p.read_bytes() for p in pulled.layers] == [first, second, slow]


class _Streamer(_Recorder):
    """A streaming LayerConsumer: reads each layer handed over as it arrives, noting
    whether its download was complete then."""

    def __init__(self, store: Store, last: str) -> None:
        super().__init__(store, last)
        self.order: list[int] = []
        self.read: dict[int, bytes] = {}
        self.complete: dict[int, bool] = {}

    def layer(self, number: int, path: Path) -> None:
        self.order.append(number)
        super().layer(number, path)

    def layer_arriving(self, number: int, path: Path, arriving: ArrivingBlob) -> None:
        self.order.append(number)
        self.complete[number] = path.is_file()
        with arriving.open() as reader:
            self.read[number] = b"".join(iter(lambda: reader.read(1 << 16), b""))
        assert path.is_file()  # read to its end: the blob is in place


def test_a_streaming_consumer_reads_a_layer_while_it_downloads(
    fake: FakeRegistry, store: Store
) -> None:
    first = _layer(F("bin/app", b"app"))
    slow = _layer(F("data/big", os.urandom(60_000)))
    ref = _fake_image(fake, [first, slow])
    fake.slow[sha256(slow)] = 0.01
    streamer = _Streamer(store, sha256(slow))
    pulled = pull(ref, store=store, consumer=streamer)
    assert streamer.order == [1, 2]  # each layer once, in order
    assert streamer.complete[2] is False  # handed over before its download ended
    assert streamer.read[2] == slow
    assert [p.read_bytes() for p in pulled.layers] == [first, slow]


def test_a_streamed_layer_with_a_wrong_digest_fails_the_pull(
    fake: FakeRegistry, store: Store
) -> None:
    good = _layer(F("data/big", os.urandom(60_000)))
    ref = _fake_image(fake, [good])
    fake.corrupt_blobs[sha256(good)] = good[:-1] + bytes([good[-1] ^ 1])
    streamer = _Streamer(store, sha256(good))
    with pytest.raises(DigestMismatch):
        pull(ref, store=store, consumer=streamer)
    assert streamer.order == [1] and streamer.read == {}  # the reader raised, never ended
    assert not store.has_blob(sha256(good))


def test_a_consumer_error_stops_the_downloads(fake: FakeRegistry, store: Store) -> None:
    first = _layer(F("bin/app", b"app"))
    slow = _layer(F("data/big", os.urandom(200_000)))
    ref = _fake_image(fake, [first, slow])
    fake.slow[sha256(slow)] = 0.01
    recorder = _Recorder(store, sha256(slow), fail_at=1)
    with pytest.raises(LayerError, match="refused by the consumer"):
        pull(ref, store=store, consumer=recorder)
    assert recorder.layers == [(1, False)]
    assert not store.has_blob(sha256(slow))
    deadline = time.monotonic() + 10
    while sha256(slow) not in fake.aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sha256(slow) in fake.aborted  # the client hung up instead of downloading on


def test_cached_layers_reach_the_consumer_at_once(fake: FakeRegistry, store: Store) -> None:
    layers = [_layer(F("bin/app", b"app")), _layer(F("lib/one", b"1"))]
    ref = _fake_image(fake, layers)
    pull(ref, store=store)
    before = len(fake.blob_requests())
    recorder = _Recorder(store, sha256(layers[1]))
    pull(ref, store=store, consumer=recorder)
    assert recorder.layers == [(1, True), (2, True)]
    assert len(fake.blob_requests()) == before


def test_missing_layers_start_downloading_before_a_cached_one_is_handed_over(
    fake: FakeRegistry, store: Store
) -> None:
    cached = _layer(F("bin/app", b"app"))
    slow = _layer(F("data/big", os.urandom(30_000)))
    pull(_fake_image(fake, [cached], tag="base"), store=store)
    ref = _fake_image(fake, [cached, slow])
    fake.slow[sha256(slow)] = 0.01
    requested: list[bool] = []

    class Watch(_Recorder):
        def layer(self, number: int, path: Path) -> None:
            if number == 1:  # has the download of layer 2 begun?
                deadline = time.monotonic() + 10
                while not self._asked() and time.monotonic() < deadline:
                    time.sleep(0.02)
                requested.append(self._asked())
            super().layer(number, path)

        def _asked(self) -> bool:
            return any(sha256(slow) in r.path for r in fake.blob_requests())

    pull(ref, store=store, consumer=Watch(store, sha256(slow)))
    assert requested == [True]

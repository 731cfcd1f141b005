"""Manifests, indexes, configs and platform choice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pyops.errors import InvalidInput, LimitExceeded, PlatformNotFound, RegistryError
from pyops.oci import schema as oci
from pyops.oci.schema import (
    DEFAULT_PLATFORM,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    Platform,
    iter_platform_candidates,
    parse_manifest,
)


def _digest(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


def _desc(n: int, media_type: str = oci.OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(n), "size": 100 + n, **extra}


def _manifest(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "config": _desc(1, oci.OCI_CONFIG),
        "layers": [_desc(2, oci.LAYER_GZIP), _desc(3, oci.LAYER_TAR)],
        **extra,
    }


def _index(*platforms: dict[str, Any] | None, **extra: Any) -> ImageIndex:
    entries = [
        _desc(10 + i, **({"platform": p} if p is not None else {})) for i, p in enumerate(platforms)
    ]
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries, **extra}
    parsed = parse_manifest(json.dumps(doc).encode(), None)
    assert isinstance(parsed, ImageIndex)
    return parsed


def test_manifest_media_type_from_header_when_body_has_none() -> None:
    parsed = parse_manifest(json.dumps(_manifest()).encode(), oci.OCI_MANIFEST + "; charset=x")
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == oci.OCI_MANIFEST
    assert parsed.config.digest == _digest(1)
    assert [layer.media_type for layer in parsed.layers] == [oci.LAYER_GZIP, oci.LAYER_TAR]


def test_manifest_shape_is_the_last_resort() -> None:
    parsed = parse_manifest(json.dumps(_manifest()).encode(), "application/octet-stream")
    assert isinstance(parsed, ImageManifest)


def test_header_and_body_must_agree() -> None:
    body = json.dumps(_manifest(mediaType=oci.DOCKER_MANIFEST)).encode()
    with pytest.raises(RegistryError, match="says"):
        parse_manifest(body, oci.OCI_MANIFEST)


@pytest.mark.parametrize(
    ("doc", "content_type", "match"),
    [
        ({"schemaVersion": 1, "name": "x", "fsLayers": []}, oci.DOCKER_SCHEMA1_SIGNED, "schema 1"),
        (_manifest(artifactType="application/x-sbom"), oci.OCI_MANIFEST, "artifact"),
        (
            {**_manifest(), "config": _desc(1, "application/vnd.oci.empty.v1+json")},
            oci.OCI_MANIFEST,
            "artifact",
        ),
        (
            {
                "schemaVersion": 2,
                "config": {"mediaType": oci.OCI_CONFIG, "digest": "sha256:00", "size": 1},
                "layers": [],
            },
            None,
            "digest",
        ),
        ({"hello": 1}, "application/x-unknown", "unknown media type"),
        ([1, 2], oci.OCI_MANIFEST, "not a JSON object"),
    ],
)
def test_bad_manifests(doc: Any, content_type: str | None, match: str) -> None:
    with pytest.raises(RegistryError, match=match):
        parse_manifest(json.dumps(doc).encode(), content_type)


def test_oversized_manifest_refused() -> None:
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_JSON_BYTES"):
        parse_manifest(b" " * (oci.MAX_MANIFEST_SIZE + 1), oci.OCI_MANIFEST)


def test_platform_parse() -> None:
    assert Platform.parse("linux/amd64") == DEFAULT_PLATFORM
    assert Platform.parse("linux/aarch64") == Platform("linux", "arm64")
    assert str(Platform.parse("linux/arm64/v8")) == "linux/arm64/v8"
    for bad in ["linux", "linux/", "a/b/c/d"]:
        with pytest.raises(InvalidInput):
            Platform.parse(bad)


def _chosen(index: ImageIndex, wanted: Platform) -> list[str]:
    return [d.digest for d in iter_platform_candidates(index, wanted)]


def test_amd64_is_chosen_and_attestations_skipped() -> None:
    index = _index(
        {"os": "unknown", "architecture": "unknown"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "amd64"},
        {"os": "windows", "architecture": "amd64"},
    )
    assert _chosen(index, DEFAULT_PLATFORM) == [_digest(12)]
    assert oci.describe_platforms(index) == (
        "linux/amd64, linux/arm64/v8, unknown/unknown, windows/amd64"
    )


def test_arm64_with_and_without_v8_are_equal() -> None:
    index = _index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64"},
    )
    assert _chosen(index, Platform.parse("linux/arm64/v8")) == [_digest(11)]
    index = _index({"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert _chosen(index, Platform.parse("linux/arm64")) == [_digest(10)]


def test_arm_variants_best_first() -> None:
    index = _index(
        {"os": "linux", "architecture": "arm", "variant": "v5"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
        {"os": "linux", "architecture": "arm", "variant": "v6"},
    )
    assert _chosen(index, Platform.parse("linux/arm/v7")) == [_digest(11), _digest(12), _digest(10)]
    assert _chosen(index, Platform.parse("linux/arm/v6")) == [_digest(12), _digest(10)]


def test_amd64_levels_only_when_asked() -> None:
    index = _index(
        {"os": "linux", "architecture": "amd64", "variant": "v3"},
        {"os": "linux", "architecture": "amd64"},
    )
    assert _chosen(index, DEFAULT_PLATFORM) == [_digest(11)]
    assert _chosen(index, Platform.parse("linux/amd64/v3")) == [_digest(10), _digest(11)]


def test_ties_keep_index_order_and_nested_indexes_are_candidates() -> None:
    doc = {
        "schemaVersion": 2,
        "manifests": [
            _desc(1, oci.OCI_INDEX),
            _desc(2, platform={"os": "linux", "architecture": "amd64"}),
            _desc(3, platform={"os": "linux", "architecture": "amd64"}),
            _desc(4, "application/x-other", platform={"os": "linux", "architecture": "amd64"}),
        ],
    }
    index = parse_manifest(json.dumps(doc).encode(), oci.DOCKER_LIST)
    assert isinstance(index, ImageIndex)
    assert _chosen(index, DEFAULT_PLATFORM) == [_digest(1), _digest(2), _digest(3)]


def test_image_config() -> None:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "65534:65534",
            "ExposedPorts": {"8080/tcp": {}},
            "Env": ["PATH=/usr/bin", "GREETING=hello"],
            "Entrypoint": ["/usr/bin/ls"],
            "Cmd": ["-la", "/opt"],
            "WorkingDir": "/opt",
            "Labels": {"org.example.test": "1"},
        },
        "rootfs": {"type": "layers", "diff_ids": [_digest(5)]},
    }
    config = ImageConfig.from_json(json.dumps(doc).encode())
    assert config.entrypoint == ("/usr/bin/ls",)
    assert config.cmd == ("-la", "/opt")
    assert config.env == ("PATH=/usr/bin", "GREETING=hello")
    assert config.working_dir == "/opt"
    assert config.user == "65534:65534"
    assert config.exposed_ports == ("8080/tcp",)
    assert config.labels == {"org.example.test": "1"}
    assert config.diff_ids == (_digest(5),)
    assert config.platform == DEFAULT_PLATFORM
    empty = ImageConfig.from_json(b'{"architecture": "arm64", "os": "linux", "config": null}')
    assert empty.entrypoint == () and empty.env == ()
    with pytest.raises(PlatformNotFound, match="linux/arm64"):
        oci.check_config_platform(empty, DEFAULT_PLATFORM, image="x")
    with pytest.raises(RegistryError, match="Env"):
        ImageConfig.from_json(b'{"config": {"Env": "PATH=/bin"}}')


def _config_with(**inner: Any) -> bytes:
    return json.dumps({"os": "linux", "architecture": "amd64", "config": inner}).encode()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("ExposedPorts", [1, "a"], "ExposedPorts"),
        ("ExposedPorts", {"\u00b2/tcp": {}}, "ExposedPorts"),
        ("ExposedPorts", {"\u0661\u0662/tcp": {}}, "ExposedPorts"),
        ("ExposedPorts", {"70000/tcp": {}}, "ExposedPorts"),
        ("ExposedPorts", {"80/icmp": {}}, "ExposedPorts"),
        ("Env", "PATH=/bin", "Env"),
        ("Env", [1], "Env"),
        ("Cmd", {"a": 1}, "Cmd"),
        ("Entrypoint", [["x"]], "Entrypoint"),
        ("WorkingDir", 7, "WorkingDir"),
        ("User", ["root"], "User"),
        ("Labels", {"a": 1}, "Labels"),
        ("Labels", ["a"], "Labels"),
    ],
)
def test_config_field_types_are_checked(field: str, value: Any, named: str) -> None:
    with pytest.raises(RegistryError, match=named):
        ImageConfig.from_json(_config_with(**{field: value}))


def test_config_top_level_types_are_checked() -> None:
    for doc, named in [
        ({"os": 1}, "os"),
        ({"architecture": ["amd64"]}, "architecture"),
        ({"variant": {}}, "variant"),
        ({"rootfs": []}, "rootfs"),
        ({"rootfs": {"diff_ids": ["not-a-digest"]}}, "diff_ids"),
        ({"config": "x"}, "config"),
    ]:
        with pytest.raises(RegistryError, match=named):
            ImageConfig.from_json(json.dumps(doc).encode())
    ports = ImageConfig.from_json(_config_with(ExposedPorts={"8080/tcp": {}, "53": {}}))
    assert ports.exposed_ports == ("53", "8080/tcp")


def test_descriptor_field_types_are_checked() -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        (_desc(1, size=True), "size"),
        (_desc(1, size=1.5), "size"),
        (_desc(1, size=-1), "size"),
        (_desc(1, size=1 << 64), "size"),
        (_desc(1, mediaType=3), "mediaType"),
        (_desc(1, digest=5), "digest"),
        (_desc(1, platform="linux/amd64"), "platform"),
        (_desc(1, platform={"os": 1, "architecture": "amd64"}), "os"),
        (_desc(1, platform={"os": "linux", "architecture": "amd64", "variant": 8}), "variant"),
        (_desc(1, annotations={"a": 1}), "annotations"),
        (_desc(1, annotations=[]), "annotations"),
        (_desc(1, urls="http://x"), "urls"),
    ]
    for desc, named in bad:
        doc = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [desc]}
        with pytest.raises(RegistryError, match=named):
            parse_manifest(json.dumps(doc).encode(), None)
    with pytest.raises(RegistryError, match="schemaVersion"):
        parse_manifest(b'{"schemaVersion": "2", "manifests": []}', None)


def test_huge_numbers_are_refused() -> None:
    digits = "9" * 5000
    data = f'{{"schemaVersion": 2, "mediaType": "{oci.OCI_INDEX}", "manifests": [], "n": {digits}}}'
    with pytest.raises(RegistryError, match="not valid JSON"):
        parse_manifest(data.encode(), None)
    with pytest.raises(RegistryError, match="not valid JSON"):
        ImageConfig.from_json(f'{{"os": {digits}}}'.encode())


def test_deep_json_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for parse in (
        lambda d: parse_manifest(d, oci.OCI_MANIFEST),
        lambda d: ImageConfig.from_json(d),
    ):
        with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_JSON_DEPTH"):
            parse(b'{"a": ' + deep + b"}")
    monkeypatch.setenv("PYOPS_LIMIT_JSON_DEPTH", "3")
    with pytest.raises(LimitExceeded, match="JSON_DEPTH"):
        ImageConfig.from_json(b'{"config": {"Labels": {"a": {"b": {}}}}}')


def test_default_platforms_follow_the_host() -> None:
    from pyops.arch import Arch
    from pyops.oci.schema import DEFAULT_PLATFORM, Platform, default_platforms

    assert default_platforms(Arch.ARM64) == (Platform("linux", "arm64"), DEFAULT_PLATFORM)
    assert default_platforms(Arch.AMD64) == (DEFAULT_PLATFORM,)
    assert default_platforms(Arch.S390X) == (DEFAULT_PLATFORM,)  # Nanos has no s390x kernel

"""Fuzzing the parsers of what registries send: only pyops's own errors may come out.

Manifests, indexes and configs (:mod:`pyops.oci.schema`), ``WWW-Authenticate`` challenges and token
answers (:mod:`pyops.oci.registry`), references and digests (:mod:`pyops.oci.reference`) are fed
random bytes and structured-but-wrong JSON (wrong types, huge numbers, deep nesting, unicode
digits). Each run is bounded by its number of examples; no example database is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyops.errors import PyopsError
from pyops.oci import schema as oci
from pyops.oci.reference import ImageRef, check_digest, is_loopback_host
from pyops.oci.registry import Challenge, _error_detail, parse_token_answer
from pyops.oci.schema import DEFAULT_PLATFORM, ImageConfig, ImageIndex, parse_manifest

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DIGEST = "sha256:" + "a" * 64
UNICODE_DIGITS = ["\u00b2", "\u0661\u0662", "\uff18\uff10", "\u2460", "\U0001d7d8", "80\u00b2/tcp"]
HUGE = "9" * 5000

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=1 << 62, max_value=1 << 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(UNICODE_DIGITS),
    st.sampled_from([DIGEST, "sha512:" + "b" * 128, "md5:00", oci.OCI_MANIFEST, oci.OCI_INDEX]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(UNICODE_DIGITS)), inner),
    ),
    max_leaves=12,
)


def only_pyops_errors(parse: Callable[[], Any]) -> Any:
    """Run ``parse``; a PyopsError is a fine answer, any other exception fails the test."""
    try:
        return parse()
    except PyopsError:
        return None


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def _descriptor(**fields: Any) -> dict[str, Any]:
    return {"mediaType": oci.OCI_MANIFEST, "digest": DIGEST, "size": 10, **fields}


def _valid_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": _descriptor(mediaType=oci.OCI_CONFIG),
        "layers": [_descriptor(mediaType=oci.LAYER_GZIP)],
    }


def _valid_index() -> dict[str, Any]:
    platform = {"os": "linux", "architecture": "amd64"}
    return {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [_descriptor(platform=platform, annotations={"a": "b"})],
    }


def _valid_config() -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["A=1"],
            "Entrypoint": ["/app"],
            "Cmd": ["x"],
            "WorkingDir": "/",
            "User": "0",
            "ExposedPorts": {"80/tcp": {}},
            "Labels": {"a": "b"},
        },
        "rootfs": {"type": "layers", "diff_ids": [DIGEST]},
    }


# Where a wrong value may be put in each valid document: a path of keys and indexes.
MANIFEST_PATHS = [
    ("schemaVersion",),
    ("mediaType",),
    ("artifactType",),
    ("config",),
    ("config", "mediaType"),
    ("config", "digest"),
    ("config", "size"),
    ("config", "urls"),
    ("config", "annotations"),
    ("config", "platform"),
    ("layers",),
    ("layers", 0),
    ("layers", 0, "size"),
    ("layers", 0, "digest"),
    ("layers", 0, "mediaType"),
]
INDEX_PATHS = [
    ("manifests",),
    ("manifests", 0),
    ("manifests", 0, "platform"),
    ("manifests", 0, "platform", "os"),
    ("manifests", 0, "platform", "architecture"),
    ("manifests", 0, "platform", "variant"),
    ("manifests", 0, "platform", "os.features"),
    ("manifests", 0, "annotations"),
    ("manifests", 0, "annotations", "vnd.docker.reference.type"),
    ("manifests", 0, "size"),
    ("manifests", 0, "mediaType"),
]
CONFIG_PATHS = [
    ("architecture",),
    ("os",),
    ("variant",),
    ("config",),
    ("rootfs",),
    ("rootfs", "diff_ids"),
    ("rootfs", "diff_ids", 0),
    *(("config", key) for key in _valid_config()["config"]),
    ("config", "ExposedPorts", "80/tcp"),
    ("config", "Env", 0),
    ("config", "Labels", "a"),
]


def _put(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


def _check_manifest(data: bytes, content_type: str | None) -> None:
    document = only_pyops_errors(lambda: parse_manifest(data, content_type))
    if isinstance(document, ImageIndex):
        # What the pull does next with an index must not fail either.
        only_pyops_errors(lambda: list(oci.iter_platform_candidates(document, DEFAULT_PLATFORM)))
        only_pyops_errors(lambda: oci.describe_platforms(document))


content_types = st.one_of(
    st.none(),
    st.sampled_from(sorted(oci.INDEX_TYPES | oci.MANIFEST_TYPES) + ["application/json", ""]),
    st.text(max_size=30),
)


@FUZZ
@given(st.binary(max_size=2000), content_types)
def test_fuzz_manifest_bytes(data: bytes, content_type: str | None) -> None:
    _check_manifest(data, content_type)


@FUZZ
@given(st.sampled_from(MANIFEST_PATHS + INDEX_PATHS), values, content_types)
def test_fuzz_manifest_and_index_fields(
    path: tuple[Any, ...], value: Any, content_type: str | None
) -> None:
    base = _valid_manifest() if path in MANIFEST_PATHS else _valid_index()
    _check_manifest(_dumps(_put(base, path, value)), content_type)


@FUZZ
@given(st.sampled_from(CONFIG_PATHS), values)
def test_fuzz_config_fields(path: tuple[Any, ...], value: Any) -> None:
    config = only_pyops_errors(
        lambda: ImageConfig.from_json(_dumps(_put(_valid_config(), path, value)))
    )
    if config is not None:
        only_pyops_errors(lambda: oci.check_config_platform(config, DEFAULT_PLATFORM, image="x"))
        for port in config.exposed_ports:
            assert 0 < int(port.split("/")[0]) <= 65535


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_config_bytes(data: bytes) -> None:
    only_pyops_errors(lambda: ImageConfig.from_json(data))


@FUZZ
@given(
    st.sampled_from(["manifest", "config", "token", "error"]),
    st.integers(min_value=1, max_value=20_000),
    st.sampled_from(["[", '{"a":', '[{"b":']),
    st.sampled_from(["", HUGE, "-" + HUGE, "1e99999", "NaN", '"\\ud800"']),
)
def test_fuzz_deep_and_huge_json(kind: str, depth: int, opener: str, leaf: str) -> None:
    closer = {"[": "]", '{"a":': "}", '[{"b":': "}]"}[opener]
    data = (opener * depth + (leaf or "0") + closer * depth).encode()
    parse: dict[str, Callable[[], Any]] = {
        "manifest": lambda: parse_manifest(data, oci.OCI_MANIFEST),
        "config": lambda: ImageConfig.from_json(data),
        "token": lambda: parse_token_answer(data),
        "error": lambda: _error_detail(data),
    }
    only_pyops_errors(parse[kind])


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_fuzz_challenge(header: str) -> None:
    challenge = only_pyops_errors(lambda: Challenge.parse(header))
    assert challenge is not None  # the parser never refuses: it finds what it can
    assert isinstance(challenge.scheme, str)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.text(max_size=10), st.one_of(st.text(max_size=20), st.sampled_from(UNICODE_DIGITS))
        ),
        max_size=5,
    ),
    st.sampled_from(["Bearer", "Basic", "bearer", "", "Negotiate"]),
)
def test_fuzz_structured_challenge(params: list[tuple[str, str]], scheme: str) -> None:
    header = scheme + " " + ",".join(f'{k}="{v}"' for k, v in params)
    assert only_pyops_errors(lambda: Challenge.parse(header)) is not None


@FUZZ
@given(
    st.one_of(st.binary(max_size=500), st.dictionaries(st.text(max_size=12), values).map(_dumps))
)
def test_fuzz_token_answer(body: bytes) -> None:
    answer = only_pyops_errors(lambda: parse_token_answer(body))
    if answer is not None:
        token, lifetime = answer
        assert token and token.isascii() and 1 <= lifetime <= 86400
    only_pyops_errors(lambda: _error_detail(body))


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        st.from_regex(r"[a-z0-9.:\[\]]{0,20}/[a-z0-9._/-]{0,40}(:[\w.-]{0,20})?(@.{0,80})?"),
    )
)
def test_fuzz_reference(text: str) -> None:
    ref = only_pyops_errors(lambda: ImageRef.parse(text))
    if ref is not None:
        assert ImageRef.parse(str(ref)) == ref
        only_pyops_errors(lambda: is_loopback_host(ref.registry))
    only_pyops_errors(lambda: check_digest(text))

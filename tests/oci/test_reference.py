"""Image references parsed as Docker parses them (reference doc section 1.3)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pyops.errors import InvalidInput, InvalidReference
from pyops.oci.reference import ImageRef, check_digest, is_loopback_host

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
        ("library/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("index.docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("registry-1.docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("bitnami/redis:7.2", "docker.io", "bitnami/redis", "7.2", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/app:1.0", "localhost:5000", "app", "1.0", None),
        ("myregistry:5000/app", "myregistry:5000", "app", "latest", None),
        ("127.0.0.1:5000/ns/sub/app", "127.0.0.1:5000", "ns/sub/app", "latest", None),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
        (f"ghcr.io/owner/img@{D}", "ghcr.io", "owner/img", None, D),
        (f"ubuntu:22.04@{D}", "docker.io", "library/ubuntu", None, D),
        ("Foo/bar", "Foo", "bar", "latest", None),
        ("registry.example.com:5000/app:5000", "registry.example.com:5000", "app", "5000", None),
        ("example.com", "docker.io", "library/example.com", "latest", None),
        ("localhost", "docker.io", "library/localhost", "latest", None),
        ("a__b/c-d---e.f_g:T_a.g-1", "docker.io", "a__b/c-d---e.f_g", "T_a.g-1", None),
    ],
)
def test_parse_docker_examples(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


@pytest.mark.parametrize(
    "text",
    [
        "foo/Bar",
        "UPPER",
        "foo:bar/baz",
        "ubuntu:latest:extra",
        "app@sha256:ABC",
        "ab" * 32,
        "",
        " ubuntu",
        "ubuntu:",
        "ubuntu@",
        "a//b",
        "app@md5:" + "0" * 32,
        "app@sha256:" + "A" * 64,
        "app:" + "t" * 129,
        "-app",
    ],
)
def test_parse_rejects_invalid(text: str) -> None:
    with pytest.raises(InvalidReference):
        ImageRef.parse(text)


def test_invalid_reference_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="UPPER"):
        ImageRef.parse("UPPER")


def test_api_host_and_reference() -> None:
    hub = ImageRef.parse("ubuntu")
    assert hub.api_host == "registry-1.docker.io"
    assert hub.reference == "latest"
    pinned = ImageRef.parse(f"localhost:5000/app@{D}")
    assert pinned.api_host == "localhost:5000"
    assert pinned.reference == D
    assert ImageRef.parse("ubuntu").with_digest(D).reference == D


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("foo.localhost:80", True),
        ("127.0.0.1", True),
        ("127.1.2.3:5000", True),
        ("[::1]:5000", True),
        ("[::1]", True),
        ("10.0.0.1:5000", False),
        ("docker.io", False),
        ("localhost.example.com", False),
        ("[2001:db8::1]:5000", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_check_digest() -> None:
    assert check_digest(D) == D
    assert check_digest("sha512:" + "0" * 128).startswith("sha512:")
    for bad in [
        "sha256:" + "0" * 63,
        "sha256" + "0" * 64,
        "sha1:" + "0" * 40,
        "sha256:" + "g" * 64,
    ]:
        with pytest.raises(InvalidReference):
            check_digest(bad)


_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(
    registry=st.sampled_from(["", "localhost:5000/", "reg.example.com/", "127.0.0.1:1/"]),
    path=st.lists(_component, min_size=1, max_size=3),
    tag=st.one_of(st.none(), _tag),
)
def test_round_trip(registry: str, path: list[str], tag: str | None) -> None:
    # Without a registry, a first component with a '.' is taken as a host (as Docker does),
    # which makes the case a different one; those are covered by the tables above.
    assume(registry or "." not in path[0])
    text = registry + "/".join(path) + (f":{tag}" if tag else "")
    ref = ImageRef.parse(text)
    assert ref.tag == (tag or "latest")
    assert ImageRef.parse(str(ref)) == ref
    if registry:
        assert ref.registry == registry.rstrip("/")
        assert ref.repository == "/".join(path)

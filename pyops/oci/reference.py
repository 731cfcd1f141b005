"""Image references (``[registry/]repository[:tag][@digest]``) parsed the way Docker parses them.

The grammar and the normalisation rules follow ``distribution/reference`` (``regexp.go`` and
``normalize.go``): Docker Hub is the default registry, one-component Hub names get
``library/``, and the tag defaults to ``latest`` only when there is no digest.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from pyops.errors import InvalidReference

DOCKER_HUB = "docker.io"
"""The registry name Docker uses in references for Docker Hub."""

DOCKER_HUB_API = "registry-1.docker.io"
"""The host that serves Docker Hub's registry API."""

DEFAULT_TAG = "latest"

# Hosts that all mean Docker Hub. ``registry-1.docker.io`` is not canonicalised by the Go
# library (the request then goes to /v2/ubuntu and fails); pyops treats it as an alias for
# convenience, as the reference doc (section 1.3) allows.
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.%]+\])(?::[0-9]+)?"
)
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_ANCHORED_ID = re.compile(r"[a-f0-9]{64}")

# Lengths of the hex part for the algorithms the OCI image spec registers (descriptor.md).
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed ``sha256:`` or ``sha512:`` digest.

    Raises :class:`~pyops.errors.InvalidReference` otherwise; the OCI descriptor spec requires
    lowercase hex of the exact length for the registered algorithms.
    """
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not _DIGEST_RE.fullmatch(digest):
        raise InvalidReference(f"{digest!r} is not a valid digest (expected sha256:<64 hex>).")
    length = _DIGEST_HEX_LENGTH.get(algorithm)
    if length is None:
        raise InvalidReference(
            f"digest {digest!r} uses the algorithm {algorithm!r}, which pyops does not support.",
            hint="Use a sha256 digest.",
        )
    if len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise InvalidReference(
            f"{digest!r} is not a valid {algorithm} digest "
            f"(expected {length} lowercase hex digits)."
        )
    return digest


def is_loopback_host(host: str) -> bool:
    """Tell whether a ``host[:port]`` names this machine (``localhost``, 127.0.0.0/8, ``::1``).

    Only the literal text is looked at, never DNS: a name that merely resolves to 127.0.0.1
    does not count, so plain HTTP cannot be enabled by a DNS answer.
    """
    name = _strip_port(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.index("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A normalised image reference.

    ``registry`` is the name used in references and credential lookups (``docker.io`` for
    Docker Hub); :attr:`api_host` is the host that answers the registry API.
    """

    registry: str
    """``host[:port]`` of the registry, ``docker.io`` for Docker Hub."""
    repository: str
    """Repository path, e.g. ``library/ubuntu``."""
    tag: str | None = None
    """Tag, ``None`` when pulling by digest."""
    digest: str | None = None
    """Manifest digest, when the reference pins one."""

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse ``text`` like ``docker pull`` does.

        With both a tag and a digest the digest wins and the tag is dropped
        (``ParseDockerRef``). Raises :class:`~pyops.errors.InvalidReference` for anything the
        Docker grammar refuses.
        """
        if not text or text != text.strip():
            raise InvalidReference(f"{text!r} is not a valid image reference.")
        if _ANCHORED_ID.fullmatch(text):
            raise InvalidReference(
                f"{text!r} looks like an image ID, not a reference.",
                hint="Give a repository name, e.g. ubuntu@sha256:<digest>.",
            )
        rest, at, digest = text.partition("@")
        if at:
            check_digest(digest)
        # A ':' after the last '/' starts a tag; before the first '/' it is a port.
        tag: str | None = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.fullmatch(tag):
                raise InvalidReference(f"{text!r} has an invalid tag {tag!r}.")
        registry, path = _split_registry(rest, text)
        if not _PATH_RE.fullmatch(path):
            raise InvalidReference(
                f"{text!r} is not a valid image reference "
                "(repository names are lowercase letters, digits and separators).",
            )
        if len(path) > 255:
            raise InvalidReference(f"{text!r}: the repository name is longer than 255 characters.")
        if registry in _HUB_ALIASES:
            registry = DOCKER_HUB
            if "/" not in path:
                path = f"library/{path}"
        if at:
            tag = None
        elif tag is None:
            tag = DEFAULT_TAG
        return cls(registry=registry, repository=path, tag=tag, digest=digest or None)

    @property
    def api_host(self) -> str:
        """The ``host[:port]`` to which registry API requests go."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What to put after ``/manifests/``: the digest if there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> ImageRef:
        """The same repository pinned to ``digest`` (no tag)."""
        return ImageRef(self.registry, self.repository, None, check_digest(digest))

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _split_registry(name: str, text: str) -> tuple[str, str]:
    first, slash, remainder = name.partition("/")
    if not slash:
        return DOCKER_HUB, name
    # distribution/reference normalize.go splitDockerDomain: the first component is a
    # registry when it has a '.' or ':', is 'localhost', or has an uppercase letter.
    if first == "localhost" or "." in first or ":" in first or first != first.lower():
        if not _HOST_RE.fullmatch(first):
            raise InvalidReference(f"{text!r} has an invalid registry host {first!r}.")
        return first, remainder
    return DOCKER_HUB, name

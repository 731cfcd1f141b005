"""Registry credentials: explicit ones, ``~/.docker/config.json`` and credential helpers.

Follows the Docker CLI's rules (``cli/config/configfile``) as summarised in the reference doc
section 2.4: ``auths`` entries keyed by ``host[:port]`` (older files use URLs), ``credHelpers``
per registry, ``credsStore`` as the default helper, and ``docker-credential-<name> get``
programs speaking JSON on stdin/stdout. Running helper programs is the one reason this module
starts processes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyops import limits
from pyops.errors import AuthError, InvalidInput, LimitExceeded
from pyops.oci.reference import DOCKER_HUB

log = logging.getLogger(__name__)

HUB_CONFIG_KEY = "https://index.docker.io/v1/"
"""The key under which Docker stores Docker Hub credentials."""

_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_HELPER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """A secret for one registry: a user and password, or a token."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    """An OAuth2 refresh token (``identitytoken``, or a helper answering user ``<token>``)."""
    registry_token: str = field(default="", repr=False)
    """A ready bearer token to send as is (``registrytoken``)."""

    @property
    def basic(self) -> tuple[str, str] | None:
        """``(user, password)`` when these are Basic credentials."""
        return (self.username, self.password) if self.username and self.password else None


def _normalise_key(key: str) -> str:
    """``https://host:port/v1/`` and ``host:port`` become ``host:port``; Hub is docker.io."""
    text = key.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].lower()
    return DOCKER_HUB if text in _HUB_HOSTS else text


def _server_url(registry: str) -> str:
    return HUB_CONFIG_KEY if _normalise_key(registry) == DOCKER_HUB else registry


def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    environ = os.environ if env is None else env
    base = environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _decode_auth(value: str, source: Path) -> tuple[str, str]:
    try:
        text = base64.b64decode(value, validate=False).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{source}: an 'auth' entry is not valid base64.") from exc
    # Split at the first ':' only: passwords may contain colons.
    user, sep, password = text.partition(":")
    if not sep:
        raise InvalidInput(f"{source}: an 'auth' entry is not base64 of user:password.")
    return user, password


def _text(entry: Mapping[str, Any], key: str, source: Path) -> str:
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{source}: an {key!r} entry is not a string.")
    return value


def _from_entry(entry: Mapping[str, Any], source: Path) -> Credentials | None:
    registry_token = _text(entry, "registrytoken", source)
    identity_token = _text(entry, "identitytoken", source)
    auth = _text(entry, "auth", source)
    username = _text(entry, "username", source)
    password = _text(entry, "password", source)
    if registry_token:
        return Credentials(registry_token=registry_token)
    if identity_token:
        return Credentials(username=username, identity_token=identity_token)
    if auth:
        user, secret = _decode_auth(auth, source)
        return Credentials(user, secret)
    if username and password:
        return Credentials(username, password)
    return None


def _read_json(data: bytes, subject: str) -> Any:
    """Parse JSON from a file or a helper within the JSON limits; ValueError if it is not."""
    return limits.parse_json(data, subject)


def run_credential_helper(helper: str, registry: str) -> Credentials | None:
    """Ask ``docker-credential-<helper> get`` for the credentials of ``registry``.

    A missing program or a non-zero exit ("credentials not found") means no credentials; a
    missing program is logged as a warning, since Desktop-only helpers are often absent.
    """
    program = f"docker-credential-{helper}"
    if not helper or "/" in helper or "\\" in helper or not helper.isprintable():
        raise AuthError(f"the credential helper name {helper[:60]!r} is not a program name.")
    server = _server_url(registry)
    try:
        result = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        log.warning(
            "credential helper %s is configured for %s but is not installed; going on without "
            "credentials",
            program,
            registry,
        )
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthError(f"credential helper {program} failed for {registry}: {exc}") from exc
    if result.returncode != 0:
        log.debug("%s get %s: exit %d", program, server, result.returncode)
        return None
    try:
        answer = _read_json(result.stdout, f"the answer of credential helper {program}")
        username, secret = answer["Username"], answer["Secret"]
    except LimitExceeded:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthError(f"credential helper {program} gave an answer that is not JSON.") from exc
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthError(f"credential helper {program} gave a user name or secret that is not text.")
    if username == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(username, secret)


def load_docker_credentials(
    registry: str, *, config_path: Path | None = None, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """Credentials for ``registry`` from a Docker ``config.json``, or ``None``.

    ``registry`` is ``host[:port]`` as in an :class:`~pyops.oci.reference.ImageRef` (``docker.io``
    for Docker Hub). Lookup order as in the Docker CLI: ``credHelpers[registry]``, then an
    ``auths`` entry with a secret, then ``credsStore``.
    """
    path = config_path or docker_config_path(env)
    try:
        with path.open("rb") as file:
            data = file.read(limits.JSON_BYTES.value() + 1)
        doc = _read_json(data, f"the Docker config {path}")
    except FileNotFoundError:
        return None
    except LimitExceeded:
        raise
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the Docker config {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput(f"the Docker config {path} is not a JSON object.")
    wanted = _normalise_key(registry)

    helpers = doc.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if _normalise_key(key) == wanted and isinstance(helper, str) and helper:
                return run_credential_helper(helper, registry)

    auths = doc.get("auths") or {}
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if _normalise_key(key) == wanted and isinstance(entry, dict):
                found = _from_entry(entry, path)
                if found is not None:
                    return found

    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        return run_credential_helper(store, registry)
    return None

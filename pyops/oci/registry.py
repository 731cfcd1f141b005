"""A daemonless client for the OCI distribution API: auth challenges, manifests and blobs.

References: OCI distribution-spec ``spec.md`` (pull endpoints, error codes, redirects) and
``content-negotiation.md``; distribution ``docs/spec/auth/token.md`` (the bearer challenge)
and ``oauth.md``; RFC 7235 (``WWW-Authenticate`` syntax). The reference doc sections 2-4
record how registry 2.8.2 actually answers.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from pyops import limits
from pyops.errors import (
    AuthError,
    DigestMismatch,
    LimitExceeded,
    ManifestNotFound,
    NetworkError,
    RegistryError,
)
from pyops.oci.auth import Credentials
from pyops.oci.net import HttpClient, HttpResponse, RangedStream, origin, redact, retry_after
from pyops.oci.reference import is_loopback_host
from pyops.oci.schema import MANIFEST_ACCEPT
from pyops.oci.store import Cancel

log = logging.getLogger(__name__)

_LOGIN_HINT = "Give credentials with --username and --password-stdin, or log in with docker login."
_MANIFEST_ATTEMPTS = 3
"""Tries of a manifest whose body is cut (its request's own retries aside)."""
_ERROR_BODY_LIMIT = 4096
"""Bytes of an error answer read for its message; the rest is never read."""
_TOKEN_LIFETIME_MAX = 24 * 3600.0
_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: a scheme and its parameters."""

    scheme: str
    params: Mapping[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge:
        """Parse ``Bearer realm="...",service="...",scope="a:b:pull,push"``.

        Values are quoted strings that may contain commas, so the header is tokenised rather
        than split on ``,`` (reference doc section 2.1). Only the first challenge is used.
        """
        scheme, _, rest = header.strip().partition(" ")
        params: dict[str, str] = {}
        position = 0
        while position < len(rest):
            match = _CHALLENGE_PARAM.match(rest, position)
            if not match or match.end() == position:
                break
            quoted, bare = match.group(2), match.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
            params[match.group(1).lower()] = value
            position = match.end()
        return cls(scheme.lower(), params)


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """Manifest bytes exactly as received, with their media type and computed digest."""

    data: bytes
    media_type: str
    digest: str


@dataclass
class _Token:
    value: str
    expires_at: float  # time.monotonic() value


# A blob download is a ranged download of the blob's URL (pyops.oci.store.BlobStream).
RegistryBlobStream = RangedStream


class RegistryClient:
    """Talks to one registry: handles its auth challenge, fetches manifests and opens blobs.

    ``host`` is the API ``host[:port]``. Loopback registries are reached over plain HTTP;
    others over HTTPS unless ``insecure`` is set. Credentials are sent only to this host (and,
    for bearer auth, to the token realm it names), never to a redirect target on another origin.
    Instances may be shared by download threads.
    """

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        http: HttpClient | None = None,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self.insecure = insecure
        self.http = http or HttpClient()
        scheme = "http" if insecure or is_loopback_host(host) else "https"
        self.base_url = f"{scheme}://{host}"
        self._lock = threading.Lock()
        self._scheme: str | None = None  # "basic" or "bearer" once challenged
        self._bearer: Challenge | None = None
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self.token_requests = 0
        """How many tokens were fetched (tests use it to check the cache)."""

    # -- auth -------------------------------------------------------------------------------

    def _auth_header(self, scope: str) -> str | None:
        creds = self.credentials
        if self._scheme == "basic" and creds is not None and creds.basic is not None:
            raw = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if self._scheme == "bearer":
            if creds is not None and creds.registry_token:
                return f"Bearer {creds.registry_token}"
            token = self._cached_token(scope)
            if token is not None:
                return f"Bearer {token}"
        return None

    def _token_key(self, scope: str) -> tuple[str, str, tuple[str, ...]] | None:
        if self._bearer is None:
            return None
        params = self._bearer.params
        return (params.get("realm", ""), params.get("service", ""), (scope,))

    def _cached_token(self, scope: str) -> str | None:
        key = self._token_key(scope)
        with self._lock:
            token = self._tokens.get(key) if key else None
            if token is not None and time.monotonic() < token.expires_at:
                return token.value
        return None

    def _fetch_token(self, scope: str, challenge: Challenge, image: str) -> str:
        """Get a bearer token for ``scope`` from the realm of ``challenge`` and cache it."""
        realm = challenge.params.get("realm")
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(
                f"registry {self.host} sent a bearer challenge without a usable realm."
            )
        scopes = sorted({scope, *challenge.params.get("scope", "").split()} - {""})
        creds = self.credentials
        has_secret = creds is not None and (creds.basic is not None or bool(creds.identity_token))
        if has_secret:
            self._check_realm_transport(realm)
        status, body = 404, b""
        if creds is not None and creds.identity_token:
            status, body = self._refresh_token_grant(realm, challenge, scopes, creds, image)
        if status == 404:  # no identity token, or a token server without the OAuth2 flow
            status, body = self._get_token(realm, challenge, scopes, creds, image)
        with self._lock:
            self.token_requests += 1
        if status in (400, 401, 403):
            if has_secret and creds is not None:
                raise AuthError(
                    f"{image}: the token server {urlsplit(realm).netloc} refused the "
                    f"credentials of {creds.username or 'the identity token'!r} "
                    "(wrong user name or password?).",
                    hint=_LOGIN_HINT,
                )
            raise AuthError(
                f"{image}: the token server {urlsplit(realm).netloc} refused an anonymous token.",
                hint=_LOGIN_HINT,
            )
        if status != 200:
            raise RegistryError(
                f"{image}: the token server answered HTTP {status}{_error_detail(body)}."
            )
        value, lifetime = parse_token_answer(body, image)
        # Renew a little before expiry, with a margin smaller than the lifetime: a fixed 10 s
        # margin throws short-lived tokens away unused (reference doc section 2.2).
        margin = min(10.0, lifetime / 2)
        key = (realm, challenge.params.get("service", ""), (scope,))
        with self._lock:
            self._tokens[key] = _Token(value, time.monotonic() + lifetime - margin)
        return value

    def _check_realm_transport(self, realm: str) -> None:
        """Credentials never travel to a token server over plain HTTP off this machine."""
        realm_host = urlsplit(realm).netloc
        if urlsplit(realm).scheme != "https" and not (
            is_loopback_host(realm_host) or self.insecure
        ):
            raise AuthError(
                f"registry {self.host} wants credentials sent to {realm} over plain HTTP; refused.",
                hint="Use --insecure only if you trust that network.",
            )

    def _refresh_token_grant(
        self,
        realm: str,
        challenge: Challenge,
        scopes: list[str],
        creds: Credentials,
        image: str,
    ) -> tuple[int, bytes]:
        """The OAuth2 refresh-token grant (distribution docs/spec/auth/oauth.md); a 404 means
        the token server only speaks the GET flow."""
        form = {
            "grant_type": "refresh_token",
            "refresh_token": creds.identity_token or "",
            "service": challenge.params.get("service", ""),
            "scope": " ".join(scopes),
            "client_id": "pyops",
        }
        with self.http.request("POST", realm, data=form) as response:
            return response.status, _read_token_answer(response, image)

    def _get_token(
        self,
        realm: str,
        challenge: Challenge,
        scopes: list[str],
        creds: Credentials | None,
        image: str,
    ) -> tuple[int, bytes]:
        """The GET flow (distribution docs/spec/auth/token.md), with Basic credentials when
        there are some, anonymous otherwise."""
        query: dict[str, str | list[str]] = {"scope": scopes}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        headers: dict[str, str] = {}
        if creds is not None and creds.basic is not None:
            query["account"] = creds.username
            raw = f"{creds.username}:{creds.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        with self.http.request("GET", realm, headers=headers, params=query) as response:
            return response.status, _read_token_answer(response, image)

    def _request(
        self,
        method: str,
        path: str,
        *,
        repository: str,
        image: str,
        headers: Mapping[str, str] | None = None,
        cancel: Cancel | None = None,
    ) -> HttpResponse:
        """Send a request to the registry, answering one auth challenge if needed.

        Only a challenge from the registry itself is answered: a 401 from a server it
        redirected to is an error, so credentials never go to a realm such a server names.
        """
        scope = f"repository:{repository}:pull"
        url = self.base_url + path
        for attempt in (1, 2):
            sent = dict(headers or {})
            authorization = self._auth_header(scope)
            if authorization is not None:
                sent["Authorization"] = authorization
            response = self.http.request(method, url, headers=sent, cancel=cancel)
            if response.status != 401:
                return response
            if origin(response.url) != origin(url):
                # A redirect target (a CDN, or a stranger's server) is not the registry:
                # its challenge must not get the registry's credentials, nor a token.
                response.close()
                raise AuthError(
                    f"{image}: the registry {self.host} redirected to {redact(response.url)}, "
                    "which asks for credentials; pyops sends credentials only to the registry "
                    "they are for and to the token server it names, so this was refused.",
                )
            header = response.headers.get("WWW-Authenticate", "")
            body = response.read(_ERROR_BODY_LIMIT)
            response.close()
            challenge = Challenge.parse(header)
            if attempt == 2 or (authorization is not None and self._scheme == "basic"):
                raise self._refused(challenge, image, repository, body)
            if challenge.scheme == "basic":
                if self.credentials is None or self.credentials.basic is None:
                    raise AuthError(
                        f"{image}: registry {self.host} requires a user name and password.",
                        hint=_LOGIN_HINT,
                    )
                if not url.startswith("https://") and not is_loopback_host(self.host):
                    log.warning("sending credentials to %s over plain HTTP", self.host)
                self._scheme = "basic"
            elif challenge.scheme == "bearer":
                self._scheme = "bearer"
                self._bearer = challenge
                creds = self.credentials
                if creds is None or not creds.registry_token:
                    self._fetch_token(scope, challenge, image)
            else:
                raise AuthError(
                    f"{image}: registry {self.host} asks for an unsupported authentication "
                    f"scheme {challenge.scheme or '(none)'!r}."
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _refused(self, challenge: Challenge, image: str, repository: str, body: bytes) -> AuthError:
        creds = self.credentials
        has_creds = creds is not None and (
            creds.basic is not None or bool(creds.registry_token or creds.identity_token)
        )
        if challenge.scheme == "basic" or challenge.params.get("error") == "invalid_token":
            if has_creds:
                return AuthError(
                    f"{image}: registry {self.host} refused the credentials "
                    "(wrong user name or password?).",
                    hint=_LOGIN_HINT,
                )
        if has_creds:
            return AuthError(
                f"{image}: access to repository {repository} on {self.host} was denied for "
                f"these credentials{_error_detail(body)}.",
            )
        return AuthError(
            f"{image}: access to repository {repository} on {self.host} was denied: the "
            f"repository is private or does not exist{_error_detail(body)}.",
            hint=_LOGIN_HINT,
        )

    # -- manifests --------------------------------------------------------------------------

    def fetch_manifest(
        self, repository: str, reference: str, *, image: str, size: int | None = None
    ) -> FetchedManifest:
        """GET a manifest or index by tag or digest and check its digest.

        The digest is computed over the exact bytes received; it must equal the requested one
        when pulling by digest, and ``Docker-Content-Digest`` when the registry sends it
        (reference doc section 3.3). ``size`` (from the descriptor naming the manifest) and
        ``Content-Length`` are checked against ``limits.JSON_BYTES`` before anything is read,
        and at most the limit + 1 bytes are ever read.
        """
        limit = limits.JSON_BYTES.value()
        subject = f"{image}: manifest {reference}"
        if size is not None:
            limits.JSON_BYTES.check(size, f"{subject}: its declared size")
        for attempt in range(1, _MANIFEST_ATTEMPTS + 1):
            try:
                data, media_type, header_digest = self._get_manifest(
                    repository, reference, image, subject, limit
                )
                break
            except _CutBody as exc:
                # The body was cut: a manifest is small, so it is fetched again whole.
                if attempt == _MANIFEST_ATTEMPTS:
                    raise exc.error from exc.error.__cause__
                log.info("%s; fetching it again", exc.error)
        else:  # pragma: no cover - the loop either breaks or raises
            raise AssertionError("unreachable")
        limits.JSON_BYTES.check(len(data), subject)
        if size is not None and len(data) != size:
            raise DigestMismatch(
                f"{subject}: the registry sent {len(data):,} bytes, not the {size:,} its "
                "descriptor announces."
            )
        algorithm = reference.partition(":")[0] if ":" in reference else "sha256"
        if algorithm not in ("sha256", "sha512"):
            algorithm = "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        if ":" in reference and digest != reference:
            raise DigestMismatch(
                f"{image}: the registry sent a manifest with digest {digest}, "
                f"not the {reference} asked for."
            )
        if header_digest and header_digest.partition(":")[0] == algorithm:
            if header_digest != digest:
                raise DigestMismatch(
                    f"{image}: the manifest has digest {digest} but the registry says "
                    f"{header_digest[:140]}."
                )
        return FetchedManifest(data, media_type, digest)

    def _get_manifest(
        self, repository: str, reference: str, image: str, subject: str, limit: int
    ) -> tuple[bytes, str, str]:
        """One GET of a manifest: its bytes (at most ``limit`` + 1), type and header digest."""
        response = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            image=image,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        with response:
            if response.status != 200:
                body = response.read(_ERROR_BODY_LIMIT)
                if response.status == 404:
                    raise ManifestNotFound(
                        f"{image}: not found in registry {self.host} (no such repository, "
                        f"tag or digest){_error_detail(body)}.",
                    )
                raise _status_error(response, body, f"{image}: fetching the manifest")
            length = response.content_length
            if length is not None:
                limits.JSON_BYTES.check(length, f"{subject}: its Content-Length")
            try:
                data = response.read(limit)
            except LimitExceeded:
                raise
            except NetworkError as exc:
                raise _CutBody(exc) from exc
            media_type = response.headers.get("Content-Type", "")
            header_digest = response.headers.get("Docker-Content-Digest", "")
        return data, media_type, header_digest

    # -- blobs ------------------------------------------------------------------------------

    def open_blob(
        self,
        repository: str,
        digest: str,
        offset: int = 0,
        *,
        image: str = "",
        size: int | None = None,
        cancel: Cancel | None = None,
    ) -> RegistryBlobStream:
        """Start downloading a blob, from byte ``offset`` on when the server allows it.

        ``Accept-Encoding: identity`` keeps proxies from re-encoding the bytes we hash. A
        ``206`` continues at ``offset``; a ``200`` starts over at 0; a ``416`` (the range
        is past the end) retries from 0. ``size`` (the descriptor's) sets the deadline of the
        download; ``cancel`` stops it.
        """
        label = image or f"{self.host}/{repository}"
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            repository=repository,
            image=label,
            headers=headers,
            cancel=cancel,
        )
        if response.status == 200:
            return RangedStream(response, 0, size, cancel)
        if response.status == 206 and offset:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start == offset:
                rest = None if size is None else max(0, size - offset)
                return RangedStream(response, offset, rest, cancel)
            response.close()
            raise RegistryError(
                f"{label}: the registry answered a range request for {digest} with the wrong range."
            )
        body = response.read(_ERROR_BODY_LIMIT)
        response.close()
        if response.status == 416 and offset:
            return self.open_blob(repository, digest, 0, image=image, size=size, cancel=cancel)
        if response.status == 404:
            raise RegistryError(
                f"{label}: blob {digest} is missing from the registry{_error_detail(body)}."
            )
        raise _status_error(response, body, f"{label}: downloading blob {digest}")


class _CutBody(Exception):
    """A manifest's body broke off; carries the error for the user."""

    def __init__(self, error: NetworkError) -> None:
        super().__init__(str(error))
        self.error = error


def _content_range_start(header: str) -> int | None:
    match = re.match(r"\s*bytes\s+([0-9]{1,19})-[0-9]{1,19}/(?:[0-9]{1,19}|\*)", header)
    return int(match.group(1)) if match else None


def _read_token_answer(response: HttpResponse, image: str) -> bytes:
    """The body of a token server's answer, refused unread when it says it is too large."""
    subject = f"{image}: the token server's answer"
    length = response.content_length
    if length is not None and response.status == 200:
        limits.JSON_BYTES.check(length, f"{subject}: its Content-Length")
    limit = limits.JSON_BYTES.value() if response.status == 200 else _ERROR_BODY_LIMIT
    body = response.read(limit)
    if response.status == 200:
        limits.JSON_BYTES.check(len(body), subject)
    return body


def parse_token_answer(body: bytes, image: str = "image") -> tuple[str, float]:
    """``(token, lifetime in seconds)`` from a token server's JSON answer.

    ``token`` (or ``access_token``) must be a non-empty string; ``expires_in`` is used when
    it is a number from 1 s to a day, else the token spec's default of 60 s.
    """
    try:
        doc = limits.parse_json(body, f"{image}: the token server's answer")
    except LimitExceeded:
        raise
    except ValueError as exc:
        raise RegistryError(f"{image}: the token server sent something that is not JSON.") from exc
    if not isinstance(doc, dict):
        raise RegistryError(f"{image}: the token server's answer is not a JSON object.")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise RegistryError(f"{image}: the token server sent no token.")
    if len(value) > 64 * 1024 or not value.isascii() or not value.isprintable():
        raise RegistryError(f"{image}: the token server sent a token that cannot be a header.")
    lifetime = doc.get("expires_in")
    if (
        not isinstance(lifetime, int | float)
        or isinstance(lifetime, bool)
        or not 1 <= lifetime <= _TOKEN_LIFETIME_MAX
    ):
        lifetime = 60  # the token spec's default
    return value, float(lifetime)


def _error_detail(body: bytes) -> str:
    """``": CODE: message"`` from an OCI error body (distribution-spec "Error Codes")."""
    try:
        doc = limits.parse_json(body[:_ERROR_BODY_LIMIT], "an error answer")
    except (ValueError, LimitExceeded):
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for entry in errors[:5]:
        if not isinstance(entry, dict):
            continue
        code, message = entry.get("code", ""), entry.get("message", "")
        code = code if isinstance(code, str) else ""
        message = message if isinstance(message, str) else ""
        parts.append(f"{code[:60]}: {message[:200]}".strip(": "))
    text = "; ".join(p for p in parts if p)
    return f" ({text})" if text else ""


def _status_error(response: HttpResponse, body: bytes, what: str) -> RegistryError:
    status = response.status
    if status == 429:
        quota = ", ".join(
            f"{name}: {response.headers[name][:40]}"
            for name in ("ratelimit-limit", "ratelimit-remaining")
            if name in response.headers
        )
        wait = retry_after(response.headers)
        later = f"; it asks to wait {wait:,.0f} seconds" if wait is not None else ""
        return RegistryError(
            f"{what}: the registry says too many requests (HTTP 429)"
            f"{' [' + quota + ']' if quota else ''}{later}.",
            hint="Wait, or log in to get a higher pull limit.",
        )
    if status == 403:
        return AuthError(f"{what}: access denied (HTTP 403){_error_detail(body)}.")
    return RegistryError(f"{what}: the registry answered HTTP {status}{_error_detail(body)}.")

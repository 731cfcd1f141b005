"""The one place pyops talks HTTP: a configured ``requests`` session per thread.

Every request has a timeout, a pyops user agent and no ``~/.netrc`` credentials; redirects are
followed here, by hand, so that ``Authorization`` never leaves the origin it was meant for
(OCI distribution-spec: clients MUST NOT forward it across hosts). Bodies are read raw, without
``Content-Encoding`` decoding, because a blob's digest is over the bytes as stored. Transport
failures become :class:`~pyops.errors.NetworkError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from pyops import __version__
from pyops.errors import NetworkError

log = logging.getLogger(__name__)

USER_AGENT = f"pyops/{__version__}"
DEFAULT_TIMEOUT = (15.0, 60.0)
"""Seconds to connect, and seconds to wait for each read."""

_MAX_REDIRECTS = 8
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _NoNetrc(requests.auth.AuthBase):
    """An auth hook that adds nothing.

    Passing it stops ``requests`` from filling ``Authorization`` from ``~/.netrc`` (it does so
    whenever ``auth`` is empty and ``trust_env`` is on), while proxies from the environment
    keep working.
    """

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


_NO_NETRC = _NoNetrc()


def origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of ``url``, with default ports made explicit."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def redact(url: str) -> str:
    """``url`` without its query string, which for signed CDN URLs is a secret."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()


class HttpResponse:
    """A streamed response: status, headers, and the raw body read on demand."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self.url: str = response.url

    def read(self, limit: int) -> bytes:
        """Read the whole body, but at most ``limit + 1`` bytes (so the caller sees excess)."""
        return b"".join(self.iter_raw(limit=limit + 1))

    def iter_raw(self, chunk_size: int = 1 << 16, *, limit: int | None = None) -> Iterator[bytes]:
        """Yield the body as sent (no gzip decoding), stopping after ``limit`` bytes."""
        received = 0
        try:
            for chunk in self._response.raw.stream(chunk_size, decode_content=False):
                if limit is not None and received + len(chunk) > limit:
                    chunk = chunk[: limit - received]
                received += len(chunk)
                if chunk:
                    yield chunk
                if limit is not None and received >= limit:
                    return
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            raise NetworkError(
                f"the connection to {redact(self.url)} broke while reading: {exc}",
                hint="Run the command again; finished downloads are kept and partial ones resume.",
            ) from exc

    def close(self) -> None:
        """Release the connection."""
        self._response.close()

    def __enter__(self) -> HttpResponse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HttpClient:
    """Makes HTTP requests with one ``requests.Session`` per thread.

    ``requests.Session`` is not documented as thread-safe, so parallel downloads each get
    their own (reference doc section 4.6).
    """

    def __init__(
        self,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        user_agent: str = USER_AGENT,
        verify_tls: bool = True,
    ) -> None:
        self.timeout = timeout
        self.user_agent = user_agent
        self.verify_tls = verify_tls
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            session.verify = self.verify_tls
            self._local.session = session
        return session

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | list[str]] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send a request and return the final response of any redirect chain, unread.

        ``Authorization`` is dropped as soon as a redirect leaves the scheme, host and port of
        the first URL, and redirects from HTTPS to plain HTTP are refused.
        """
        sent_headers = dict(headers or {})
        first = origin(url)
        current_params: Mapping[str, Any] | None = params
        for _ in range(_MAX_REDIRECTS + 1):
            log.debug("%s %s", method, redact(url))
            try:
                response = self._session().request(
                    method,
                    url,
                    headers=sent_headers,
                    params=current_params,
                    data=data,
                    auth=_NO_NETRC,
                    timeout=self.timeout,
                    stream=True,
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError as exc:
                raise NetworkError(
                    f"TLS failed with {redact(url)}: {exc}",
                    hint="Check the registry's certificate; --insecure uses plain HTTP instead.",
                ) from exc
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise NetworkError(f"cannot reach {redact(url)}: {exc}") from exc
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or not location:
                return HttpResponse(response)
            response.close()
            target = urljoin(response.url, location)
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                raise NetworkError(
                    f"{redact(url)} redirected to plain HTTP ({redact(target)}); refused."
                )
            if origin(target) != first and "Authorization" in sent_headers:
                log.debug("redirect to another origin: dropping Authorization")
                del sent_headers["Authorization"]
            if response.status_code == 303 or (
                response.status_code in (301, 302) and method not in ("GET", "HEAD")
            ):
                method, data = "GET", None
            url, current_params = target, None
        raise NetworkError(f"too many redirects from {redact(url)}.")

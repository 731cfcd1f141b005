"""The one place pyops talks HTTP: a configured ``requests`` session per thread.

Every request has a timeout, a pyops user agent and no ``~/.netrc`` credentials; redirects are
followed here, by hand, so that ``Authorization`` never leaves the origin it was meant for
(OCI distribution-spec: clients MUST NOT forward it across hosts). Bodies are read raw, without
``Content-Encoding`` decoding, because a blob's digest is over the bytes as stored. Transport
failures become :class:`~pyops.errors.NetworkError`.

Servers are untrusted, so every request has an overall deadline besides the per-read timeout:
``REQUEST_SECONDS`` plus the bytes it is expected to carry at ``MIN_RATE`` (see
:mod:`pyops.limits`), enforced while the body streams. Idempotent requests (GET, HEAD) are
retried with exponential backoff after a connection failure or a 429/500/502/503/504 answer,
waiting what ``Retry-After`` asks up to :data:`RETRY_AFTER_MAX` seconds. The retries are made
here rather than by urllib3's ``Retry``, which drains the body of every answer it retries
(unbounded work for a hostile server) and could not see the deadline or a cancellation. A body
cut mid-way is not retried here: the blob store resumes it with a ``Range`` request.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from pyops import limits
from pyops.errors import LimitExceeded, NetworkError
from pyops.oci.store import Cancel
from pyops.version import __version__

log = logging.getLogger(__name__)

USER_AGENT = f"pyops/{__version__}"
DEFAULT_TIMEOUT = (15.0, 60.0)
"""Seconds to connect, and seconds to wait for each read."""

_MAX_REDIRECTS = 8
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

RETRIES = 5
"""How many times an idempotent request is tried again after a transient failure."""
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Answers that mean "try again later"."""
RETRY_AFTER_MAX = 60.0
"""The longest ``Retry-After`` pyops waits; a server asking for more gets its answer as an
error (naming the wait) instead of a retry."""
_BACKOFF = 0.25
_BACKOFF_MAX = 8.0
_IDEMPOTENT = frozenset({"GET", "HEAD"})


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


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), or None."""
    text = (headers.get("Retry-After") or "").strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(int(text[:12]))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _set_timeout(sock: socket.socket, seconds: float) -> None:
    with contextlib.suppress(OSError):
        sock.settimeout(seconds)


class HttpResponse:
    """A streamed response: status, headers, and the raw body read on demand.

    The body is read under a deadline counted from when the request was sent:
    ``REQUEST_SECONDS`` plus the expected bytes at ``MIN_RATE``.
    """

    def __init__(
        self,
        response: requests.Response,
        *,
        started: float | None = None,
        read_timeout: float = DEFAULT_TIMEOUT[1],
    ) -> None:
        self._response = response
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self.url: str = response.url
        self.started = time.monotonic() if started is None else started
        """``time.monotonic()`` when the request was sent."""
        self._read_timeout = read_timeout

    @property
    def content_length(self) -> int | None:
        """``Content-Length`` when it is a plain number."""
        text = self.headers.get("Content-Length", "").strip()
        return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None

    def deadline(self, expected: int) -> float:
        """When a body of ``expected`` bytes must have arrived (a ``time.monotonic()`` value)."""
        return (
            self.started
            + limits.REQUEST_SECONDS.value()
            + max(0, expected) / limits.MIN_RATE.value()
        )

    def read(self, limit: int) -> bytes:
        """Read the whole body, but at most ``limit + 1`` bytes (so the caller sees excess)."""
        return b"".join(self.iter_raw(limit=limit + 1))

    def _socket(self) -> socket.socket | None:
        connection = getattr(self._response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        return sock if isinstance(sock, socket.socket) else None

    def too_slow(self, expected: int) -> LimitExceeded:
        """The error for a body that did not arrive by :meth:`deadline`."""
        seconds = limits.REQUEST_SECONDS.value()
        rate = limits.MIN_RATE.value()
        total = self.deadline(expected) - self.started
        return LimitExceeded(
            f"{redact(self.url)} was too slow: {expected:,} bytes were not received within "
            f"{total:,.0f} seconds ({seconds:,} s, PYOPS_LIMIT_REQUEST_SECONDS, plus the size "
            f"at {rate:,} bytes a second, PYOPS_LIMIT_MIN_RATE)",
            hint="Run the command again (partial downloads resume); on a slow link, lower "
            "PYOPS_LIMIT_MIN_RATE or raise PYOPS_LIMIT_REQUEST_SECONDS.",
        )

    def iter_raw(
        self,
        chunk_size: int = 1 << 16,
        *,
        limit: int | None = None,
        expected: int | None = None,
        cancel: Cancel | None = None,
    ) -> Iterator[bytes]:
        """Yield the body as sent (no gzip decoding), stopping after ``limit`` bytes.

        ``expected`` (default: ``Content-Length`` or ``limit``, the smaller) sets the
        deadline, which is checked before each read and bounds the socket's wait, so a server
        trickling bytes cannot hold the download forever. ``cancel`` stops the download within
        the read in progress: its hook shuts the socket down, which wakes a blocked read.
        """
        if expected is None:
            length = self.content_length
            expected = min(x for x in (length, limit, 1 << 62) if x is not None)
        deadline = self.deadline(expected)
        raw = self._response.raw
        sock = self._socket()
        read_timeout = self._read_timeout
        monotonic = time.monotonic
        received = 0
        with contextlib.ExitStack() as stack:
            if cancel is not None:
                stack.enter_context(cancel.on_cancel(self.abort))
            if sock is not None:
                stack.callback(_set_timeout, sock, read_timeout)
            while True:
                if cancel is not None:
                    cancel.check()
                remaining = deadline - monotonic()
                if remaining <= 0:
                    raise self.too_slow(expected)
                if sock is not None:
                    sock.settimeout(min(read_timeout, remaining))
                want = chunk_size if limit is None else min(chunk_size, limit - received)
                if want <= 0:
                    return
                try:
                    chunk = raw.read1(want, decode_content=False)
                except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                    if cancel is not None:
                        cancel.check()
                    if monotonic() >= deadline:
                        raise self.too_slow(expected) from exc
                    raise NetworkError(
                        f"the connection to {redact(self.url)} broke while reading: {exc}",
                        hint="Run the command again; finished downloads are kept and partial "
                        "ones resume.",
                    ) from exc
                if not chunk:
                    if cancel is not None:
                        cancel.check()
                    return
                received += len(chunk)
                yield chunk

    def abort(self) -> None:
        """Shut the connection down from any thread; a read blocked on it returns at once."""
        sock = self._socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

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


class HttpStatusError(NetworkError):
    """A server answered a plain download with an unexpected HTTP status."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class RangedStream:
    """A download of a URL from a byte offset; a :class:`pyops.oci.store.BlobStream`."""

    def __init__(
        self,
        response: HttpResponse,
        offset: int,
        expected: int | None,
        cancel: Cancel | None = None,
    ) -> None:
        self._response = response
        self._offset = offset
        self._expected = expected
        self._cancel = cancel

    @property
    def offset(self) -> int:
        """Offset of the first byte the server sends (0 when it ignored ``Range``)."""
        return self._offset

    def chunks(self) -> Iterator[bytes]:
        """The raw bytes from :attr:`offset` on, in chunks of 64 KiB."""
        return self._response.iter_raw(1 << 16, expected=self._expected, cancel=self._cancel)

    def close(self) -> None:
        self._response.close()


class RangedOpener:
    """Opens the download of ``url`` at a byte offset (a :data:`pyops.oci.store.BlobOpener`),
    handing out first the stream already opened (``first``, which told the size), then
    asking anew for each resume. :meth:`close` closes a stream no one took."""

    def __init__(self, http: HttpClient, url: str, first: RangedStream, size: int) -> None:
        self.http, self.url, self.size = http, url, size
        self._waiting = [first]

    def __call__(self, offset: int) -> RangedStream:
        while self._waiting:
            stream = self._waiting.pop()
            if stream.offset in (offset, 0):  # 0: the server ignores ranges; the loop copes
                return stream
            stream.close()
        return open_ranged(self.http, self.url, offset, size=self.size)[0]

    def close(self) -> None:
        for stream in self._waiting:
            stream.close()
        self._waiting.clear()


_CONTENT_RANGE = re.compile(r"\s*bytes\s+([0-9]{1,19})-[0-9]{1,19}/([0-9]{1,19}|\*)\s*")


def open_ranged(
    http: HttpClient,
    url: str,
    offset: int = 0,
    *,
    size: int | None = None,
    cancel: Cancel | None = None,
) -> tuple[RangedStream, int | None]:
    """GET ``url`` from byte ``offset`` on (``Range``), for a resumable download.

    Returns the stream (its offset is 0 when the server ignored the range) and the total
    size when the server says it. A ``416`` starts again from 0; another status than 200 or
    206 is an :class:`HttpStatusError`, and a total that differs from ``size`` (the one
    seen before) a NetworkError, since the file changed under the download.
    """
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    response = http.request("GET", url, headers=headers, cancel=cancel)
    try:
        if response.status == 416 and offset:
            response.close()
            return open_ranged(http, url, 0, size=size, cancel=cancel)
        start, total = 0, response.content_length
        if response.status == 206 and offset:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise NetworkError(f"{redact(url)} answered a range request with the wrong range")
            start = offset
            total = int(match.group(2)) if match.group(2) != "*" else None
            if total is None and size is not None:
                total = size
        elif response.status != 200:
            raise HttpStatusError(
                f"{redact(url)} answered HTTP {response.status}", status=response.status
            )
        if size is not None and total is not None and total != size:
            raise NetworkError(f"{redact(url)} changed size during the download; try again")
    except BaseException:
        response.close()
        raise
    expected = None if total is None else max(0, total - start)
    return RangedStream(response, start, expected, cancel), total


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
        retries: int = RETRIES,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.user_agent = user_agent
        self.verify_tls = verify_tls
        self.retries = retries
        self.sleep = sleep
        """Waits between retries (default: ``time.sleep``, or the cancel's wait)."""
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            session.verify = self.verify_tls
            self._local.session = session
        return session

    def _timeout(self) -> tuple[float, float]:
        # No single wait may outlast a request's own allowance.
        seconds = float(limits.REQUEST_SECONDS.value())
        return min(self.timeout[0], seconds), min(self.timeout[1], seconds)

    def _pause(self, seconds: float, cancel: Cancel | None) -> None:
        if self.sleep is not None:
            self.sleep(seconds)
        elif cancel is not None:
            cancel.wait(seconds)
        else:
            time.sleep(seconds)
        if cancel is not None:
            cancel.check()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | list[str]] | None = None,
        data: Mapping[str, str] | None = None,
        cancel: Cancel | None = None,
    ) -> HttpResponse:
        """Send a request and return the final response of any redirect chain, unread.

        ``Authorization`` is dropped as soon as a redirect leaves the scheme, host and port of
        the first URL, a form is never sent on to another origin, and redirects from HTTPS to
        plain HTTP are refused. GET and HEAD are retried after a connection failure or a
        429/5xx answer (the last answer is returned when the retries run out).
        """
        idempotent = method.upper() in _IDEMPOTENT
        attempts = 1 + (max(0, self.retries) if idempotent else 0)
        for attempt in range(1, attempts + 1):
            if cancel is not None:
                cancel.check()
            delay = min(_BACKOFF_MAX, _BACKOFF * 2 ** (attempt - 1))
            try:
                response = self._follow(method, url, headers, params, data)
            except _Transient as exc:
                if attempt == attempts:
                    raise exc.error from exc.__cause__
                log.info("%s; retrying in %.1f s", exc.error, delay)
                self._pause(delay, cancel)
                continue
            if response.status not in RETRY_STATUSES or attempt == attempts:
                return response
            asked = retry_after(response.headers)
            if asked is not None and asked > RETRY_AFTER_MAX:
                log.info("%s asks to retry after %.0f s; giving up", redact(url), asked)
                return response
            response.close()
            wait = delay if asked is None else asked
            log.info("%s answered HTTP %d; retrying in %.1f s", redact(url), response.status, wait)
            self._pause(wait, cancel)
        raise AssertionError("unreachable")  # pragma: no cover

    def _follow(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str | list[str]] | None,
        data: Mapping[str, str] | None,
    ) -> HttpResponse:
        sent_headers = dict(headers or {})
        first = origin(url)
        current_params: Mapping[str, Any] | None = params
        timeout = self._timeout()
        for _ in range(_MAX_REDIRECTS + 1):
            log.debug("%s %s", method, redact(url))
            started = time.monotonic()
            try:
                response = self._session().request(
                    method,
                    url,
                    headers=sent_headers,
                    params=current_params,
                    data=data,
                    auth=_NO_NETRC,
                    timeout=timeout,
                    stream=True,
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError as exc:
                raise NetworkError(
                    f"TLS failed with {redact(url)}: {exc}",
                    hint="Check the registry's certificate; --insecure uses plain HTTP instead.",
                ) from exc
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                error = NetworkError(f"cannot reach {redact(url)}: {exc}")
                if _unresolvable(exc):
                    # A name that does not resolve (offline, a typo) does not come back in
                    # seconds: say so at once instead of retrying.
                    error.hint = "check the host name, and that this machine is online"
                    raise error from exc
                raise _Transient(error) from exc
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or not location:
                return HttpResponse(response, started=started, read_timeout=timeout[1])
            response.close()
            target = urljoin(response.url, location)
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                raise NetworkError(
                    f"{redact(url)} redirected to plain HTTP ({redact(target)}); refused."
                )
            if origin(target) != first:
                if "Authorization" in sent_headers:
                    log.debug("redirect to another origin: dropping Authorization")
                    del sent_headers["Authorization"]
                if data is not None and not (
                    response.status_code == 303
                    or (response.status_code in (301, 302) and method not in ("GET", "HEAD"))
                ):
                    raise NetworkError(
                        f"{redact(url)} redirected a form to another server "
                        f"({redact(target)}); refused, it may hold a secret."
                    )
            if response.status_code == 303 or (
                response.status_code in (301, 302) and method not in ("GET", "HEAD")
            ):
                method, data = "GET", None
            url, current_params = target, None
        raise NetworkError(f"too many redirects from {redact(url)}.")


def _unresolvable(exc: BaseException) -> bool:
    """Whether a connection failed because the host name did not resolve."""
    current: BaseException | None = exc
    for _ in range(10):  # requests wraps urllib3's error, which wraps the socket's
        if current is None:
            return False
        if isinstance(current, urllib3.exceptions.NameResolutionError | socket.gaierror):
            return True
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            current = reason
        elif current.args and isinstance(current.args[0], BaseException):
            current = current.args[0]
        else:
            current = current.__cause__ or current.__context__
    return False


class _Transient(Exception):
    """A connection failure that a retry may cure; carries the error for the user."""

    def __init__(self, error: NetworkError) -> None:
        super().__init__(str(error))
        self.error = error

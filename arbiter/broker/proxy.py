"""The passthrough: one request to a backend, its answer relayed as it arrives.

Bodies and content types go through untouched; hop-by-hop headers, the caller's
Arbiter credentials and cookies do not. A response is relayed by an async generator
(Django flushes those chunk by chunk, a sync one would be buffered whole) with
`X-Accel-Buffering: no`, so a front proxy does not buffer it either. When the client
hangs up, Django cancels the generator: its `finally` closes the upstream response,
which closes the connection, which is how the backend learns to stop generating.
Small answers with a Content-Length are read whole (as sent: still compressed if the
backend compressed them) and sent with their length.

Requests go straight to the transport, not through an `httpx.AsyncClient`: a client
would add headers of its own (`Accept-Encoding: gzip`, `User-Agent: python-httpx`),
keep the backends' cookies and send them on every later caller's requests, and cost
about 0.2 ms per request besides. Plain-HTTP backends are reached through
`upstream.LeanTransport`, not httpcore: the broker's latency budget is a couple of
milliseconds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from django.conf import settings

from arbiter.broker.errors import (
    BackendUnavailable,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
)
from arbiter.broker.upstream import LeanTransport

log = logging.getLogger(__name__)

# httpcore imports the optional `sniffio` each time it makes a lock; since anyio 4.11
# no longer installs it, each of those is a failed import, i.e. a scan of sys.path:
# about 0.3 ms per request through httpcore here (encode/httpcore#1103) — today only
# requests to https backends, the rest go through LeanTransport. Record its absence
# once so the import fails at once. Nothing changes when sniffio is installed.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded upstream: the Arbiter credential and session are not the backend's
# business, and httpx computes Host and Content-Length itself.
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "authorization", "cookie"}
# Not copied from the backend's answer: the server sets its own.
NOT_RETURNED = HOP_BY_HOP | {"content-length", "date", "server"}
BUFFER_LIMIT = 1024 * 1024  # answers up to this size (with a Content-Length) are read whole
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 600.0
DEFAULT_ROUTE_TIMEOUTS = {"/v1/embeddings": 120.0, "/v1/models": 30.0}
# Below the 5 s idle timeout of uvicorn (vLLM) and the simulator, so a pooled
# connection is not reused just as the backend closes it.
KEEPALIVE_SECONDS = 2.0


def read_timeout(path: str) -> float:
    """Seconds the backend may stay silent on `path` (per-route, else the default)."""
    routes = {
        **DEFAULT_ROUTE_TIMEOUTS,
        **getattr(settings, "ARBITER_BROKER_ROUTE_TIMEOUTS", {}),
    }
    for prefix, seconds in sorted(routes.items(), key=lambda item: -len(item[0])):
        if path.startswith(prefix):
            return float(seconds)
    return float(getattr(settings, "ARBITER_BROKER_READ_TIMEOUT", DEFAULT_READ_TIMEOUT))


def connect_timeout() -> float:
    return float(getattr(settings, "ARBITER_BROKER_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT))


def forwarded_headers(headers: Iterable[tuple[str, str]], client_ip: str) -> list[tuple[str, str]]:
    """The request headers a backend gets: end-to-end ones, plus X-Forwarded-For."""
    items = list(headers)
    named_in_connection = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    out = [
        (name, value)
        for name, value in items
        if name.lower() not in NOT_FORWARDED and name.lower() not in named_in_connection
    ]
    prior = [value for name, value in out if name.lower() == "x-forwarded-for"]
    out = [(n, v) for n, v in out if n.lower() != "x-forwarded-for"]
    if client_ip:
        out.append(("X-Forwarded-For", ", ".join([*prior, client_ip])))
    return out


def returned_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The backend's response headers a client gets."""
    named_in_connection = {
        token.strip().lower() for token in headers.get("connection", "").split(",") if token
    }
    return [
        (name, value)
        for name, value in headers.multi_items()
        if name.lower() not in NOT_RETURNED and name.lower() not in named_in_connection
    ]


def new_transport() -> LeanTransport:
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=128, keepalive_expiry=KEEPALIVE_SECONDS
    )
    # Backends sit on the LAN; an HTTP(S)_PROXY from the environment must not apply.
    fallback = httpx.AsyncHTTPTransport(trust_env=False, limits=limits)
    return LeanTransport(limits, fallback)


def new_client(transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    """A client for the broker's own calls to backends (load and unload routes); it
    keeps no cookies."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        transport=transport,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


# Parsed backend URLs by their text: httpx parses a URL given as text on every request
# (about 25 µs, the broker's largest single cost after the server's), and the broker
# sends the same few URLs again and again. Bounded: query strings vary.
_PARSED_URLS: dict[str, httpx.URL] = {}
MAX_PARSED_URLS = 1024


def parsed_url(url: str) -> httpx.URL:
    """`httpx.URL(url)`, remembered (it raises `httpx.InvalidURL` as that does)."""
    parsed = _PARSED_URLS.get(url)
    if parsed is None:
        parsed = httpx.URL(url)
        if len(_PARSED_URLS) >= MAX_PARSED_URLS:
            _PARSED_URLS.clear()
        _PARSED_URLS[url] = parsed
    return parsed


async def open_upstream(
    transport: httpx.AsyncBaseTransport,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    service: str,
    read_timeout_s: float,
) -> httpx.Response:
    """Send the request as the caller made it (see the module docstring); return the
    response with its body still to be read."""
    timeout = httpx.Timeout(connect_timeout(), read=read_timeout_s, write=read_timeout_s)
    try:
        request = httpx.Request(
            method,
            parsed_url(url),
            headers=headers,
            content=body,
            extensions={"timeout": timeout.as_dict()},
        )
    except httpx.InvalidURL as exc:  # e.g. a control character in the query string
        raise InvalidRequest(
            f"The request URL cannot be forwarded: {exc}", code="invalid_url", param="url"
        ) from exc
    try:
        response = await transport.handle_async_request(request)
        response.request = request
        return response
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        # The probe may not have noticed yet; answer as if it had.
        raise BackendUnavailable(
            f"The backend {service} did not accept the connection: {type(exc).__name__}.",
            code="connect_failed",
            retry_after=float(getattr(settings, "ARBITER_PROBE_INTERVAL", 5.0)),
            service=service,
            since=None,
        ) from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(
            f"The backend {service} sent no answer within {read_timeout_s:g} s.",
            code="upstream_timeout",
            service=service,
        ) from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(
            f"The backend {service} failed: {type(exc).__name__}.",
            code="upstream_error",
            service=service,
        ) from exc


def buffered(response: httpx.Response) -> bool:
    """Whether the answer is small and sized, so reading it whole costs nothing."""
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT


@dataclass
class RelayOutcome:
    """How a relayed answer ended, for metrics and accounting."""

    complete: bool
    bytes: int
    seconds: float


class Relay:
    """Owns one open upstream response until it is closed, whatever the client does."""

    def __init__(self, response: httpx.Response, on_close: Callable[[RelayOutcome], None]) -> None:
        self.response = response
        self.on_close = on_close
        self.started = time.perf_counter()
        self.sent = 0
        self.complete = False
        self.closed = False
        # Sees every chunk before it goes out (a key's token quota reads them); None on
        # the lean path.
        self.on_chunk: Callable[[bytes], None] | None = None

    async def read_all(self) -> bytes:
        """The whole body as the backend sent it (not decompressed: its
        Content-Encoding is relayed with it)."""
        try:
            body = b"".join([chunk async for chunk in self.response.aiter_raw()])
            self.sent, self.complete = len(body), True
            if self.on_chunk is not None:
                self.on_chunk(body)
            return body
        finally:
            await self.aclose()

    def stream(self) -> AsyncIterator[bytes]:
        chunks = self._chunks()
        # If the client leaves before Django starts the generator, its `finally` never
        # runs: close the upstream when the generator is collected instead.
        weakref.finalize(chunks, _close_later, self, asyncio.get_running_loop())
        return chunks

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_raw():
                self.sent += len(chunk)
                if self.on_chunk is not None:
                    self.on_chunk(chunk)
                yield chunk
            self.complete = True
        except httpx.HTTPError as exc:
            # The status line is out; all that is left is to end the body early.
            log.warning("upstream stream broke after %d bytes: %r", self.sent, exc)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.response.aclose()
        finally:
            self.on_close(
                RelayOutcome(self.complete, self.sent, time.perf_counter() - self.started)
            )


def _close_later(relay: Relay, loop: asyncio.AbstractEventLoop) -> None:
    if relay.closed or loop.is_closed():
        return
    loop.call_soon_threadsafe(lambda: loop.create_task(relay.aclose()))

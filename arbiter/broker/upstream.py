"""The broker's HTTP/1.1 client transport to its backends.

httpx's own transport (httpcore and h11 over anyio) cost about 0.5 ms more per small
proxied request than this one (through daphne on the 2-core reference machine; about
a quarter of what the broker added), for what to a backend on the LAN is one write
and one or two reads. Plain-HTTP requests with an in-memory body (every request the
broker makes) go through `LeanTransport`: HTTP/1.1 keep-alive on an asyncio protocol,
framing as in RFC 9112 section 6, headers checked against h11's grammar. Anything
else (https, a streamed upload) keeps httpx's transport. Errors are the httpx
exceptions httpcore raises in the same cases, so callers see no difference
(tests/broker/test_lean_transport.py holds both transports to the same answers).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import httpx

HEAD_LIMIT = 16 * 1024  # h11's limit on a response head (and on a chunk-size line)
READ_HIGH_WATER = 256 * 1024  # stop reading from the socket past this many unread bytes
# The grammar as h11 checks it (h11._abnf), so what httpx refused is still refused.
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to a backend: received bytes, and a waiter woken on news."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False  # the backend closed its side (or the connection is gone)
        self.error: Exception | None = None  # why the connection was lost, if it broke
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # set while writes are paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()  # a slow client must slow the backend down
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def write(self, data: bytes, timeout: float | None) -> None:
        if self.ended or self.transport is None or self.transport.is_closing():
            raise httpx.WriteError("The backend closed the connection.")
        self.transport.write(data)
        if self._writable is not None:  # the socket buffer is full: wait as drain() would
            try:
                async with asyncio.timeout(timeout):
                    await self._writable
            except TimeoutError:
                raise httpx.WriteTimeout("Timed out sending the request.") from None
            if self.error is not None:
                raise httpx.WriteError(str(self.error))

    def cut_short(self) -> httpx.TransportError:
        """What a read that needs more bytes from an ended connection raises."""
        if self.error is not None:
            return httpx.ReadError(str(self.error))
        return httpx.RemoteProtocolError("The backend closed the connection mid-response.")

    async def receive(self, timeout: float | None) -> None:
        """Wait until more bytes arrive or the backend closes, for `timeout` seconds."""
        if self.ended:
            raise self.cut_short()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout("Timed out waiting for the backend.") from None
        finally:
            self._waiter = None

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        if self.transport is not None and not self.transport.is_reading():
            if len(self.buffer) <= READ_HIGH_WATER // 2 and not self.transport.is_closing():
                self.transport.resume_reading()
        return data

    async def line(self, timeout: float | None) -> bytes:
        """One CRLF-terminated line (chunked framing), without the CRLF."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > HEAD_LIMIT:
                raise httpx.RemoteProtocolError("A chunk header line is too long.")
            await self.receive(timeout)
        return self.take(end + 2)[:-2]


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives; the connection goes back to the pool when it was
    read to the end, and is closed otherwise (which tells the backend to stop)."""

    def __init__(
        self,
        pool: LeanTransport,
        key: tuple,
        conn: _Connection,
        framing: int | str,
        timeout: float | None,
        reusable: bool,
    ) -> None:
        self.pool, self.key, self.conn, self.framing = pool, key, conn, framing
        self.timeout = timeout
        self.reusable = reusable
        self.complete = framing == 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.complete:
            return
        if self.framing == "chunked":
            parts = self._chunked()
        elif self.framing == "close":
            parts = self._until_close()
        else:
            parts = self._sized(int(self.framing))
        async for part in parts:
            yield part
        self.complete = True

    async def _sized(self, remaining: int) -> AsyncIterator[bytes]:
        conn = self.conn
        while remaining:
            if not conn.buffer:
                await conn.receive(self.timeout)
                continue
            part = conn.take(remaining)
            remaining -= len(part)
            yield part

    async def _chunked(self) -> AsyncIterator[bytes]:
        """The chunks' data. Whole chunks that arrived together go out as one piece, as
        nginx relays what it has read in one write: each piece costs the relay, Django
        and the server a round of their own (a 64-event SSE stream that arrives in one
        read is one piece, not 64). Nothing waits for more: a piece goes out before
        any read that would have to wait for the backend."""
        conn = self.conn
        ready: list[bytes] = []
        try:
            while True:
                if ready and conn.buffer.find(b"\r\n") < 0:
                    yield b"".join(ready)
                    ready.clear()
                size_field = (await conn.line(self.timeout)).split(b";", 1)[0].strip()
                if not size_field or any(c not in b"0123456789abcdefABCDEF" for c in size_field):
                    raise httpx.RemoteProtocolError("Malformed chunk size.")
                size = int(size_field, 16)
                if size == 0:
                    if ready:
                        yield b"".join(ready)
                        ready.clear()
                    while await conn.line(self.timeout):  # trailer fields, dropped
                        pass
                    return
                if len(conn.buffer) >= size + 2:  # the whole chunk is here
                    data = conn.take(size + 2)
                    if data[-2:] != b"\r\n":
                        raise httpx.RemoteProtocolError("Missing CRLF after a chunk.")
                    ready.append(data[:-2])
                    continue
                if ready:
                    yield b"".join(ready)
                    ready.clear()
                async for part in self._sized(size):
                    yield part
                if await conn.line(self.timeout) != b"":
                    raise httpx.RemoteProtocolError("Missing CRLF after a chunk.")
        except httpx.TransportError:
            if ready:  # what arrived whole before the break still goes out, as before
                yield b"".join(ready)
            raise

    async def _until_close(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while conn.buffer or not conn.ended:
            if conn.buffer:
                yield conn.take(len(conn.buffer))
            else:
                await conn.receive(self.timeout)
        if conn.error is not None:  # a reset is not the end of the body
            raise conn.cut_short()

    async def aclose(self) -> None:
        if self.complete and self.reusable and not self.conn.buffer and not self.conn.ended:
            self.pool.release(self.key, self.conn)
        else:
            self.conn.close()


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to plain-HTTP backends, with keep-alive; other requests to `fallback`."""

    def __init__(self, limits: httpx.Limits, fallback: httpx.AsyncBaseTransport) -> None:
        self.max_idle = limits.max_keepalive_connections
        self.keepalive = limits.keepalive_expiry
        self.fallback = fallback
        self.idle: dict[tuple, list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http" or not isinstance(request.stream, httpx.ByteStream):
            return await self.fallback.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        head = _request_head(request)  # validate before taking a connection
        key = (request.url.raw_host, request.url.port or 80)
        conn = self.acquire(key) or await self.connect(key, timeouts.get("connect"))
        try:
            await conn.write(head + request.content, timeouts.get("write"))
            return await self.read_response(request, key, conn, timeouts.get("read"))
        except BaseException:
            conn.close()
            raise

    async def read_response(
        self, request: httpx.Request, key: tuple, conn: _Connection, timeout: float | None
    ) -> httpx.Response:
        while True:
            while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
                if len(conn.buffer) > HEAD_LIMIT:
                    raise httpx.RemoteProtocolError("The response head is too large.")
                if conn.ended and conn.error is None:
                    raise httpx.RemoteProtocolError("The backend closed without answering.")
                await conn.receive(timeout)
            version, status, reason, headers = _parse_head(conn.take(end + 4)[:-4])
            if not 100 <= status < 200 or status == 101:
                break  # 1xx (100 Continue) are interim: the answer follows
        tokens = {
            token.strip().lower()
            for name, value in headers
            if name.lower() == b"connection"
            for token in value.split(b",")
        }
        reusable = version == b"1" and b"close" not in tokens
        reusable = reusable and "close" not in request.headers.get("connection", "").lower()
        framing = _framing(request.method, status, headers)
        reusable = reusable and framing != "close" and status != 101
        body = _Body(self, key, conn, framing, timeout, reusable)
        extensions = {"http_version": b"HTTP/1." + version, "reason_phrase": reason}
        return httpx.Response(status, headers=headers, stream=body, extensions=extensions)

    def acquire(self, key: tuple) -> _Connection | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            # A backend that closed an idle connection, or wrote to it, has ended it.
            expired = (
                self.keepalive is not None and time.monotonic() - conn.idle_since >= self.keepalive
            )
            if not expired and not (
                conn.ended or conn.buffer or conn.transport is None or conn.transport.is_closing()
            ):
                return conn
            conn.close()
        return None

    def release(self, key: tuple, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.setdefault(key, []).append(conn)
        total = sum(len(conns) for conns in self.idle.values())
        if self.max_idle is not None and total > self.max_idle:
            oldest = min(
                (conns for conns in self.idle.values() if conns), key=lambda c: c[0].idle_since
            )
            oldest.pop(0).close()

    async def connect(self, key: tuple, timeout: float | None) -> _Connection:
        host, port = key
        try:
            async with asyncio.timeout(timeout):
                _, conn = await asyncio.get_running_loop().create_connection(
                    _Connection, host.decode("ascii"), port
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("Timed out connecting to the backend.") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        return conn

    async def aclose(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
        await self.fallback.aclose()


def _request_head(request: httpx.Request) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise httpx.LocalProtocolError(f"Illegal header {name!r}.")
        lines.append(b"%s: %s" % (name, value))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse_head(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    status_line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise httpx.RemoteProtocolError(f"Malformed status line {status_line[:100]!r}.")
    unfolded: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and unfolded:  # obsolete line folding, as h11 reads it
            unfolded[-1] += b" " + line.lstrip(b" \t")
        else:
            unfolded.append(line)
    headers = []
    for line in unfolded:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise httpx.RemoteProtocolError(f"Malformed header line {line[:100]!r}.")
        headers.append((name, value))
    return match.group(1), int(match.group(2)), match.group(3) or b"", headers


def _framing(method: str, status: int, headers: list[tuple[bytes, bytes]]) -> str | int:
    """How the body ends: a length, "chunked", or "close" (RFC 9112 section 6.3)."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return 0
    encodings = [v.strip().lower() for n, v in headers if n.lower() == b"transfer-encoding"]
    if encodings:
        if encodings != [b"chunked"]:
            raise httpx.RemoteProtocolError(f"Unsupported Transfer-Encoding {encodings!r}.")
        return "chunked"
    lengths = {
        length.strip()
        for name, value in headers
        if name.lower() == b"content-length"
        for length in value.split(b",")
    }
    if not lengths:
        return "close"
    length = lengths.pop()
    if lengths or not length.isdigit() or len(length) > 20:
        raise httpx.RemoteProtocolError("Malformed Content-Length.")
    return int(length)

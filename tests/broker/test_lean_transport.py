"""The broker's HTTP/1.1 transport (`proxy.LeanTransport`) against scripted backends.

Each scripted backend answers with exact bytes, so the edge cases of HTTP/1.1 framing
are reproducible; where httpx's own transport is the reference, both must agree on
status, headers (as sent, case and order kept), body and the exception raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from arbiter.broker.state import BrokerState
from arbiter.broker.upstream import LeanTransport
from tests.broker.conftest import Answer

LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=8, keepalive_expiry=5.0)


def lean_client(**limits) -> httpx.AsyncClient:
    limits = {**LIMITS.__dict__, **limits}
    transport = LeanTransport(httpx.Limits(**limits), httpx.MockTransport(None))
    return httpx.AsyncClient(transport=transport, trust_env=False)


def httpx_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(limits=LIMITS), trust_env=False)


def close_after(answer: bytes) -> Answer:
    async def write_and_close(reader, writer) -> None:
        writer.write(answer)
        await writer.drain()
        writer.close()

    return write_and_close


async def fetch(client: httpx.AsyncClient, url: str, method: str = "POST", **kw) -> tuple:
    response = await client.request(method, url, content=b'{"x": 1}', **kw)
    return response.status_code, response.headers.raw, response.content


ANSWERS = {
    "sized": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n"
    b'{"a":1}',
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Odd-Case: Yes\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
    "no content": b"HTTP/1.1 204 No Content\r\nX-Id: 1\r\n\r\n",
    "interim 100": b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    "repeated headers": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
    b"X-Spaces:   padded value  \r\nContent-Length: 0\r\n\r\n",
    "empty reason": b"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx",
    "http/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "error status": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
    "folded header": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\n\tagain\r\n"
    b"Content-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(ANSWERS))
async def test_it_answers_as_httpx_does(scripted, name):
    backend = await scripted([ANSWERS[name], ANSWERS[name]])
    async with lean_client() as lean, httpx_client() as reference:
        assert await fetch(lean, backend.url + "/v1/x") == await fetch(reference, backend.url)


async def test_it_reads_a_body_until_close_when_it_has_no_length(scripted):
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    backend = await scripted([close_after(answer), close_after(answer)])
    async with lean_client() as lean, httpx_client() as reference:
        ours = await fetch(lean, backend.url)
        assert ours == await fetch(reference, backend.url)
        assert ours[2] == b"until the end"


async def test_it_sends_the_request_as_httpx_does(scripted):
    backend = await scripted([ANSWERS["sized"]] * 2)
    headers = [("X-Client-Id", "team-a"), ("Content-Type", "application/json")]
    async with lean_client() as lean, httpx_client() as reference:
        await fetch(lean, backend.url + "/v1/chat/completions?a=1&b=%20", headers=headers)
        await fetch(reference, backend.url + "/v1/chat/completions?a=1&b=%20", headers=headers)
    assert backend.requests[0] == backend.requests[1]
    assert backend.requests[0].startswith(b"POST /v1/chat/completions?a=1&b=%20 HTTP/1.1\r\n")


async def test_it_answers_head_without_reading_a_body(scripted):
    backend = await scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", ANSWERS["sized"]])
    async with lean_client() as lean:
        head = await lean.head(backend.url)
        assert (head.status_code, head.content) == (200, b"")
        assert (await lean.get(backend.url)).content == b'{"a":1}'
    assert backend.connections == 1


async def test_it_keeps_the_connection_alive_between_requests(scripted):
    backend = await scripted([ANSWERS["sized"], ANSWERS["chunked"], ANSWERS["no content"]] * 2)
    async with lean_client() as lean:
        for _ in range(6):
            assert (await lean.post(backend.url, content=b"{}")).status_code in (200, 204)
    assert backend.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ANSWERS["http/1.0"],
    ],
    ids=["connection close", "http/1.0"],
)
async def test_it_does_not_reuse_a_connection_the_backend_will_close(scripted, answer):
    backend = await scripted([answer, answer])
    async with lean_client() as lean:
        for _ in range(2):
            assert (await lean.post(backend.url, content=b"{}")).content == b"ok"
    assert backend.connections == 2


async def test_it_opens_a_new_connection_when_the_backend_closed_the_idle_one(scripted):
    backend = await scripted([close_after(ANSWERS["sized"]), ANSWERS["sized"]])
    async with lean_client() as lean:
        assert (await lean.post(backend.url, content=b"{}")).status_code == 200
        await asyncio.sleep(0.05)  # the backend's FIN arrives while the connection idles
        assert (await lean.post(backend.url, content=b"{}")).status_code == 200
    assert backend.connections == 2


async def test_it_does_not_reuse_a_connection_idle_past_the_keepalive_expiry(scripted):
    backend = await scripted([ANSWERS["sized"]] * 2)
    async with lean_client(keepalive_expiry=0.05) as lean:
        await lean.post(backend.url, content=b"{}")
        await asyncio.sleep(0.1)
        await lean.post(backend.url, content=b"{}")
    assert backend.connections == 2


async def test_it_closes_the_connection_of_a_response_closed_early(scripted):
    hung_up = asyncio.Event()

    async def endless(reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await reader.read()  # the rest never comes: until the client hangs up
        hung_up.set()
        writer.close()

    backend = await scripted([endless, ANSWERS["sized"]])
    async with lean_client() as lean:
        async with lean.stream("POST", backend.url, content=b"{}") as response:
            chunks = response.aiter_raw()
            assert await anext(chunks) == b"first"  # before the backend sends any more
        await asyncio.wait_for(hung_up.wait(), 5)  # which is how a backend learns to stop
        assert (await lean.post(backend.url, content=b"{}")).status_code == 200
    assert backend.connections == 2


async def test_it_relays_chunks_that_arrive_together_as_one_piece(scripted):
    events = [b"data: %d\n\n" % i for i in range(64)]
    stream = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + stream
    backend = await scripted([answer])
    async with lean_client() as lean:
        async with lean.stream("POST", backend.url, content=b"{}") as response:
            pieces = [piece async for piece in response.aiter_raw()]
    assert b"".join(pieces) == b"".join(events)
    assert len(pieces) < 4  # one write from the backend: not 64 pieces to relay


async def test_it_relays_chunks_that_arrive_apart_as_separate_pieces(scripted):
    async def slowly(reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"3\r\none\r\n", b"3\r\ntwo\r\n", b"0\r\n\r\n"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        await reader.read()

    backend = await scripted([slowly])
    async with lean_client() as lean:
        async with lean.stream("POST", backend.url, content=b"{}") as response:
            pieces = [piece async for piece in response.aiter_raw()]
    assert pieces == [b"one", b"two"]


async def test_it_still_relays_the_whole_chunks_before_a_malformed_one(scripted):
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\nzz\r\n"
    backend = await scripted([answer])
    received = b""
    async with lean_client() as lean:
        async with lean.stream("POST", backend.url, content=b"{}") as response:
            with pytest.raises(httpx.RemoteProtocolError):
                async for piece in response.aiter_raw():
                    received += piece
    assert received == b"one"


async def test_it_reads_a_large_body_whole(scripted):
    body = bytes(range(256)) * 8192  # 2 MiB, past the read high-water mark
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    backend = await scripted([answer])
    async with lean_client() as lean:
        async with lean.stream("POST", backend.url, content=b"{}") as response:
            received = b""
            async for chunk in response.aiter_raw():
                received += chunk
                await asyncio.sleep(0)  # a slow reader: the socket is paused meanwhile
    assert received == body


async def never_answer(reader, writer) -> None:
    await reader.read()  # until the client gives up and closes


async def close_silently(reader, writer) -> None:
    writer.close()


async def truncated(reader, writer) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    await writer.drain()
    writer.close()


FAILURES = {
    "malformed status line": (b"HTTP/1.1 OK\r\n\r\n", httpx.RemoteProtocolError),
    "malformed header": (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", httpx.RemoteProtocolError),
    "folded first header": (
        b"HTTP/1.1 200 OK\r\n  X-A: 1\r\nContent-Length: 0\r\n\r\n",
        httpx.RemoteProtocolError,
    ),
    "bad content-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        httpx.RemoteProtocolError,
    ),
    "bad chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        httpx.RemoteProtocolError,
    ),
    "unknown transfer-encoding": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        httpx.RemoteProtocolError,
    ),
    "closed without answering": (close_silently, httpx.RemoteProtocolError),
    "truncated body": (truncated, httpx.RemoteProtocolError),
    "read timeout": (never_answer, httpx.ReadTimeout),
}


@pytest.mark.parametrize("name", list(FAILURES))
async def test_it_fails_as_httpx_does(scripted, name):
    answer, expected = FAILURES[name]
    backend = await scripted([answer, answer])
    async with lean_client() as lean, httpx_client() as reference:
        for client in (lean, reference):
            with pytest.raises(expected):
                await client.post(backend.url, content=b"{}", timeout=0.3)


async def test_it_fails_to_connect_as_httpx_does():
    async with lean_client() as lean:
        with pytest.raises(httpx.ConnectError):
            await lean.get("http://127.0.0.1:9/")  # discard: nothing listens here


async def test_it_refuses_a_header_httpx_refuses(scripted):
    backend = await scripted([ANSWERS["sized"]] * 2)
    async with lean_client() as lean, httpx_client() as reference:
        for client in (lean, reference):
            with pytest.raises(httpx.LocalProtocolError):
                await client.post(backend.url, headers={"X-Bad": " leading space"})
    assert backend.requests == []


async def test_it_hands_https_and_streamed_uploads_to_httpx():
    seen: list[str] = []

    def fallback(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"fallback")

    async def upload() -> AsyncIterator[bytes]:
        yield b"audio"

    transport = LeanTransport(LIMITS, httpx.MockTransport(fallback))
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("https://backend.lan/v1/models")).content == b"fallback"
        assert (await client.post("http://backend.lan/up", content=upload())).content == b"fallback"
    assert seen == ["https://backend.lan/v1/models", "http://backend.lan/up"]


async def test_it_carries_the_brokers_requests_and_its_own_calls():
    state = BrokerState()
    try:
        assert isinstance(state.transport, LeanTransport)
        assert state.client._transport is state.transport
    finally:
        await state.aclose()

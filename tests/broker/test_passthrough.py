"""What goes through the broker untouched, and what does not, seen at a scripted backend.

The scripted backend records each request's exact bytes and answers with exact bytes,
so these tests see the headers the broker really sends and the body it really relays.
"""

from __future__ import annotations

import gzip
import json

import pytest
from asgiref.sync import sync_to_async

from tests.broker.conftest import call, catalog_model, chat, register

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "scripted-model"


def sized(body: bytes, *headers: bytes) -> bytes:
    head = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)


def request_headers(raw: bytes) -> dict[bytes, bytes]:
    """A recorded request's headers, names lower-cased (the last of each name)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }


@pytest.fixture
async def backend_at(scripted, transactional_db):
    """Registers a scripted backend as the service of MODEL. (Ask for it before `handler`,
    so the handler closes its connections before the backend stops.)"""

    async def start(answers):
        backend = await scripted(answers)
        await sync_to_async(register)("scripted", backend.url, loaded_model=MODEL)
        return backend

    return start


def caller(raw_key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json", **extra}


BODY = json.dumps(chat(MODEL)).encode()


async def test_it_passes_a_backend_cookie_to_its_caller_and_no_later_caller(
    backend_at, handler, raw_key
):
    backend = await backend_at([sized(b"{}", b"Set-Cookie: sid=alice; Path=/"), sized(b"{}")])

    _, first, _ = await call(
        handler, "POST", "/v1/chat/completions", BODY, caller(raw_key, **{"X-Client-Id": "alice"})
    )
    await call(
        handler, "POST", "/v1/chat/completions", BODY, caller(raw_key, **{"X-Client-Id": "bob"})
    )

    assert first[b"set-cookie"] == b"sid=alice; Path=/"
    assert b"cookie" not in request_headers(backend.requests[1])


async def test_it_sends_the_backend_what_the_caller_sent_and_nothing_of_the_brokers(
    backend_at, handler, raw_key
):
    backend = await backend_at([sized(b"{}")])

    status, _, _ = await call(
        handler,
        "POST",
        "/v1/chat/completions",
        BODY,
        caller(raw_key, **{"User-Agent": "my-app/1.0", "Cookie": "arbiter=secret"}),
    )

    assert status == 200
    sent = request_headers(backend.requests[0])
    assert sent[b"user-agent"] == b"my-app/1.0"
    assert sent[b"x-forwarded-for"] == b"127.0.0.1"
    assert sent[b"content-length"] == str(len(BODY)).encode()
    # No Arbiter credentials, and no headers an HTTP client library would add.
    for name in (b"authorization", b"cookie", b"accept-encoding", b"accept"):
        assert name not in sent, name
    assert backend.requests[0].endswith(BODY)


async def test_it_relays_a_compressed_answer_as_sent_with_its_length(backend_at, handler, raw_key):
    compressed = gzip.compress(b'{"choices": []}')
    backend = await backend_at(
        [sized(compressed, b"Content-Type: application/json", b"Content-Encoding: gzip")]
    )

    status, headers, content = await call(
        handler,
        "POST",
        "/v1/chat/completions",
        BODY,
        caller(raw_key, **{"Accept-Encoding": "gzip"}),
    )

    assert status == 200
    assert content == compressed and gzip.decompress(content) == b'{"choices": []}'
    assert headers[b"content-encoding"] == b"gzip"
    assert headers[b"Content-Length"] == str(len(compressed)).encode()
    assert request_headers(backend.requests[0])[b"accept-encoding"] == b"gzip"


async def test_it_gives_the_brokers_own_answers_their_length(backend_at, handler, raw_key):
    await backend_at([])

    status, headers, content = await call(
        handler,
        "POST",
        "/v1/chat/completions",
        json.dumps(chat("nobody")).encode(),
        caller(raw_key),
    )

    assert status == 404
    assert headers[b"Content-Length"] == str(len(content)).encode()


async def test_it_refuses_a_query_string_that_cannot_be_forwarded_with_400(
    backend_at, handler, raw_key
):
    backend = await backend_at([sized(b"{}")])

    status, _, content = await call(
        handler, "POST", "/v1/chat/completions", BODY, caller(raw_key), query=b"trace=\x7f"
    )

    assert status == 400, content
    error = json.loads(content)["error"]
    assert (error["code"], error["param"]) == ("invalid_url", "url")
    assert backend.requests == []


async def test_it_renames_a_catalog_key_in_a_multipart_form_and_changes_nothing_else(
    backend_at, handler, raw_key
):
    """A transcription naming the catalog key reaches the backend naming the served model;
    every other byte of the form (the audio, the boundary, other fields) is as sent."""
    backend = await backend_at([sized(b'{"text": "hi"}')])
    await sync_to_async(catalog_model)("whisper", MODEL, kind="stt")
    boundary = b"b0undary"
    form = (
        b'--%(b)s\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF\x00\x01--b0\r\n"
        b'--%(b)s\r\nContent-Disposition: form-data; name="model"\r\n\r\n%(model)s\r\n'
        b'--%(b)s\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
        b"--%(b)s--\r\n"
    )
    headers = {
        "Authorization": f"Bearer {raw_key}",
        "Content-Type": "multipart/form-data; boundary=b0undary",
    }

    status, _, content = await call(
        handler,
        "POST",
        "/v1/audio/transcriptions",
        form % {b"b": boundary, b"model": b"whisper"},
        headers,
    )

    assert status == 200, content
    sent = backend.requests[0].split(b"\r\n\r\n", 1)[1]
    assert sent == form % {b"b": boundary, b"model": MODEL.encode()}

"""Request body limits, enforced before Django reads a body.

Django's ASGI handler reads the whole request body before any middleware or view runs,
into a `SpooledTemporaryFile(max_size=FILE_UPLOAD_MAX_MEMORY_SIZE)` that rolls over to
a file on disk past that size (django/core/handlers/asgi.py, `ASGIHandler.read_body`).
Authentication happens later, in the view, so without a limit in front any client could
make the server write a body of any size to disk. `with_body_limit` reads the body
itself, in memory and at most the limit for the path (the broker's
ARBITER_BROKER_MAX_BODY_BYTES on /v1 and /audio, Django's DATA_UPLOAD_MAX_MEMORY_SIZE
elsewhere), answers a larger one with a JSON 413, and hands Django the body it read.
Settings keep FILE_UPLOAD_MAX_MEMORY_SIZE at or above both limits, so Django's copy
stays in memory too.

Past the limit the answer is the shape of the path it was sent to: the broker's
OpenAI-shaped error on broker paths, the API's `{"error": {...}}` everywhere else.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from arbiter.broker.errors import PayloadTooLarge as BrokerPayloadTooLarge
from arbiter.errors import PayloadTooLarge

BROKER_PATH_PREFIXES = ("/v1/", "/audio/")
# Django's own default for DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB).
DEFAULT_API_LIMIT = 2621440
DEFAULT_BROKER_LIMIT = 25 * 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def api_limit() -> int:
    limit = getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", DEFAULT_API_LIMIT)
    return int(limit) if limit is not None else DEFAULT_API_LIMIT


def broker_limit() -> int:
    return int(getattr(settings, "ARBITER_BROKER_MAX_BODY_BYTES", DEFAULT_BROKER_LIMIT))


def is_broker_path(path: str) -> bool:
    return path.startswith(BROKER_PATH_PREFIXES)


def limit_for(path: str) -> int:
    return broker_limit() if is_broker_path(path) else api_limit()


def too_large_body(path: str, limit: int) -> dict[str, Any]:
    """The 413 body in the error shape of the route family `path` belongs to."""
    if is_broker_path(path):
        return BrokerPayloadTooLarge(limit).as_body()
    return PayloadTooLarge(limit).as_body()


def declared_length(scope: Scope) -> int | None:
    """The Content-Length header as a number; None when absent or not plain digits
    (then the bytes actually sent are counted)."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            if value.isdigit() and len(value) <= 18:  # bytes.isdigit(): ASCII digits only
                return int(value)
            return None
    return None


async def send_too_large(send: Send, path: str, limit: int) -> None:
    body = json.dumps(too_large_body(path, limit)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def with_body_limit(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> Any:
    """An ASGI app: HTTP requests whose body fits the path's limit go on to `app` (the
    body read into memory first), larger ones get a 413 without reaching Django."""

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = limit_for(path)
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await send_too_large(send, path, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_too_large(send, path, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            # The body once, as one message; then the connection's own messages (Django
            # listens for `http.disconnect` to cancel a view whose client went away).
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return limited

"""The few API calls the client makes, and the swap's event stream (Server-Sent Events)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from coordination.client.errors import ApiError, Unreachable, describe, error_for

TOKEN_HEADER = "X-Swap-Lock-Token"  # noqa: S105 - a header name, not a secret
HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class SseEvent:
    name: str
    data: str
    id: str | None


def iter_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from text lines (the WHATWG parsing rules, minus `retry`)."""
    name, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield SseEvent(name, "\n".join(data), event_id)
            name, data = "message", []
            continue
        if line.startswith(":"):  # a comment: the server's keepalive
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


class ArbiterApi:
    """The few API calls the client makes; every failure becomes a ClientError."""

    def __init__(
        self, url: str, api_key: str, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "arbiter-swap/1"},
            timeout=HTTP_TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def call(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> httpx.Response:
        headers = {TOKEN_HEADER: token} if token else {}
        try:
            response = self.http.request(method, path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach Arbiter at {self.url}: {describe(exc)}") from None
        if response.status_code >= 400:
            raise error_for(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.call(method, path, **kwargs)
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ApiError(f"not an Arbiter answer from {response.url}", response.status_code)
        return document

    @contextmanager
    def stream(self, swap_id: int, after: int, read_timeout: float) -> Iterator[Iterator[str]]:
        """The swap's event stream from line `after` on (Last-Event-ID), as text lines."""
        timeout = httpx.Timeout(HTTP_TIMEOUT, read=read_timeout)
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        with self.http.stream(
            "GET", f"/api/swap/{swap_id}/stream", headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise error_for(response)
            yield response.iter_lines()


def event_data(event: SseEvent) -> dict[str, Any]:
    try:
        data = json.loads(event.data)
        if isinstance(data, dict) and (event.name != "line" or "seq" in data):
            return data
    except ValueError:
        pass
    raise ApiError(f"malformed {event.name!r} event in the log stream: {event.data[:100]}", 200)

"""Helpers more than one test directory needs: one copy each, imported where used.

Fixtures live in conftest files (tests/conftest.py for those every directory shares);
what is here are plain functions and classes.
"""

import socket
import time

from django.test import AsyncClient


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KeyAsyncClient(AsyncClient):
    """An AsyncClient that sends the API key (and any default headers) on every request.

    (AsyncClient's own `headers=` default does not reach the ASGI scope's
    `request.headers` in Django 5.2.)
    """

    def __init__(self, raw_key: str, **headers: str) -> None:
        super().__init__()
        self.default = {"Authorization": f"Bearer {raw_key}", **headers}

    def generic(self, method, path, data="", content_type="application/octet-stream", **kw):
        kw["headers"] = {**self.default, **(kw.get("headers") or {})}
        return super().generic(method, path, data, content_type, **kw)


class Clock:
    """A clock that stands still until a test moves `now` (the idle unloader's seam)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

"""The webhook tests' receiver: a real stdlib HTTP server in a thread, not a mock.

It records every request (headers, exact body bytes) and answers from a script of
replies: a status, extra headers, a body, or `hang` (read the request, never answer
until the test releases it). The other `test_webhook_*` modules import it from here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from coordination import webhooks
from coordination.models import WebhookEndpoint


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() when the request arrived


class Receiver:
    """Answers POSTs from `script` in order, then `default`; records all of them."""

    def __init__(self, *script: Reply | int, default: Reply | int = 200) -> None:
        self.script = [self._reply(r) for r in script]
        self.default = self._reply(default)
        self.requests: list[Recorded] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                reply = receiver._record(self, body)
                if reply.hang:
                    receiver.release.wait(60)
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @staticmethod
    def _reply(reply: Reply | int) -> Reply:
        return Reply(status=reply) if isinstance(reply, int) else reply

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes) -> Reply:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.requests.append(Recorded(handler.path, headers, body, time.time()))
            return self.script.pop(0) if self.script else self.default

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return list(self.requests)


def make_endpoint(url: str, **fields) -> tuple[WebhookEndpoint, str]:
    """An endpoint through the domain function, as the API creates it."""
    return webhooks.create_endpoint(url, **fields)

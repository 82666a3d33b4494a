"""Broker fixtures: real simulated backends, the database, and a real daphne server.

- `start_backend(...)` starts the simulated inference container (the process the
  simulated docker runs: `arbiter.simulator.container`) on a free port, with the
  token delay a test needs, and waits until it serves.
- `register(...)` puts a host and a service for it in the database, as the inventory
  and the prober would.
- `aclient` calls the broker in-process (Django's AsyncClient) with an API key.
- `broker_server` is daphne serving `arbiter.asgi` in its own process on the test
  database, for what only a real HTTP server shows: chunk timing and client hang-ups.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from arbiter.broker.accounting import accounting
from arbiter.broker.asgi import BrokerASGIHandler
from arbiter.broker.background import close_thread_connections
from arbiter.broker.shared_limits import sync_client
from arbiter.broker.state import reset_state
from arbiter.models import ApiKey, Host, Service
from catalog.models import CatalogModel
from tests.helpers import KeyAsyncClient, free_port
from tests.live_arbiter import BASE_DIR

BACKEND_START_TIMEOUT = 15.0


def container_argv(app_args: list[str]) -> list[str]:
    """`python -m arbiter.simulator.container ARGS` (it listens like uvicorn does)."""
    return [sys.executable, "-m", "arbiter.simulator.container", *app_args]


@dataclass
class Backend:
    """A running simulated inference container."""

    name: str
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counter(self, metric: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        match = re.search(rf"^{metric}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
        assert match, f"{metric} not in /metrics:\n{text}"
        return float(match.group(1))

    def requests(self) -> float:
        return self.counter("sim_requests_total")

    def cancelled(self) -> float:
        return self.counter("sim_cancelled_requests_total")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def spawn_backend(
    name: str, token_delay: float = 0.0, kind: str = "llm", extra: tuple[str, ...] = ()
) -> Backend:
    port = free_port()
    argv = container_argv(
        [
            f"--served-model-name={name}",
            f"--port={port}",
            f"--kind={kind}",
            "--startup-delay=0",
            f"--token-delay={token_delay}",
            *extra,
        ]
    )
    process = subprocess.Popen(
        argv, cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    backend = Backend(name, port, process)
    deadline = time.monotonic() + BACKEND_START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"backend {name} exited with {process.returncode}"
        try:
            if httpx.get(f"{backend.url}/health", timeout=1).status_code == 200:
                return backend
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    backend.stop()
    raise AssertionError(f"backend {name} did not start")


@pytest.fixture
def start_backend() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def start(
        name: str = "test-model",
        token_delay: float = 0.0,
        kind: str = "llm",
        extra: tuple[str, ...] = (),
    ) -> Backend:
        """`extra`: more of the container's flags (a fault such as `--bad-completion`)."""
        backend = spawn_backend(name, token_delay, kind, extra)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


class UnloadableBackend(ThreadingHTTPServer):
    """A generic HTTP backend: /health, and POST /unload (recorded)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.unloads = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: UnloadableBackend

    def do_GET(self) -> None:  # noqa: N802
        self._reply(200)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/unload":
            self.server.unloads += 1
            return self._reply(200)
        self._reply(404)

    def _reply(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def unloadable() -> Iterator[UnloadableBackend]:
    server = UnloadableBackend()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def register(
    name: str,
    base_url: str,
    *,
    host: str = "gpu-1",
    kind: str = "vllm",
    loaded_model: str = "",
    health: str = "up",
    capabilities: tuple[str, ...] = ("llm",),
    request_paths: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions"),
    **fields,
) -> Service:
    """A host (made on first use) and a service on it, probed as `health`."""
    host_row, _ = Host.objects.get_or_create(
        name=host, defaults={"address": "127.0.0.1", "vram_budget_mib": 80_000}
    )
    now = timezone.now()
    return Service.objects.create(
        name=name,
        host=host_row,
        kind=kind,
        base_url=base_url,
        capabilities=list(capabilities),
        request_paths=list(request_paths),
        health=health,
        health_since=now,
        last_probe_at=now,
        loaded_model=loaded_model,
        **fields,
    )


def catalog_model(key: str, served_name: str, **fields) -> CatalogModel:
    values = {"hub_repo": f"org/{key}", "served_name": served_name, "estimated_vram_mib": 6000}
    values.update(fields)
    return CatalogModel.objects.create(key=key, **values)


@pytest.fixture(autouse=True)
def _close_broker_thread_connections():
    """The broker's own sync thread holds a connection too; PostgreSQL must be able to
    drop the test database at the end."""
    yield
    close_thread_connections()


@pytest.fixture
def broker_settings(settings):
    """Every request sees the database as it is now (no table cache); with REDIS_URL the
    broker's Redis keys (shared limits, activity, client counts) are this test's own."""
    settings.ARBITER_BROKER_TABLE_TTL = 0.0
    prefix = settings.ARBITER_BROKER_REDIS_PREFIX = f"arbiter-test:{uuid.uuid4().hex}:"
    yield settings
    if settings.REDIS_URL:
        redis = sync_client(settings.REDIS_URL)
        keys = redis.keys(prefix + "*")
        if keys:
            redis.delete(*keys)


@pytest.fixture
def raw_key(transactional_db) -> str:
    _key, raw = ApiKey.objects.create_key(name="broker tests")
    return raw


@pytest.fixture
async def aclient(raw_key, broker_settings) -> AsyncIterator[KeyAsyncClient]:
    accounting.reset()
    yield KeyAsyncClient(raw_key)
    await reset_state()


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}


# -- a real HTTP server -----------------------------------------------------------------
def database_url() -> str:
    """The test database as a DATABASE_URL, for a server process to share it."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}{port}/{db['NAME']}"


@dataclass
class Server:
    url: str
    process: subprocess.Popen


PROJECT_APP = "arbiter.asgi:application"  # its broker paths take the lean handler


@pytest.fixture
def broker_server(request, transactional_db) -> Iterator[Server]:
    """daphne serving Arbiter on the test database (no engine loops: the test sets state).

    Parametrize indirectly with an ASGI application path; the project's by default.
    """
    app = getattr(request, "param", PROJECT_APP)
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ARBITER_", "DJANGO_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        DATABASE_URL=database_url(),
        ARBITER_DATA_DIR=os.environ.get("ARBITER_DATA_DIR", str(BASE_DIR / "var" / "test")),
        DJANGO_SETTINGS_MODULE="arbiter.settings",
        ARBITER_LOG_LEVEL="WARNING",
    )
    argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(
        [*argv, app],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "daphne exited"
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "daphne did not start"
            time.sleep(0.1)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# -- in-process ASGI calls and scripted backends ------------------------------------------
@pytest.fixture
async def handler(broker_settings):
    accounting.reset()
    yield BrokerASGIHandler()
    await reset_state()


async def call(
    app,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    query: bytes = b"",
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through the ASGI app as daphne makes it; the status, headers (the last
    of each name) and whole body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    content = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), content


Answer = bytes | Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedBackend:
    """A TCP server answering each request with the next scripted answer: raw bytes, or
    a coroutine that writes (or does not) as the test needs. Keeps the connection open
    after an answer unless the answer closed it."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if callable(answer):
                    await answer(reader, writer)
                else:
                    writer.write(answer)
                    await writer.drain()
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[list[Answer]], Awaitable[ScriptedBackend]]]:
    servers: list[asyncio.Server] = []

    async def start(answers: list[Answer]) -> ScriptedBackend:
        backend = ScriptedBackend(answers)
        backend.server = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
        servers.append(backend.server)
        return backend

    yield start
    for server in servers:
        server.close()

"""Service health probes against real HTTP backends and the real database.

Backends are real processes and sockets on loopback: the simulated vLLM container,
a small stdlib server that records every request it gets, and a socket that accepts
connections and never answers.
"""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from arbiter.engine.probes import Prober, probe_services_once
from arbiter.models import Host, Service
from tests.helpers import free_port

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]
MODEL = "sim-probe-model"


@dataclass
class Container:
    """A simulated vLLM container process."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_for_health(self, wanted: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1) as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, "the container exited"
                try:
                    if (await client.get(f"{self.url}/health")).status_code == wanted:
                        return
                except httpx.TransportError:
                    pass  # not bound yet
                await asyncio.sleep(0.02)
        raise AssertionError(f"/health never answered {wanted}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def start_container() -> Iterator[Callable[[float], Container]]:
    """Start simulated containers; every one is terminated after the test."""
    started: list[Container] = []

    def start(startup_delay: float) -> Container:
        port = free_port()
        command = [sys.executable, "-m", "arbiter.simulator.container"]
        command += ["--served-model-name", MODEL, "--port", str(port)]
        command += ["--startup-delay", str(startup_delay)]
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(Container(proc, port))
        return started[-1]

    yield start
    for container in started:
        container.stop()


@dataclass
class RecordingServer:
    """A stdlib HTTP server that records request paths and answers `statuses` (else 200)."""

    statuses: dict[str, int] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    record = RecordingServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            record.paths.append(self.path)
            status = record.statuses.get(self.path, 200)
            self.send_response(status)
            if status in (301, 302):
                self.send_header("Location", "/health")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield record
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port whose server accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def host(transactional_db) -> Host:
    return Host.objects.create(name="spark-1", address="127.0.0.1")


async def add_service(host: Host, name: str, base_url: str, **fields: object) -> int:
    service = await Service.objects.acreate(host=host, name=name, base_url=base_url, **fields)
    return service.pk


async def fetch(service_id: int) -> Service:
    return await Service.objects.aget(pk=service_id)


async def test_it_marks_a_ready_vllm_backend_up_with_latency_and_model(host, start_container):
    container = start_container(0.2)
    await container.wait_for_health(200)
    service_id = await add_service(host, "chat", container.url)

    results = await probe_services_once(interval=1.0)

    service = await fetch(service_id)
    assert results["chat"].health == service.health == "up"
    assert 0 < service.last_latency_ms < 1000
    assert service.loaded_model == MODEL
    assert service.last_probe_at is not None
    assert service.health_since == service.last_probe_at

    container.stop()
    await probe_services_once(interval=1.0)

    service = await fetch(service_id)
    assert (service.health, service.loaded_model, service.last_latency_ms) == ("down", "", None)


async def test_it_moves_health_since_only_when_health_flips(host, start_container):
    container = start_container(3.0)
    await container.wait_for_health(503)
    service_id = await add_service(host, "chat", container.url)

    await probe_services_once(interval=1.0)
    starting = await fetch(service_id)
    await probe_services_once(interval=1.0)
    still_starting = await fetch(service_id)

    assert starting.health == still_starting.health == "down"
    assert starting.last_latency_ms is not None  # it answered, with a 503
    assert starting.loaded_model == ""
    assert starting.health_since == starting.last_probe_at
    assert still_starting.last_probe_at > starting.last_probe_at
    assert still_starting.health_since == starting.health_since

    await container.wait_for_health(200)
    await probe_services_once(interval=1.0)
    ready = await fetch(service_id)
    await probe_services_once(interval=1.0)
    still_ready = await fetch(service_id)

    assert ready.health == still_ready.health == "up"
    assert ready.loaded_model == MODEL
    assert ready.health_since == ready.last_probe_at > starting.health_since
    assert still_ready.last_probe_at > ready.last_probe_at
    assert still_ready.health_since == ready.health_since


async def test_it_marks_a_service_down_when_nothing_listens(host):
    service_id = await add_service(host, "chat", f"http://127.0.0.1:{free_port()}")

    results = await probe_services_once(interval=1.0)

    service = await fetch(service_id)
    assert results["chat"].health == service.health == "down"
    assert "ConnectError" in results["chat"].detail
    assert service.last_latency_ms is None
    assert service.health_since == service.last_probe_at is not None


async def test_it_never_contacts_a_disabled_service(host, recorder):
    disabled_id = await add_service(
        host, "off", recorder.url, kind="http", health_path="/off", disabled=True
    )
    retired_id = await add_service(
        host, "gone", recorder.url, kind="http", health_path="/gone", in_inventory=False
    )
    # An enabled neighbour on the same server proves the server is reachable.
    await add_service(host, "on", recorder.url, kind="http", health_path="/on")

    for _ in range(3):
        results = await probe_services_once(interval=1.0)

    assert set(results) == {"on"}
    assert recorder.paths == ["/on"] * 3
    for service_id in (disabled_id, retired_id):
        service = await fetch(service_id)
        assert (service.health, service.health_since, service.last_probe_at) == (
            "unknown",
            None,
            None,
        )


async def test_it_marks_a_failing_health_path_down(host, recorder):
    recorder.statuses["/health"] = 500
    service_id = await add_service(host, "tts", recorder.url, kind="http")

    results = await probe_services_once(interval=1.0)

    service = await fetch(service_id)
    assert service.health == "down"
    assert results["tts"].detail == "HTTP 500"
    assert service.last_latency_ms is not None
    assert recorder.paths == ["/health"]


async def test_it_does_not_follow_redirects(host, recorder):
    recorder.statuses["/moved"] = 302
    service_id = await add_service(host, "tts", recorder.url, kind="http", health_path="/moved")

    await probe_services_once(interval=1.0)

    assert (await fetch(service_id)).health == "down"
    assert recorder.paths == ["/moved"]


async def test_it_marks_a_hanging_backend_down_within_the_timeout(host, hanging_port):
    service_id = await add_service(host, "stuck", f"http://127.0.0.1:{hanging_port}")

    started = time.monotonic()
    results = await probe_services_once(interval=0.5)  # timeout = min(interval, 3 s)
    elapsed = time.monotonic() - started

    assert results["stuck"].health == (await fetch(service_id)).health == "down"
    assert "Timeout" in results["stuck"].detail
    assert 0.4 <= elapsed < 1.5


async def test_it_asks_only_vllm_services_for_their_model(host, recorder):
    http_id = await add_service(host, "whisper", recorder.url, kind="http", health_path="/h-http")
    vllm_id = await add_service(host, "chat", recorder.url, kind="vllm", health_path="/h-vllm")

    await probe_services_once(interval=1.0)

    assert sorted(recorder.paths) == ["/h-http", "/h-vllm", "/v1/models"]
    whisper, chat = await fetch(http_id), await fetch(vllm_id)
    assert whisper.health == chat.health == "up"
    assert whisper.loaded_model == chat.loaded_model == ""  # the recorder lists no models


async def test_it_rereads_the_inventory_every_round(host, recorder):
    await add_service(host, "first", recorder.url, kind="http", health_path="/first")
    prober = Prober(interval=0.2)
    loop = asyncio.create_task(prober.run_forever())
    try:
        await asyncio.sleep(0.3)
        second_id = await add_service(
            host, "second", recorder.url, kind="http", health_path="/second"
        )
        await asyncio.sleep(0.5)
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop

    assert recorder.paths.count("/first") >= 3
    assert recorder.paths.count("/second") >= 1
    assert (await fetch(second_id)).health == "up"
    assert prober.client.is_closed

"""Several `serve` processes share what eviction and `/api/status` read, through Redis
(`arbiter.broker.shared_limits`): a service busy with requests through one process is
not evicted by another, and per-client counts from every process add up in each one's
`/api/status`.

Three `manage.py serve --no-huey` processes share the PostgreSQL test database, Redis
and the simulated cluster (running in this test process). Runs when DATABASE_URL
(PostgreSQL) and REDIS_URL are set: `make test-postgres`, and CI's run of it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import ApiKey, Host, Service
from tests.ship.markers import needs_postgres_and_redis
from tests.ship.serve_processes import serve_processes
from tests.ship.test_broker_processes import SERVED, chat, model_swaps
from tests.swaps.conftest import make_model

pytestmark = [
    needs_postgres_and_redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(300),
]

SLOW = "slow-tts"


def status_clients(url: str, headers: dict[str, str]) -> dict[str, dict]:
    rows = httpx.get(f"{url}/api/status", headers=headers, timeout=30).json()["clients"]
    return {row["client"]: row for row in rows}


def test_it_adds_up_client_counts_from_three_processes_in_each(sim_cluster, tmp_path):
    apply_inventory(load_inventory(sim_cluster.config_path))
    make_model(default_host=Host.objects.get(name="sim-b"))
    _, raw_key = ApiKey.objects.create_key("shared-counts-test", role="operator")
    client = f"app-{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {raw_key}", "X-Client-Id": client}
    with serve_processes(sim_cluster, tmp_path) as processes:
        urls = list(processes.values())
        assert chat(urls[0], headers).status_code == 200  # loads the model
        with ThreadPoolExecutor(9) as pool:
            answers = list(pool.map(lambda i: chat(urls[i % 3], headers), range(9)))
        unknown = [
            httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "no-such-model", "messages": []},
                headers=headers,
                timeout=30,
            )
            for url in urls
        ]
        assert [r.status_code for r in answers] == [200] * 9
        assert [r.status_code for r in unknown] == [404] * 3
        # Each process sends its counts within a second.
        deadline = time.monotonic() + 10
        while True:
            rows = [status_clients(url, headers).get(client) for url in urls]
            if all(row and row["requests"] == 13 for row in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for row in rows:
            assert row is not None
            assert (row["requests"], row["errors"], row["in_flight"]) == (13, 3, 0), row
            assert row["by_model"] == {SERVED: 10}
            assert row["bytes_out"] == rows[0]["bytes_out"] > 0


class SlowTts(ThreadingHTTPServer):
    """A TTS backend that holds every request until released, and records its unloads
    with how many requests it was serving at that moment."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowHandler)
        self.release = threading.Event()
        self.in_flight = 0
        self.unloads: list[int] = []  # requests in flight at each unload
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _SlowHandler(BaseHTTPRequestHandler):
    server: SlowTts
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self._reply(b"{}")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/unload":
            with self.server.lock:
                self.server.unloads.append(self.server.in_flight)
            return self._reply(b"{}")
        with self.server.lock:
            self.server.in_flight += 1
        try:
            self.server.release.wait(60)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1
        self._reply(b"RIFF")

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_tts() -> Iterator[SlowTts]:
    server = SlowTts()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def crowded_config(sim_cluster, tts: SlowTts, tmp_path: Path) -> Path:
    """The simulated cluster's file plus a TTS service on sim-b that leaves too little
    room for the model: loading it there means evicting the TTS service."""
    document = yaml.safe_load(Path(sim_cluster.config_path).read_text())
    sim_b = next(h for h in document["hosts"] if h["name"] == "sim-b")
    room = 3000  # MiB; the model needs 6000
    document["services"].append(
        {
            "name": SLOW,
            "host": "sim-b",
            "kind": "http",
            "base_url": tts.url,
            "health_path": "/health",
            "capabilities": ["tts"],
            "request_paths": ["/v1/audio/speech"],
            "vram_resident_mib": sim_b["vram_budget_mib"] - sim_b["vram_margin_mib"] - room,
            "unload_route": "/unload",
        }
    )
    path = tmp_path / "crowded.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_it_does_not_evict_a_service_busy_in_one_process_by_another(
    sim_cluster, slow_tts, tmp_path
):
    config = crowded_config(sim_cluster, slow_tts, tmp_path)
    apply_inventory(load_inventory(config))
    make_model(default_host=Host.objects.get(name="sim-b"))
    _, raw_key = ApiKey.objects.create_key("shared-activity-test", role="operator")
    client = f"speaker-{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {raw_key}", "X-Client-Id": client}
    with serve_processes(sim_cluster, tmp_path, ARBITER_CONFIG=str(config)) as processes:
        a, b, c = processes.values()
        deadline = time.monotonic() + 30
        while Service.objects.get(name=SLOW).health != "up":  # probed by the leader
            assert time.monotonic() < deadline, "the TTS service was never probed up"
            time.sleep(0.2)

        with ThreadPoolExecutor(4) as pool:
            speech = [
                pool.submit(
                    httpx.post,
                    f"{b}/v1/tts/v1/audio/speech",
                    json={"model": "tts-1", "input": "hi"},
                    headers=headers,
                    timeout=120,
                )
                for _ in range(3)
            ]
            deadline = time.monotonic() + 30
            while slow_tts.in_flight < 3:
                assert time.monotonic() < deadline, [f.result() for f in speech if f.done()]
                time.sleep(0.05)
            # Through b, seen by a and c.
            for url in (a, c):
                assert status_clients(url, headers)[client]["in_flight"] == 3

            started = time.monotonic()
            load = pool.submit(chat, a, headers)  # needs the TTS service's memory
            time.sleep(4)
            assert slow_tts.unloads == [], "evicted while busy through another process"
            assert not load.done(), load.result().text
            assert Service.objects.get(name=SLOW).unloaded_at is None

            slow_tts.release.set()
            assert [f.result().status_code for f in speech] == [200] * 3
            answer = load.result()
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started > 4
        assert slow_tts.unloads == [0]  # evicted once, idle
        assert Service.objects.get(name=SLOW).unloaded_at is not None
        assert model_swaps() == [("complete", "broker")]

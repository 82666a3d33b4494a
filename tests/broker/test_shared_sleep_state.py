"""Three broker processes and one sleeping vLLM: none of them ever sends it a request.

A request that reaches a sleeping vLLM kills its engine (vllm-project/vllm#15483); the
simulated engine does the same and counts such requests (`sim_asleep_requests_total`).
Three separate processes (tests/broker/broker_worker.py: each its own event loop, routing
table cache and counters, sharing only the database, with the default 1 s table TTL)
serve one vLLM service with sleep mode. One of them unloads it for idleness while the
other two keep sending requests, then once more with nobody sending: every request is
answered, and the engine never sees one while asleep. On SQLite the database is the test
file database; `make test-postgres` runs the same on PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection

from arbiter.models import ApiKey
from tests.broker.conftest import catalog_model, register
from tests.live_arbiter import BASE_DIR, inherited_env

pytestmark = pytest.mark.django_db(transaction=True)

TTL = 600
START_TIMEOUT = 60.0


class Worker:
    """One broker process; `ask` sends a command and waits for its one-line answer."""

    def __init__(self, name: str) -> None:
        db = {
            key: connection.settings_dict[key]
            for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")
        }
        env = inherited_env() | {"BROKER_WORKER_DB": json.dumps(db, default=str)}
        self.name = name
        self.lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.broker.broker_worker"],
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._read(START_TIMEOUT)

    def _read(self, timeout: float) -> dict:
        assert self.process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()))
        reader.start()
        reader.join(timeout)
        assert result and result[0], (
            f"worker {self.name} gave no answer (exit {self.process.poll()})"
        )
        return json.loads(result[0])

    def ask(self, timeout: float = 90.0, **command) -> dict:
        with self.lock:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            return self._read(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def sleepy(start_backend, transactional_db):
    backend = start_backend("chat-a")
    register(
        "vllm-a", backend.url, loaded_model="chat-a", unload_route="/sleep", load_route="/wake_up"
    )
    catalog_model("chat-a", "chat-a", idle_unload_seconds=TTL)
    return backend


@pytest.fixture
def workers(sleepy):
    started: list[Worker] = []
    try:
        with ThreadPoolExecutor(3) as pool:  # they start in parallel: a few seconds each
            started += pool.map(Worker, ("a", "b", "c"))
        yield started
    finally:
        for worker in started:
            worker.stop()


def test_it_never_reaches_the_sleeping_engine_after_an_idle_unload_by_one_process(sleepy, workers):
    a, b, c = workers
    _key, raw = ApiKey.objects.create_key(name="three processes")

    def chat(worker: Worker) -> int:
        return worker.ask(op="chat", model="chat-a", key=raw)["status"]

    # Every process has routed once: each holds a table that says "loaded".
    assert [chat(w) for w in workers] == [200, 200, 200]

    # A unloads it for idleness while B and C keep sending (their cached tables are older
    # than A's claim at first).
    unloading = ThreadPoolExecutor(1).submit(a.ask, op="idle_unload")
    statuses: list[int] = []
    while not unloading.done():
        with ThreadPoolExecutor(2) as pool:
            statuses += pool.map(chat, (b, c))
    assert set(statuses) == {200}, statuses
    assert unloading.result() == {"unloaded": ["vllm-a"]}

    # Once more with nobody sending (unless it is still asleep from the first round:
    # B and C may have sent their last requests before A's unload ended).
    assert a.ask(op="idle_unload")["unloaded"] in ([], ["vllm-a"])
    deadline = time.monotonic() + 10
    while not httpx.get(f"{sleepy.url}/is_sleeping").json()["is_sleeping"]:
        assert time.monotonic() < deadline, "the engine never went to sleep"
        time.sleep(0.1)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(chat, (b, c, b, c))) == [200, 200, 200, 200]

    assert sleepy.counter("sim_asleep_requests_total") == 0
    assert sleepy.counter("sim_sleeps_total") >= 1
    assert sleepy.counter("sim_wakes_total") >= 1
    assert httpx.get(f"{sleepy.url}/is_sleeping").json() == {"is_sleeping": False}
    assert sleepy.process.poll() is None  # the engine is alive

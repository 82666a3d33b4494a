"""Several `serve` processes behave as one broker: a model asked of all of them at once
is loaded by exactly one swap, and the per-model concurrency limit holds across them
(through Redis: `arbiter.broker.shared_limits`).

Three `manage.py serve --no-huey` processes share the PostgreSQL test database, Redis
and the simulated cluster (running in this test process). Runs when DATABASE_URL
(PostgreSQL) and REDIS_URL are set: `make test-postgres`, and CI's run of it.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import ApiKey, Host, Service, Swap
from tests.ship.markers import needs_postgres_and_redis
from tests.ship.serve_processes import serve_processes
from tests.swaps.conftest import make_model

pytestmark = [
    needs_postgres_and_redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(300),
]

SERVED = "Qwen/Qwen3-0.6B"
SERVICE = "sim-b-vllm"


@pytest.fixture
def cluster(sim_cluster) -> dict[str, str]:
    """The simulated cluster in the database, a model for sim-b (unloaded), and a key."""
    apply_inventory(load_inventory(sim_cluster.config_path))
    make_model(default_host=Host.objects.get(name="sim-b"))
    _, raw_key = ApiKey.objects.create_key("broker-processes-test", role="operator")
    return {"Authorization": f"Bearer {raw_key}"}


def chat(url: str, headers: dict[str, str], max_tokens: int = 4) -> httpx.Response:
    body = {"model": SERVED, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=body | {"max_tokens": max_tokens},
        headers=headers,
        timeout=120,
    )


def model_swaps() -> list[tuple[str, str]]:
    return list(Swap.objects.filter(model_key="qwen3-small").values_list("state", "requested_by"))


def test_it_loads_the_model_once_for_twenty_requests_over_three_processes(
    sim_cluster, cluster, tmp_path
):
    with serve_processes(sim_cluster, tmp_path) as processes:
        urls = list(processes.values())
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(lambda i: chat(urls[i % 3], cluster), range(20)))
        assert [r.status_code for r in responses] == [200] * 20, [
            r.text for r in responses if r.status_code != 200
        ]
        assert {r.json()["model"] for r in responses} == {SERVED}
        assert {r.headers["X-Arbiter-Service"] for r in responses} == {SERVICE}
        assert model_swaps() == [("complete", "broker")]
        # Loaded now: each process forwards without another swap.
        assert [chat(url, cluster).status_code for url in urls] == [200] * 3
        assert len(model_swaps()) == 1


def backend_in_flight(base_url: str) -> int:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    match = re.search(r"^sim_in_flight(?:\{[^}]*\})? (\d+)", text, re.MULTILINE)
    assert match, text
    return int(match.group(1))


def test_it_holds_a_concurrency_limit_of_four_across_three_processes(
    sim_cluster, cluster, tmp_path
):
    with serve_processes(sim_cluster, tmp_path, ARBITER_BROKER_MAX_CONCURRENCY="4") as processes:
        urls = list(processes.values())
        assert chat(urls[0], cluster).status_code == 200  # loads the model
        backend = Service.objects.get(name=SERVICE).base_url.rstrip("/")
        peak = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, backend_in_flight(backend))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            # 12 slow answers (300 tokens at the simulator's 20 ms each: ~6 s) sent to
            # the three processes at once: four run, the other eight are refused.
            with ThreadPoolExecutor(12) as pool:
                responses = list(
                    pool.map(lambda i: chat(urls[i % 3], cluster, max_tokens=300), range(12))
                )
        finally:
            stop.set()
            watcher.join()
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 4 + [429] * 8, [r.text for r in responses]
        refused = [r.json()["error"] for r in responses if r.status_code == 429]
        assert {e["code"] for e in refused} == {"concurrency_limit"}
        print(f"\npeak in flight at the backend: {peak} (limit 4, three processes)")
        assert peak == 4
        # The slots came back: four more fit again, over the three processes.
        with ThreadPoolExecutor(4) as pool:
            again = list(pool.map(lambda i: chat(urls[i % 3], cluster), range(4)))
        assert [r.status_code for r in again] == [200] * 4
        assert model_swaps() == [("complete", "broker")]  # loaded once, whoever forwarded

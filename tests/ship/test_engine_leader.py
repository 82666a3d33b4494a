"""Several `serve` processes on one PostgreSQL database: exactly one runs the engine,
and when it is killed with -9 another takes over within two sampling ticks and
re-attaches the swap that was in flight.

Three `manage.py serve --no-huey` processes share the test database, Redis and the
simulated cluster (which runs in this test process, so it outlives the killed leader,
as a real host outlives a crashed Arbiter). Runs when DATABASE_URL (PostgreSQL) and
REDIS_URL are set: `make test-postgres`, and CI's run of it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from arbiter.engine.leader import current_leader
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import ApiKey, GpuSample, Swap, SwapLogLine
from tests.ship.serve_processes import serve_processes
from tests.swaps.conftest import make_model

pytestmark = [
    pytest.mark.skipif(
        not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")),
        reason="needs PostgreSQL and Redis: set DATABASE_URL and REDIS_URL "
        "(`make test-postgres` does; CI runs it)",
    ),
    pytest.mark.django_db(transaction=True),
]

TICK = 1.0  # ARBITER_SAMPLE_INTERVAL of the served processes


@pytest.fixture
def three_serve_processes(sim_cluster, tmp_path) -> Iterator[dict[int, str]]:
    """{pid: base URL} of three serve processes, started together; stopped afterwards."""
    apply_inventory(load_inventory(sim_cluster.config_path))
    make_model()
    with serve_processes(sim_cluster, tmp_path, ARBITER_SAMPLE_INTERVAL=str(TICK)) as urls:
        yield urls


def leader_pid() -> int | None:
    leader = current_leader()
    return int(leader.rsplit(":", 1)[1]) if leader else None


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_it_runs_the_engine_in_one_leader_and_replaces_a_killed_one_within_two_ticks(
    sim_cluster, three_serve_processes
):
    urls = three_serve_processes
    first = wait_for(leader_pid, 10 * TICK, "a leader")
    assert first in urls
    # Every process reports the same leader.
    _, raw_key = ApiKey.objects.create_key("leader-test", role="operator")
    headers = {"Authorization": f"Bearer {raw_key}"}
    reported = {
        httpx.get(f"{url}/api/status", headers=headers).json()["engine"]["leader"]
        for url in urls.values()
    }
    assert len(reported) == 1 and reported.pop().endswith(f":{first}")

    # A swap, asked of a process that does not lead, is run by the leader.
    sim_cluster.inject("sim-b", slow_start=6 * TICK)
    follower_url = next(url for pid, url in urls.items() if pid != first)
    response = httpx.post(
        f"{follower_url}/api/swap", json={"model": "qwen3-small", "host": "sim-b"}, headers=headers
    )
    assert response.status_code == 202, response.text
    swap_id = response.json()["id"]
    wait_for(
        lambda: Swap.objects.get(pk=swap_id).state == Swap.WAITING_HEALTHY,
        30,
        "the swap waits for its container",
    )

    samples_before = GpuSample.objects.count()
    os.killpg(first, signal.SIGKILL)
    killed_at = time.monotonic()
    second = wait_for(
        lambda: (pid := leader_pid()) not in (None, first) and pid, 10 * TICK, "a new leader"
    )
    handover = time.monotonic() - killed_at
    print(f"\nengine handover after kill -9 of the leader: {handover:.2f} s (tick {TICK} s)")
    assert second in urls
    assert handover <= 2 * TICK, f"handover took {handover:.2f} s, more than two ticks"

    # The new leader re-attaches the swap in flight and sees it through.
    swap = wait_for(
        lambda: (s := Swap.objects.get(pk=swap_id)).state in Swap.FINAL_STATES and s,
        60,
        "the swap ends",
    )
    assert swap.state == Swap.COMPLETE, swap.error
    narration = list(
        SwapLogLine.objects.filter(swap_id=swap_id, stream="arbiter").values_list("text", flat=True)
    )
    assert any("resuming this swap" in line for line in narration), narration
    # And it samples the hosts.
    wait_for(lambda: GpuSample.objects.count() > samples_before, 5 * TICK, "new GPU samples")
    assert len({leader_pid() for _ in range(3)}) == 1

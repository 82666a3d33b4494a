"""A swap on the simulated DGX Spark with gpu_memory_utilization left open.

The GB10's pool is partly taken (other work on the host): vLLM's fixed 0.9 of MemTotal
would be refused by the (simulated) vLLM's start-up check ("Free memory on device ...
less than desired GPU memory utilization"), the value derived from MemAvailable starts.
"""

from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async

from arbiter.engine.sampler import Sampler
from arbiter.engine.ssh import SshTarget
from arbiter.models import Host
from tests.swaps.conftest import make_model, start_swap, wait_for_state

pytestmark = pytest.mark.django_db(transaction=True)

TAKEN_KB = 40 * 1024 * 1024  # 40 GiB used by something else on the Spark


@sync_to_async
def gb10_host() -> Host:
    return Host.objects.get(name="sim-gb10")


async def test_it_derives_an_open_utilization_on_the_spark_and_the_model_starts(
    cluster, dispatcher, aclient
):
    cluster.hosts["sim-gb10"].board.memory.base_used_kb += TAKEN_KB
    host = await gb10_host()
    assert await Sampler(interval=0.5).sample_once(host.pk, "ssh", SshTarget.from_host(host))
    await sync_to_async(make_model)("open", gpu_memory_utilization=None)

    response = await start_swap(aclient, "open", host="sim-gb10")
    assert response.status_code == 202, response.content
    swap = await wait_for_state(response.json()["id"], ("complete", "failed"), timeout=60)
    assert swap.state == "complete", swap.error

    memory = next(c for c in swap.checks if c["name"] == "memory")
    assert memory["ok"] and "derived from MemAvailable" in memory["detail"], memory
    # "requests 0.59 × 119.2 GiB = 70.3 GiB (derived from MemAvailable − 2.0 GiB margin);
    # 73.2 GiB available[, ...]"
    match = re.match(
        r"requests ([\d.]+) × ([\d.]+) GiB = ([\d.]+) GiB "
        r"\(derived from MemAvailable − ([\d.]+) GiB margin\); ([\d.]+) GiB available",
        memory["detail"],
    )
    assert match, memory["detail"]
    asked, total, requested, margin, available = map(float, match.groups())
    assert f"--gpu-memory-utilization={asked:g}" in swap.launch_argv
    assert requested <= available < 0.9 * total  # vLLM's 0.9 would have been refused
    assert asked == pytest.approx((available - margin) / total, abs=0.011)

"""Swap orchestration overhead: what a swap costs beyond the container's own start-up.

overhead = swap wall time (the Swap row's created_at -> finished_at) - the simulated
container's start-up delay (exactly STARTUP_DELAY: the simulated vLLM answers
/v1/models that long after it starts).

Set-up, in this one process: the engine's real `SwapDispatcher` (production poll
interval) runs on the test's event loop against a `ClusterThread` (the simulated hosts
on their own loop in a thread, reached over real SSH), on the test's SQLite file
database with the in-memory channel layer, the dashboard's swap-panel pushes included.
Swaps are created with `swap_store.create_swap` (what POST /api/swap calls) and
alternate two models on sim-b, so each one stops the previous container, waits for its
memory to be freed (the two models' shares, 0.5 and 0.6 of the GPU, do not fit side by
side; the simulator frees it RELEASE_DELAY after the stop), launches and waits until
healthy. One warm-up swap (host empty, SSH connections opening) is not
counted. The overhead therefore includes: the dispatcher's claim delay (woken by the
swap's creation, `swap_wakeup`; the 0.5 s poll is the fallback), pre-flight over SSH,
stop + memory-free wait (the simulator's 0.5 s release delay, polled from 0.1 s),
`docker run` and the simulated container's process start, and the health check (asked
at once when the container logs vLLM's ready line, else polled from 0.1 s).

"arbiter's own" takes the tools' time out as well: wall minus the container's own time
(from the `$ docker run` line to the container's ready line, both in the swap log) minus
the release delay. What is left is Arbiter's: claim, pre-flight, the stop command's
round trip, polling slack, state writes and log handling.
"""

import asyncio
import contextlib
import json
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from arbiter import events
from arbiter.engine.ssh import get_pool
from arbiter.engine.swaps import dispatch as swap_dispatch
from arbiter.engine.swaps.dispatch import SwapDispatcher
from arbiter.engine.swaps.journal import READY_LOG_LINE
from arbiter.engine.swaps.store import create_swap
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Swap, SwapLogLine, SwapTransition
from arbiter.simulator.cluster import ClusterThread
from catalog.models import CatalogModel

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.timeout(600),
    pytest.mark.django_db(transaction=True),
]

ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "bench-swap-overhead.json"
STARTUP_DELAY = 1.0  # the simulated container's own start-up, subtracted exactly
RELEASE_DELAY = 0.5  # the simulator frees a stopped container's GPU memory this late
SWAPS = 20
HOST = "sim-b"
MODELS = {
    "qwen3-small": {
        "hub_repo": "Qwen/Qwen3-0.6B",
        "served_name": "Qwen/Qwen3-0.6B",
        "gpu_memory_utilization": 0.5,
    },
    "smollm2": {
        "hub_repo": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "served_name": "smollm2-instruct",
        "gpu_memory_utilization": 0.6,
    },
}
SWAP_TIMEOUT = 60.0
PHASES = ["pending", "preflight", "stopping", "launching", "waiting_healthy"]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@pytest.fixture
def cluster(tmp_path, settings):
    settings.ARBITER_SWAP_HEALTH_TIMEOUT = 30.0
    settings.ARBITER_SWAP_MEMORY_FREE_TIMEOUT = 10.0
    settings.ARBITER_HF_TOKEN = ""
    thread = ClusterThread(
        tmp_path / "sim", startup_delay=STARTUP_DELAY, release_delay=RELEASE_DELAY
    ).start()
    try:
        apply_inventory(load_inventory(thread.config_path))
        for key, fields in MODELS.items():
            CatalogModel.objects.create(
                key=key, estimated_vram_mib=6000, max_model_len=8192, **fields
            )
        yield thread
    finally:
        thread.stop(kill_containers=True)


async def run_one(model: str) -> int:
    """Create a swap and wait until it completes; its id."""
    swap = await sync_to_async(create_swap)(model, HOST, False, "benchmark")
    ended = asyncio.Event()

    def listen(sender, *, swap_id: int, **kwargs) -> None:
        if swap_id == swap.pk and kwargs.get("ended"):
            ended.set()

    events.swap_progressed.connect(listen, weak=False)
    deadline = time.monotonic() + SWAP_TIMEOUT
    try:
        while time.monotonic() < deadline:
            # The announcement wakes us at once; the row is the truth (an event missed).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), 1.0)
            row = await sync_to_async(
                lambda: Swap.objects.values("state", "error").get(pk=swap.pk)
            )()
            if row["state"] in Swap.FINAL_STATES:
                assert row["state"] == Swap.COMPLETE, row
                return swap.pk
        raise AssertionError(f"swap {swap.pk} did not end within {SWAP_TIMEOUT} s")
    finally:
        events.swap_progressed.disconnect(listen)


def measure(swap_id: int) -> dict:
    swap = Swap.objects.get(pk=swap_id)
    assert swap.state == Swap.COMPLETE, (swap.state, swap.error)
    entered: dict[str, datetime] = {}
    transitions = SwapTransition.objects.filter(swap_id=swap_id).order_by("at", "pk")
    for state, at in transitions.values_list("state", "at"):
        entered.setdefault(state, at)
    order = [*PHASES, "complete"]
    phases = {
        phase: (entered[order[i + 1]] - entered[phase]).total_seconds()
        for i, phase in enumerate(PHASES)
    }
    wall = (swap.finished_at - swap.created_at).total_seconds()
    container = container_seconds(swap_id)
    return {
        "swap_id": swap_id,
        "model": swap.model_key,
        "wall_s": round(wall, 4),
        "overhead_s": round(wall - STARTUP_DELAY, 4),
        "container_s": round(container, 4),
        "arbiter_s": round(wall - container - RELEASE_DELAY, 4),
        "phases_s": {k: round(v, 4) for k, v in phases.items()},
    }


def container_seconds(swap_id: int) -> float:
    """The container's own time: from Arbiter's `$ docker run` line (stored just before
    the command) to the container's ready line (stored as the log follower reads it).
    It holds `docker run` itself, the simulated process's start and its start-up delay."""
    lines = SwapLogLine.objects.filter(swap_id=swap_id).order_by("seq")
    run_at = lines.filter(text__startswith="$ docker run").values_list("at", flat=True).first()
    ready_at = lines.filter(text__contains=READY_LOG_LINE).values_list("at", flat=True).first()
    assert run_at and ready_at, f"swap {swap_id}: no docker run or ready line in its log"
    return (ready_at - run_at).total_seconds()


def summary(values: list[float]) -> dict:
    return {
        "p50": round(percentile(values, 50), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
        "min": round(min(values), 4),
    }


async def test_it_measures_the_swap_orchestration_overhead(cluster):
    dispatcher = SwapDispatcher()  # the production poll interval
    task = asyncio.create_task(dispatcher.run_forever())
    keys = list(MODELS)
    try:
        await run_one(keys[1])  # warm-up: nothing to stop yet, SSH connections open
        ids = [await run_one(keys[i % 2]) for i in range(SWAPS)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await get_pool().close()
    runs = [await sync_to_async(measure)(swap_id) for swap_id in ids]

    overhead = summary([r["overhead_s"] for r in runs])
    arbiter_own = summary([r["arbiter_s"] for r in runs])
    container = summary([r["container_s"] for r in runs])
    wall = summary([r["wall_s"] for r in runs])
    phases = {p: summary([r["phases_s"][p] for r in runs]) for p in PHASES}
    nproc = len(os.sched_getaffinity(0))
    command = shlex.join(sys.orig_argv)
    result = {
        "benchmark": "swap orchestration overhead",
        "definition": "Swap.created_at -> finished_at minus the simulated start-up delay",
        "n": len(runs),
        "startup_delay_s": STARTUP_DELAY,
        "release_delay_s": RELEASE_DELAY,
        "models": MODELS,
        "dispatcher_interval_s": swap_dispatch.POLL_INTERVAL,
        "setup": "in-process SwapDispatcher + ClusterThread (not a live serve), "
        f"{connection.vendor} test database, in-memory channel layer",
        "overhead_s": overhead,
        "arbiter_own_s": arbiter_own,
        "arbiter_own_definition": "wall minus the container's own time (docker run to its "
        "ready line) minus the simulator's memory release delay",
        "container_s": container,
        "wall_s": wall,
        "phases_s": phases,
        "runs": runs,
        "nproc": nproc,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": command,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(result, indent=2) + "\n")

    rows = [
        ("overhead", overhead),
        ("arbiter's own", arbiter_own),
        ("container's own", container),
        ("wall", wall),
    ] + [(f"  {p}", s) for p, s in phases.items()]
    print(
        f"\nswap orchestration overhead = wall - {STARTUP_DELAY:.3f} s simulated start-up; "
        f"n={len(runs)} swaps on {HOST}, alternating {' / '.join(keys)}"
    )
    print(f"{'seconds':<20}{'p50':>8}{'p99':>8}{'max':>8}")
    for name, stats in rows:
        print(f"{name:<20}{stats['p50']:>8.3f}{stats['p99']:>8.3f}{stats['max']:>8.3f}")
    print(
        f"(arbiter's own: wall - container's own - {RELEASE_DELAY:g} s memory release; "
        "container's own: `docker run` to its ready line)"
    )
    print(f"(phase rows: time spent in each state; {result['setup']})")
    print(f"nproc={nproc}  python={result['python']}  command: {command}")
    print(f"written to {ARTIFACT}")

    # Sanity only: it cannot beat the container, and a swap is not a minute of overhead.
    assert len(runs) == SWAPS
    assert overhead["min"] > 0
    assert overhead["p50"] < 5.0
    assert overhead["max"] < 15.0

"""Two hosts, one model: a multi-node swap over the simulated cluster, as one unit.

The model runs across sim-a (head, serving on sim-a-vllm's port) and sim-b (worker,
`--headless`), in vLLM's native multi-node mode. The simulated vLLM head does not serve
until its worker has joined over loopback, fails when the worker dies, and each
container takes its GPU memory on its own host (arbiter.simulator.container).
"""

import asyncio
import json
import os
import signal
import time

import pytest
from asgiref.sync import sync_to_async

from arbiter.api.snapshot import cluster_status
from arbiter.broker.background import close_thread_connections
from arbiter.engine.probes import Prober
from arbiter.engine.swaps import store
from arbiter.engine.swaps.machine import run_swap
from arbiter.models import Service, Swap, SwapHost, SwapLogLine
from dashboard.panels.cluster import host_card, services_panel
from tests.swaps.conftest import (
    host_id,
    log_lines,
    make_model,
    start_swap,
    swap_row,
    wait_for_state,
)
from tests.swaps.test_ownership import FINAL, served_ids, service_port

pytestmark = pytest.mark.django_db(transaction=True)

MODEL, SERVED = "pair-qwen", "pair-qwen-served"
HEAD, WORKER = "sim-a", "sim-b"
CONTAINER = "arbiter-vllm"


@pytest.fixture
def pair(cluster):
    make_model(
        MODEL,
        served_name=SERVED,
        tensor_parallel_size=2,
        tensor_parallel_hosts=[HEAD, WORKER],
        gpu_memory_utilization=0.3,
    )
    return cluster


def running(sim, host: str) -> bool:
    container = sim.container(host, CONTAINER)
    return container is not None and container.running


def crash(sim, host: str) -> None:
    """The rank's process dies at once (SIGKILL: a machine losing power, an OOM kill)."""
    os.kill(sim.container(host, CONTAINER).pid, signal.SIGKILL)


def run_argv(sim, host: str) -> list[str]:
    (argv,) = [c.argv for c in sim.commands(host) if c.argv[:2] == ["docker", "run"]][-1:]
    return argv


async def pair_swap(aclient, host: str | None = None) -> int:
    response = await start_swap(aclient, MODEL, host)
    assert response.status_code == 202, response.content
    return response.json()["id"]


async def test_it_swaps_a_two_host_model_in_as_one_unit(pair, dispatcher, aclient):
    swap = await wait_for_state(await pair_swap(aclient), FINAL, timeout=60)
    assert swap.state == "complete", swap.error
    assert swap.host.name == HEAD
    # Both hosts run their rank, started with the multi-node flags of vLLM's native mode.
    assert running(pair, HEAD) and running(pair, WORKER)
    head, worker = run_argv(pair, HEAD), run_argv(pair, WORKER)
    for argv, rank in ((head, 0), (worker, 1)):
        assert "--network=host" in argv and "--env=VLLM_HOST_IP=127.0.0.1" in argv
        assert f"--node-rank={rank}" in argv and "--nnodes=2" in argv
        assert "--tensor-parallel-size=2" in argv and "--master-addr=127.0.0.1" in argv
        assert not any(item.startswith("--publish") for item in argv)
    assert "--headless" in worker and "--headless" not in head
    # Each host's GPU memory is taken by its own rank.
    assert pair.container(HEAD, CONTAINER).vram_mib > 0
    assert pair.container(WORKER, CONTAINER).vram_mib > 0
    # The head serves the model on the head service's port.
    port = await service_port(f"{HEAD}-vllm")
    assert await served_ids(port) == [SERVED]
    # The merged log tags each container line with its host.
    nodes = await sync_to_async(
        lambda: set(SwapLogLine.objects.filter(swap_id=swap.pk).values_list("node", flat=True))
    )()
    assert {HEAD, WORKER} <= nodes
    lines = await log_lines(swap.pk, "stdout")
    assert any(line.startswith(f"[{WORKER}] ") for line in lines)
    # The hosts are free again for the next swap.
    assert not await sync_to_async(SwapHost.objects.filter(active=True).exists)()

    # The status says one service spans both hosts, and both hosts serve it.
    await sync_to_async(Service.objects.filter(name=f"{HEAD}-vllm").update)(
        health="up", loaded_model=SERVED
    )
    status = await sync_to_async(cluster_status)()
    service = next(s for s in status["services"] if s["name"] == f"{HEAD}-vllm")
    assert service["hosts"] == [HEAD, WORKER]
    hosts = {h["name"]: h for h in status["hosts"]}
    assert hosts[HEAD]["pair"]["role"] == "head"
    assert hosts[WORKER]["pair"]["role"] == "worker"
    assert hosts[WORKER]["pair"]["service"] == f"{HEAD}-vllm"
    # The dashboard shows the same: one service tile spanning both hosts, and each
    # host's card saying its GPUs serve the pair.
    tiles = await sync_to_async(services_panel)()
    tile = tiles[tiles.index(f'id="service-{HEAD}-vllm"') :]
    assert f"{HEAD} + {WORKER}" in tile[: tile.index("</article>")]
    worker_card = await sync_to_async(host_card)(await host_id(WORKER))
    assert f'id="pair-{WORKER}"' in worker_card and SERVED in worker_card
    assert f"worker of {HEAD} + {WORKER}" in worker_card

    # A single-host swap on either host of the running pair is refused, naming it.
    for host in (HEAD, WORKER):
        refused = await start_swap(aclient, "qwen3-small", host)
        assert refused.status_code == 409, refused.content
        error = refused.json()["error"]
        assert error["field"] == "host" and error["service"] == f"{HEAD}-vllm"
        assert error["pair_swap_id"] == swap.pk
        assert f"swap {swap.pk}" in error["message"]
    # The pair itself can be swapped again (it replaces itself on both hosts).
    again = await wait_for_state(await pair_swap(aclient, WORKER), FINAL, timeout=60)
    assert again.state == "complete", again.error


async def test_it_makes_a_swap_on_either_host_wait_for_a_running_pair_swap(
    pair, dispatcher, aclient
):
    pair.inject(HEAD, slow_start=5)
    swap_id = await pair_swap(aclient)
    await wait_for_state(swap_id, ("launching", "waiting_healthy"), timeout=30)
    for host in (HEAD, WORKER):
        busy = await start_swap(aclient, "qwen3-small", host)
        assert busy.status_code == 409, busy.content
        assert busy.json()["error"]["swap_id"] == swap_id
    assert (await aclient.post(f"/api/swap/{swap_id}/cancel")).status_code == 202
    swap = await wait_for_state(swap_id, FINAL, timeout=30)
    assert swap.state == "cancelled"
    # Cancelled: nothing of the pair is left on either host.
    assert pair.container(HEAD, CONTAINER) is None and pair.container(WORKER, CONTAINER) is None


async def test_it_fails_the_swap_and_stops_the_head_when_the_worker_host_goes_down_mid_launch(
    pair, dispatcher, aclient
):
    pair.inject(HEAD, slow_start=30)  # the head would take long to serve
    swap_id = await pair_swap(aclient)
    await wait_for_state(swap_id, "waiting_healthy", timeout=30)
    deadline = time.monotonic() + 15
    while not (running(pair, HEAD) and running(pair, WORKER)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # The worker's machine dies: its SSH goes away and its processes with it.
    pair.go_down(WORKER)
    crash(pair, WORKER)
    swap = await wait_for_state(swap_id, FINAL, timeout=60)
    assert swap.state == "failed"
    assert WORKER in swap.error, swap.error
    assert not running(pair, HEAD)
    assert not running(pair, WORKER)


async def test_it_shows_the_service_down_within_two_probes_when_a_worker_crashes_after_ready(
    pair, dispatcher, aclient, settings
):
    swap = await wait_for_state(await pair_swap(aclient), FINAL, timeout=60)
    assert swap.state == "complete", swap.error
    interval = 0.5
    prober = Prober(interval=interval)
    try:
        await prober.probe_round()
        service = await sync_to_async(Service.objects.get)(name=f"{HEAD}-vllm")
        assert service.health == "up"
        crash(pair, WORKER)  # the worker's rank dies
        started = time.monotonic()
        while True:
            await prober.probe_round()
            service = await sync_to_async(Service.objects.get)(name=f"{HEAD}-vllm")
            if service.health == "down":
                break
            assert time.monotonic() - started < 2 * interval + 1, "still up"
            await asyncio.sleep(interval)
    finally:
        await prober.client.aclose()
    # The head then exits as vLLM does once its engine is dead.
    deadline = time.monotonic() + 15
    while running(pair, HEAD):
        assert time.monotonic() < deadline, "the head kept running without its worker"
        await asyncio.sleep(0.2)
    assert pair.container(HEAD, CONTAINER).exit_code == 1


async def test_it_reattaches_on_both_hosts_when_a_pair_swap_resumes_after_a_restart(
    pair, swap_settings
):
    pair.inject(HEAD, slow_start=3)
    swap = await sync_to_async(store.create_swap)(MODEL, None, False, "test")
    assert await sync_to_async(store.claim_pending)() == [swap.pk]
    runner = asyncio.create_task(run_swap(swap.pk))
    deadline = time.monotonic() + 30
    while (await swap_row(swap.pk)).state != "waiting_healthy" or not (
        running(pair, HEAD) and running(pair, WORKER)
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    runner.cancel()  # the engine stops; the swap and both containers stay
    await asyncio.gather(runner, return_exceptions=True)
    assert (await swap_row(swap.pk)).state == "waiting_healthy"
    runs = {
        h: len([c for c in pair.commands(h) if c.argv[:2] == ["docker", "run"]])
        for h in (HEAD, WORKER)
    }

    assert await run_swap(swap.pk, resume=True) == "complete"
    # Re-attached: no second `docker run` on either host, and the logs of both continue.
    for host in (HEAD, WORKER):
        assert (
            len([c for c in pair.commands(host) if c.argv[:2] == ["docker", "run"]]) == runs[host]
        )
    lines = await log_lines(swap.pk)
    assert "Arbiter restarted: resuming this swap in state waiting_healthy" in lines
    stdout = await log_lines(swap.pk, "stdout")
    for host in (HEAD, WORKER):
        container = pair.container(host, CONTAINER)
        (printed_file,) = (pair.data_dir / "hosts" / host / "docker" / "containers").glob(
            f"{container.id}*.stdout.log"
        )
        printed = printed_file.read_text().splitlines()
        tag = f"[{host}] "
        stored = [line[len(tag) :] for line in stdout if line.startswith(tag)]
        assert stored and stored == printed[: len(stored)], f"{host}: lines lost or repeated"


async def test_it_shows_every_hosts_command_in_validate_and_refuses_a_host_outside_the_pair(
    pair, aclient
):
    response = await aclient.post(f"/api/swap/{MODEL}/validate", {}, "application/json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["ok"], [c for c in body["checks"] if not c["ok"]]
    assert body["host"] == HEAD
    assert [(c["host"], c["node_rank"]) for c in body["commands"]] == [(HEAD, 0), (WORKER, 1)]
    assert "--headless" in body["commands"][1]["command"]
    assert "--headless" not in body["commands"][0]["command"]
    names = {check["name"] for check in body["checks"]}
    assert {"pair", f"slot ({HEAD})", f"slot ({WORKER})", f"launch_command ({WORKER})"} <= names

    outside = await start_swap(aclient, MODEL, "sim-gb10")
    assert outside.status_code == 422, outside.content
    error = outside.json()["error"]
    assert error["field"] == "host" and "sim-a, sim-b" in error["message"]
    assert not await sync_to_async(SwapHost.objects.exists)()


async def test_it_lets_the_broker_load_the_pair_on_demand_and_answer_through_the_head(
    pair, dispatcher, aclient, settings
):
    settings.ARBITER_BROKER_TABLE_TTL = 0.0  # the broker sees the database as it is now
    body = {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    try:
        response = await aclient.post("/v1/chat/completions", body, "application/json")
    finally:
        # The broker's own database thread: PostgreSQL must be able to drop the test
        # database at the end.
        await sync_to_async(close_thread_connections)()
    assert response.status_code == 200, response.content
    assert json.loads(response.content)["model"] == SERVED
    swap = await sync_to_async(lambda: Swap.objects.select_related("host").latest("created_at"))()
    assert swap.state == "complete" and swap.host.name == HEAD
    assert await sync_to_async(swap.host_names)() == [HEAD, WORKER]
    assert running(pair, HEAD) and running(pair, WORKER)

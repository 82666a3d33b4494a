"""On-demand loading on the simulated cluster: one shared swap, under the lock's rules.

The engine's real dispatcher runs on the test's loop (as inside `manage.py serve`); the
simulated hosts run in their own thread and answer over real SSH; the swap launches a
real simulated container that the broker then forwards to.
"""

import asyncio
import json

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from arbiter.broker.metrics import REGISTRY
from arbiter.engine.ssh import get_pool
from arbiter.engine.swaps.dispatch import SwapDispatcher
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Host, Service, Swap
from arbiter.simulator import vllm_args
from catalog.models import CatalogModel
from coordination.locks import acquire
from tests.broker.conftest import chat, container_argv

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

SERVED = "Qwen/Qwen3-0.6B"


@pytest.fixture
def cluster(sim_cluster, settings, transactional_db, monkeypatch):
    """The simulated cluster in the database and one catalog model for sim-b."""
    # Swapped-in containers get the deeper listen backlog too (see conftest).
    monkeypatch.setattr(vllm_args, "container_argv", container_argv)
    settings.ARBITER_SWAP_HEALTH_TIMEOUT = 30.0
    settings.ARBITER_SWAP_MEMORY_FREE_TIMEOUT = 10.0
    settings.ARBITER_HF_TOKEN = ""
    apply_inventory(load_inventory(sim_cluster.config_path))
    CatalogModel.objects.create(
        key="qwen3-small",
        hub_repo="Qwen/Qwen3-0.6B",
        served_name=SERVED,
        gpu_memory_utilization=0.3,
        estimated_vram_mib=6000,
        max_model_len=8192,
        default_host=Host.objects.get(name="sim-b"),
    )
    return sim_cluster


@pytest.fixture
async def dispatcher(cluster):
    dispatcher = SwapDispatcher(interval=0.1)
    task = asyncio.create_task(dispatcher.run_forever())
    try:
        yield dispatcher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await get_pool().close()


@sync_to_async
def swaps() -> list[tuple[str, str, str]]:
    return list(Swap.objects.values_list("model_key", "state", "requested_by"))


async def post_chat(client, model=SERVED, **headers):
    return await client.post(
        "/v1/chat/completions", chat(model, max_tokens=4), "application/json", headers=headers
    )


@sync_to_async  # a scrape runs the cluster collector, which reads the database
def loads(outcome: str) -> float:
    return REGISTRY.get_sample_value("arbiter_broker_loads_total", {"outcome": outcome}) or 0.0


async def test_it_shares_one_swap_among_twenty_concurrent_requests_and_all_succeed(
    dispatcher, aclient
):
    before = await loads("complete")
    responses = await asyncio.gather(*(post_chat(aclient) for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20, responses[0].content
    assert {json.loads(r.content)["model"] for r in responses} == {SERVED}
    assert {r["X-Arbiter-Service"] for r in responses} == {"sim-b-vllm"}
    assert await swaps() == [("qwen3-small", "complete", "broker")]
    assert await loads("complete") == before + 1

    # Loaded now: the next request goes straight through, no second swap.
    assert (await post_chat(aclient)).status_code == 200
    assert len(await swaps()) == 1


async def test_it_loads_the_model_by_its_catalog_key_too(dispatcher, aclient):
    response = await post_chat(aclient, model="qwen3-small")
    assert response.status_code == 200, response.content
    assert json.loads(response.content)["model"] == SERVED
    assert await swaps() == [("qwen3-small", "complete", "broker")]


async def test_it_answers_423_and_starts_nothing_while_another_party_holds_the_lock(
    dispatcher, aclient
):
    await sync_to_async(acquire)("nightly-eval", 600, "benchmark run")
    responses = await asyncio.gather(*(post_chat(aclient) for _ in range(5)))

    assert [r.status_code for r in responses] == [423] * 5
    for response in responses:
        assert 590 <= int(response["Retry-After"]) <= 600
        error = json.loads(response.content)["error"]
        assert error["type"] == "locked"
        assert error["code"] == "swap_lock_held"
        assert error["holder"] == "nightly-eval"
        assert error["expires_at"]
        assert "token" not in json.dumps(error)
    assert await swaps() == []


async def test_it_answers_503_to_a_load_that_outlasts_the_queue_timeout(cluster, aclient, settings):
    settings.ARBITER_BROKER_QUEUE_TIMEOUT = 0.5  # and no dispatcher: the swap stays pending
    response = await post_chat(aclient)
    assert response.status_code == 503
    assert response["Retry-After"] == "10"
    error = json.loads(response.content)["error"]
    assert (error["type"], error["code"]) == ("server_busy", "load_timeout")
    assert await swaps() == [("qwen3-small", "pending", "broker")]


async def test_it_shows_a_model_being_loaded_in_the_models_list(cluster, aclient, settings):
    settings.ARBITER_BROKER_QUEUE_TIMEOUT = 0.3
    await post_chat(aclient)  # starts the swap; no dispatcher, so it stays pending
    data = json.loads((await aclient.get("/v1/models")).content)["data"]
    loading = {m["id"]: m["arbiter"] for m in data}[SERVED]
    assert loading["state"] == "loading" and loading["catalog_key"] == "qwen3-small"


@sync_to_async
def crowd_sim_b(unload_url: str) -> None:
    """A 60 GB generic service next to sim-b's vLLM slot, unloadable at `unload_url`."""
    host = Host.objects.get(name="sim-b")
    Service.objects.create(
        name="sim-b-comfy",
        host=host,
        kind="http",
        base_url=unload_url,
        capabilities=["image"],
        request_paths=["/v1/images/generations"],
        vram_resident_mib=60_000,
        unload_route="/unload",
        health="up",
        health_since=timezone.now(),
    )
    CatalogModel.objects.filter(key="qwen3-small").update(estimated_vram_mib=30_000)


async def test_it_evicts_first_then_swaps_for_a_load_that_does_not_fit(
    dispatcher, aclient, unloadable
):
    # sim-b: 81559 MiB budget - 2048 margin - 60000 held = 19511 MiB, the model needs 30000.
    await crowd_sim_b(unloadable.url)
    response = await post_chat(aclient)
    assert response.status_code == 200, response.content
    assert unloadable.unloads == 1
    assert await swaps() == [("qwen3-small", "complete", "broker")]
    # Unloaded and unused since: it holds nothing, so the next load evicts nothing.
    assert (await post_chat(aclient)).status_code == 200
    assert unloadable.unloads == 1


async def test_it_keeps_the_shared_load_going_after_the_request_that_started_it_hangs_up(
    dispatcher, broker_server, raw_key
):
    """Over a real server: the first caller hangs up while the model loads; the load (its
    task, its database calls) carries on and the caller still waiting is served."""
    url = f"{broker_server.url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {raw_key}"}
    body = chat(SERVED, max_tokens=4)
    async with httpx.AsyncClient(timeout=60) as client:
        first = asyncio.ensure_future(client.post(url, json=body, headers=headers))
        await asyncio.sleep(0.3)  # the load has started on the first request's behalf
        second = asyncio.ensure_future(client.post(url, json=body, headers=headers))
        await asyncio.sleep(0.2)
        first.cancel()  # the first caller hangs up
        await asyncio.gather(first, return_exceptions=True)
        response = await second
    assert response.status_code == 200, response.text
    assert response.json()["model"] == SERVED
    assert await swaps() == [("qwen3-small", "complete", "broker")]

"""An alias none of whose models is loaded loads its first, on the simulated cluster.

As in test_on_demand_load: the engine's real dispatcher runs on the test's loop, the
simulated hosts answer over real SSH, and the swap launches a real simulated container.
"""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from arbiter.engine.ssh import get_pool
from arbiter.engine.swaps.dispatch import SwapDispatcher
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Host, Swap
from arbiter.simulator import vllm_args
from catalog.models import CatalogAlias, CatalogModel
from tests.broker.conftest import chat, container_argv

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

SERVED = "Qwen/Qwen3-0.6B"


@pytest.fixture
async def dispatcher(sim_cluster, settings, transactional_db, monkeypatch):
    monkeypatch.setattr(vllm_args, "container_argv", container_argv)
    settings.ARBITER_SWAP_HEALTH_TIMEOUT = 30.0
    settings.ARBITER_SWAP_MEMORY_FREE_TIMEOUT = 10.0
    settings.ARBITER_HF_TOKEN = ""

    @sync_to_async
    def setup() -> None:
        apply_inventory(load_inventory(sim_cluster.config_path))
        sim_b = Host.objects.get(name="sim-b")
        for key, repo, served in (
            ("qwen3-small", "Qwen/Qwen3-0.6B", SERVED),
            ("qwen3-other", "Qwen/Qwen3-1.7B", "qwen-other"),
        ):
            CatalogModel.objects.create(
                key=key,
                hub_repo=repo,
                served_name=served,
                gpu_memory_utilization=0.3,
                estimated_vram_mib=6000,
                max_model_len=8192,
                default_host=sim_b,
            )
        CatalogAlias.objects.create(name="chat-default", model_keys=["qwen3-small", "qwen3-other"])

    await setup()
    dispatcher = SwapDispatcher(interval=0.1)
    task = asyncio.create_task(dispatcher.run_forever())
    try:
        yield dispatcher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await get_pool().close()


async def test_it_loads_the_first_listed_model_for_an_alias_loaded_nowhere(dispatcher, aclient):
    responses = await asyncio.gather(
        *(
            aclient.post(
                "/v1/chat/completions", chat("chat-default", max_tokens=4), "application/json"
            )
            for _ in range(3)
        )
    )
    assert [r.status_code for r in responses] == [200] * 3, responses[0].content
    assert {json.loads(r.content)["model"] for r in responses} == {SERVED}
    swaps = await sync_to_async(list)(Swap.objects.values_list("model_key", "state"))
    assert swaps == [("qwen3-small", "complete")]  # one shared load, of the first
    listed = json.loads((await aclient.get("/v1/models")).content)["data"]
    alias = next(m for m in listed if m["id"] == "chat-default")["arbiter"]
    assert (alias["points_to"], alias["points_to_key"]) == (SERVED, "qwen3-small")

"""Leases in the broker: a leased model is never evicted for another model's load (the
load gets 423 naming the lease, OpenAI-shaped) and never idle-unloaded; the lease ended,
both work again."""

import time

import httpx
import pytest
from asgiref.sync import sync_to_async

from arbiter.broker.idle import IdleUnloader
from arbiter.broker.limits import ActivitySnapshot
from arbiter.broker.loading import plan_load
from arbiter.broker.planner import HostMemory, Incoming, Resident, plan_eviction
from arbiter.broker.state import get_state
from arbiter.errors import Locked
from arbiter.models import Host
from coordination import leases
from tests.broker.conftest import catalog_model, chat, register
from tests.helpers import Clock

TTL = 600


# -- the planner (pure) ------------------------------------------------------------------
def test_it_never_plans_to_evict_a_leased_service():
    memory = HostMemory("gpu-1", 80_000, 0, None, False, None)
    residents = [
        Resident("vllm", 0, replaced=True),
        Resident("tts", 60_000, leased=True),
    ]
    plan = plan_eviction(memory, residents, Incoming("vllm", 30_000))
    assert not plan.fits and plan.evict == ()
    assert plan.leased_by == ("tts",)
    unleased = plan_eviction(
        memory, [residents[0], Resident("tts", 60_000)], Incoming("vllm", 30_000)
    )
    assert unleased.fits and unleased.evict == ("tts",)


def test_it_never_plans_to_replace_a_leased_service():
    memory = HostMemory("gpu-1", 80_000, 0, None, False, None)
    plan = plan_eviction(
        memory, [Resident("vllm", 10_000, replaced=True, leased=True)], Incoming("vllm", 10_000)
    )
    assert not plan.fits and plan.leased_by == ("vllm",)


# -- plan_load against the database ---------------------------------------------------------
@pytest.fixture
def crowded_host(unloadable, transactional_db):
    """An 80 GB host: a vLLM slot, and a 60 GB TTS server serving `voice`, unloadable."""
    register("vllm-a", "http://127.0.0.1:9", loaded_model="", health="unknown")
    register(
        "tts",
        unloadable.url,
        kind="http",
        capabilities=("tts",),
        request_paths=("/v1/audio/speech",),
        vram_resident_mib=60_000,
        unload_route="/unload",
        loaded_model="voice",
    )
    Host.objects.filter(name="gpu-1").update(vram_budget_mib=80_000, vram_margin_mib=2_000)
    catalog_model("mid", "mid-model", estimated_vram_mib=30_000)
    catalog_model("voice", "voice", estimated_vram_mib=0)


@pytest.mark.django_db(transaction=True)
def test_it_refuses_a_load_that_needs_a_leased_models_memory(crowded_host):
    grant = leases.acquire("voice", "gpu-1", "podcast-job", TTL, "narration")
    with pytest.raises(Locked) as raised:
        plan_load("mid", ActivitySnapshot())
    blocked = raised.value.extra["blocked_by"]
    assert (blocked["holder"], blocked["purpose"], blocked["model"]) == (
        "podcast-job",
        "narration",
        "voice",
    )
    assert blocked["lease_id"] == grant.id and blocked["expires_at"]
    leases.release(grant.id, grant.token)
    step = plan_load("mid", ActivitySnapshot())
    assert step.action == "go" and [e.service for e in step.evict] == ["tts"]


@pytest.mark.django_db(transaction=True)
def test_it_refuses_a_load_that_would_replace_a_leased_model(transactional_db):
    register("vllm-a", "http://127.0.0.1:9", loaded_model="big-served")
    catalog_model("big", "big-served")
    catalog_model("mid", "mid-model")
    leases.acquire("big", "gpu-1", "eval", TTL, "")
    with pytest.raises(Locked) as raised:
        plan_load("mid", ActivitySnapshot())
    assert raised.value.extra["blocked_by"]["model"] == "big"


async def test_it_answers_the_blocked_request_423_openai_shaped(aclient, crowded_host):
    await sync_to_async(leases.acquire)("voice", "gpu-1", "podcast-job", TTL, "narration")
    response = await aclient.post("/v1/chat/completions", chat("mid-model"), "application/json")
    assert response.status_code == 423, response.content
    error = response.json()["error"]
    assert error["type"] == "locked" and error["code"] == "model_leased"
    assert error["blocked_by"]["holder"] == "podcast-job"
    assert int(response.headers["Retry-After"]) >= 1


# -- idle unloads ---------------------------------------------------------------------------
@pytest.fixture
def sleepy(start_backend, transactional_db):
    backend = start_backend("chat-a")
    register(
        "vllm-a", backend.url, loaded_model="chat-a", unload_route="/sleep", load_route="/wake_up"
    )
    catalog_model("chat-a", "chat-a", idle_unload_seconds=TTL)
    return backend


async def sweep(unloader: IdleUnloader) -> list[str]:
    state = get_state()
    return await unloader.sweep(await state.table.get(newer_than=time.monotonic()), state.residency)


@pytest.mark.django_db(transaction=True)
async def test_it_never_idle_unloads_a_leased_model(aclient, sleepy):
    clock = Clock()
    unloader = IdleUnloader(clock)
    assert await sweep(unloader) == []
    grant = await sync_to_async(leases.acquire)("chat-a", "gpu-1", "eval", TTL * 2, "")
    clock.now += TTL
    assert await sweep(unloader) == []
    assert httpx.get(f"{sleepy.url}/is_sleeping").json() == {"is_sleeping": False}
    # A direct unload (an eviction) is refused as well.
    residency = get_state().residency
    assert not await residency.unload("vllm-a", f"{sleepy.url}/sleep", "eviction")
    await sync_to_async(leases.release)(grant.id, grant.token)
    assert await sweep(unloader) == ["vllm-a"]

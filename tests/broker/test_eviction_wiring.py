"""Eviction wired into on-demand loading: what `plan_load` reads and decides, and the unload.

The service to evict is a real HTTP server (a generic backend with an unload route)
that records the POSTs it gets.
"""

import pytest
from django.utils import timezone

from arbiter.broker.errors import BackendUnavailable
from arbiter.broker.limits import ActivitySnapshot
from arbiter.broker.loading import plan_load
from arbiter.errors import Locked
from arbiter.models import GpuSample, Host, Service
from coordination.locks import acquire
from tests.broker.conftest import catalog_model, register

# `unloadable` (conftest): a generic HTTP backend that records POSTs to /unload.

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def crowded_host(unloadable, transactional_db):
    """An 80 GB host: a vLLM slot, and a 60 GB TTS server that can be unloaded."""
    register("vllm-a", "http://127.0.0.1:9", loaded_model="", health="unknown")
    register(
        "tts",
        unloadable.url,
        kind="http",
        capabilities=("tts",),
        request_paths=("/v1/audio/speech",),
        vram_resident_mib=60_000,
        unload_route="/unload",
    )
    Host.objects.filter(name="gpu-1").update(vram_budget_mib=80_000, vram_margin_mib=2_000)
    catalog_model("mid", "mid-model", estimated_vram_mib=30_000)


def test_it_evicts_the_idle_unloadable_service_for_a_model_that_does_not_fit(
    crowded_host, unloadable
):
    step = plan_load("mid", ActivitySnapshot())
    assert step.action == "go" and step.host == "gpu-1"
    assert [(e.service, e.url) for e in step.evict] == [("tts", f"{unloadable.url}/unload")]
    assert step.plan.free_mib == 18_000 and step.plan.free_after_mib == 78_000


def test_it_does_not_evict_a_busy_service_and_the_load_waits(crowded_host):
    step = plan_load("mid", ActivitySnapshot(in_flight={"tts": 1}))
    assert step.action == "blocked"
    assert step.plan.waiting_for == ("tts",)


def test_it_counts_an_unloaded_service_as_holding_nothing_until_used_again(crowded_host):
    # Unloaded by any broker process: the database says so (`residency`).
    Service.objects.filter(name="tts").update(unloaded_at=timezone.now())
    step = plan_load("mid", ActivitySnapshot())
    assert step.action == "go" and step.evict == ()


def test_it_plans_and_evicts_nothing_while_someone_else_holds_the_lock(crowded_host):
    acquire("nightly-eval", 600, "eval")
    with pytest.raises(Locked):
        plan_load("mid", ActivitySnapshot())


def test_it_plans_a_unified_memory_host_with_measured_mem_available(transactional_db):
    register("vllm-gb10", "http://127.0.0.1:9", host="gb10", health="unknown")
    register(
        "tts",
        "http://127.0.0.1:9",
        host="gb10",
        kind="http",
        capabilities=("tts",),
        vram_resident_mib=5_000,
        unload_route="/unload",
    )
    now = timezone.now()
    # Estimates alone would leave 100 GB; the host reports 20 GB available.
    Host.objects.filter(name="gb10").update(
        vram_budget_mib=122_000,
        vram_margin_mib=2_000,
        mem_total_mib=122_000,
        mem_available_mib=20_000,
        last_sample_at=now,
    )
    GpuSample.objects.create(host=Host.objects.get(name="gb10"), index=0, unified_memory=True)
    catalog_model("mid", "mid-model", estimated_vram_mib=20_000)
    step = plan_load("mid", ActivitySnapshot())
    assert step.action == "go" and step.measured
    assert [e.service for e in step.evict] == ["tts"]
    assert step.plan.free_mib == 18_000


def test_it_refuses_a_model_too_big_for_every_host_with_a_clear_409(crowded_host):
    catalog_model("huge", "huge-model", estimated_vram_mib=200_000)
    with pytest.raises(Exception) as caught:
        plan_load("huge", ActivitySnapshot())
    error = caught.value
    assert not isinstance(error, BackendUnavailable)
    assert error.status == 409 and error.error_type == "insufficient_vram"
    assert "needs 200000 MiB" in error.message

"""gpu_memory_utilization chosen per host, and sleep mode refused on unified memory.

vLLM asks for `gpu_memory_utilization × total` and refuses to start with less free
(vllm/v1/worker/utils.py `request_memory`); on a GB10 the total is the whole unified
pool (MemTotal), so a model that leaves the value open gets it derived from MemAvailable
minus a margin there, and vLLM's 0.9 on discrete GPUs (arbiter/engine/host_memory.py).
Pre-flight shows what is asked and what is there. Read from the database only.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from arbiter.engine.host_memory import DEFAULT_UNIFIED_MARGIN_MIB
from arbiter.engine.swaps.preflight import load_plan, memory_check, sleep_check
from arbiter.models import GpuSample, Host, Service, Swap
from tests.swaps.conftest import make_model

pytestmark = pytest.mark.django_db

GIB = 1024


def gb10(available_gib: float, margin_mib: int = 0) -> Host:
    host = Host.objects.create(
        name="spark",
        address="127.0.0.1",
        home_dir="/home/arbiter",
        mem_total_mib=124_000,
        mem_available_mib=int(available_gib * GIB),
        vram_margin_mib=margin_mib,
    )
    Service.objects.create(
        name="vllm-spark", host=host, base_url="http://127.0.0.1:8000", capabilities=["llm"]
    )
    GpuSample.objects.create(host=host, index=0, name="NVIDIA GB10", unified_memory=True)
    return host


def utilization_flag(argv: tuple[str, ...]) -> str:
    [flag] = [a for a in argv if a.startswith("--gpu-memory-utilization=")]
    return flag.split("=", 1)[1]


def test_it_derives_an_open_value_from_mem_available_on_unified_memory():
    gb10(available_gib=100)
    make_model(gpu_memory_utilization=None)
    plan = load_plan("qwen3-small", "spark")
    # (100 GiB − 16 GiB default margin) / 124 000 MiB, rounded down to two decimals.
    expected = int((100 * GIB - DEFAULT_UNIFIED_MARGIN_MIB) / 124_000 * 100) / 100
    assert plan.gpu_memory_utilization == expected == 0.69
    assert utilization_flag(plan.argv) == "0.69"
    check = memory_check(plan)
    assert check.ok
    assert check.detail.startswith("requests 0.69 × 121.1 GiB = 83.6 GiB (derived from ")
    assert check.detail.endswith("; 100.0 GiB available")


def test_it_replaces_the_default_margin_with_the_hosts_own():
    gb10(available_gib=100, margin_mib=4 * GIB)
    make_model(gpu_memory_utilization=None)
    assert load_plan("qwen3-small", "spark").gpu_memory_utilization == 0.79


def test_it_counts_what_the_replaced_model_holds_as_available_and_caps_at_09():
    host = gb10(available_gib=40)
    service = Service.objects.get(name="vllm-spark")
    Service.objects.filter(pk=service.pk).update(loaded_model="old", health="up")
    Swap.objects.create(
        model_key="old",
        host=host,
        service=service,
        state=Swap.COMPLETE,
        finished_at=timezone.now(),
        launch_argv=["docker", "run", "img", "--gpu-memory-utilization=0.8"],
    )
    make_model(gpu_memory_utilization=None)
    plan = load_plan("qwen3-small", "spark")
    assert plan.memory.freed_mib == 99_200  # 0.8 × 124 000 MiB comes back with the swap
    assert plan.gpu_memory_utilization == 0.9  # (40 GiB + 96.9 GiB − 16 GiB) / 121 GiB, capped
    assert "96.9 GiB of it freed by this swap" in memory_check(plan).detail


def test_it_keeps_an_explicit_value_and_checks_it_against_what_is_available():
    gb10(available_gib=60)
    make_model(gpu_memory_utilization=0.7)
    plan = load_plan("qwen3-small", "spark")
    assert utilization_flag(plan.argv) == "0.7"
    check = memory_check(plan)
    assert not check.ok
    assert check.detail.startswith(
        "requests 0.7 × 121.1 GiB = 84.8 GiB (set in the catalog); only 60.0 GiB available"
    )


def test_it_fails_the_check_with_too_little_memory_for_the_model():
    gb10(available_gib=20)
    make_model(gpu_memory_utilization=None, estimated_vram_mib=8000)
    plan = load_plan("qwen3-small", "spark")
    assert plan.gpu_memory_utilization == 0.03
    check = memory_check(plan)
    assert not check.ok and "less than the model's estimated 8000 MiB" in check.detail


def test_it_asks_for_vllms_default_09_on_discrete_gpus():
    host = Host.objects.create(name="ws", address="127.0.0.1", home_dir="/home/arbiter")
    Service.objects.create(name="vllm-ws", host=host, base_url="http://127.0.0.1:8000")
    GpuSample.objects.create(host=host, index=0, memory_total_mib=49_140)
    make_model(gpu_memory_utilization=None)
    plan = load_plan("qwen3-small", "ws")
    assert utilization_flag(plan.argv) == "0.9"
    check = memory_check(plan)
    assert check.ok and check.detail == (
        "requests 0.9 × 48.0 GiB = 43.2 GiB (vLLM's default) per GPU"
    )


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"extra_engine_flags": ["--enable-sleep-mode"]}, True),
        ({"idle_unload_seconds": 600}, True),
        ({"extra_engine_flags": ["--enable-sleep-mode"], "sleep_on_unified_memory": True}, False),
        ({}, False),
    ],
)
def test_it_allows_sleep_mode_on_unified_memory_only_when_the_model_opts_in(fields, refused):
    gb10(available_gib=100)
    make_model(**fields)
    check = sleep_check(load_plan("qwen3-small", "spark"))
    assert check.ok is not refused
    if refused:
        assert "sleep_on_unified_memory: true" in check.detail
        assert "vllm-project/vllm#50011" in check.detail


def test_it_allows_sleep_mode_on_discrete_gpus():
    host = Host.objects.create(name="ws", address="127.0.0.1", home_dir="/home/arbiter")
    Service.objects.create(name="vllm-ws", host=host, base_url="http://127.0.0.1:8000")
    GpuSample.objects.create(host=host, index=0, memory_total_mib=49_140)
    make_model(extra_engine_flags=["--enable-sleep-mode"])
    assert sleep_check(load_plan("qwen3-small", "ws")).ok

"""The VRAM planner's scenario table (pure functions, no database)."""

from dataclasses import dataclass

import pytest

from arbiter.broker.planner import (
    EvictionPlan,
    HostMemory,
    Incoming,
    Resident,
    choose_host,
    plan_eviction,
    room,
)

NOW = 1_800_000_000.0
H100 = HostMemory("sim-b", budget_mib=80_000, margin_mib=2_000)


@dataclass(frozen=True)
class Scenario:
    name: str
    host: HostMemory
    residents: tuple[Resident, ...]
    incoming: Incoming
    fits: bool
    evict: tuple[str, ...] = ()
    waiting_for: tuple[str, ...] = ()
    locked: bool = False


SCENARIOS = [
    Scenario(
        "fits without eviction",
        H100,
        (Resident("vllm", 20_000, replaced=True), Resident("tts", 6_000)),
        Incoming("vllm", 40_000),
        fits=True,
    ),
    Scenario(
        "the swap's own service frees its memory: no eviction needed",
        H100,
        (Resident("vllm", 60_000, replaced=True), Resident("tts", 6_000)),
        Incoming("vllm", 70_000),
        fits=True,
    ),
    Scenario(
        "evicts the least recently finished idle service",
        H100,
        (
            Resident("vllm", 10_000, replaced=True),
            Resident("tts", 20_000, last_finished=NOW - 60),
            Resident("stt", 20_000, last_finished=NOW - 600),  # idle longest
            Resident("embed", 20_000, last_finished=NOW - 5),
        ),
        Incoming("vllm", 30_000),
        fits=True,
        evict=("stt",),
    ),
    Scenario(
        "never used since start counts as idle longest",
        H100,
        (
            Resident("vllm", 0, replaced=True),
            Resident("tts", 30_000, last_finished=NOW - 3_600),
            Resident("stt", 30_000, last_finished=None),
        ),
        Incoming("vllm", 30_000),
        fits=True,
        evict=("stt",),
    ),
    Scenario(
        "evicts as many as needed, oldest first",
        H100,
        (
            Resident("vllm", 0, replaced=True),
            Resident("a", 25_000, last_finished=NOW - 10),
            Resident("b", 25_000, last_finished=NOW - 30),
            Resident("c", 25_000, last_finished=NOW - 20),
        ),
        Incoming("vllm", 50_000),
        fits=True,
        evict=("b", "c"),
    ),
    Scenario(
        "a busy service is never evicted: the load waits",
        H100,
        (
            Resident("vllm", 0, replaced=True),
            Resident("tts", 40_000, in_flight=2, last_finished=NOW - 3_600),
            Resident("stt", 20_000, last_finished=NOW - 10),
        ),
        Incoming("vllm", 50_000),
        fits=False,
        waiting_for=("tts",),
    ),
    Scenario(
        "the idle one goes, the busy one stays, when that is enough",
        H100,
        (
            Resident("vllm", 0, replaced=True),
            Resident("tts", 30_000, in_flight=1, last_finished=NOW - 3_600),
            Resident("stt", 30_000, last_finished=NOW - 10),
        ),
        Incoming("vllm", 40_000),
        fits=True,
        evict=("stt",),
    ),
    Scenario(
        "the replaced service with requests in flight makes the load wait",
        H100,
        (Resident("vllm", 20_000, in_flight=3, replaced=True),),
        Incoming("vllm", 10_000),
        fits=False,
        waiting_for=("vllm",),
    ),
    Scenario(
        "can_coexist_with is honoured (named by the resident)",
        H100,
        (
            Resident("vllm", 0, replaced=True),
            Resident("tts", 40_000, last_finished=NOW - 3_600, can_coexist_with=("vllm",)),
            Resident("stt", 30_000, last_finished=NOW - 10),
        ),
        Incoming("vllm", 35_000),
        fits=True,
        evict=("stt",),  # tts is idle longer, but may stay next to vllm
    ),
    Scenario(
        "can_coexist_with is honoured (named by the incoming service)",
        H100,
        (
            Resident("vllm", 0, replaced=True),
            Resident("tts", 40_000, last_finished=NOW - 3_600),
            Resident("stt", 30_000, last_finished=NOW - 10),
        ),
        Incoming("vllm", 35_000, can_coexist_with=("tts",)),
        fits=True,
        evict=("stt",),
    ),
    Scenario(
        "services that may stay put do not count as evictable room",
        H100,
        (
            Resident("vllm", 0, replaced=True),
            Resident("tts", 60_000, can_coexist_with=("vllm",)),
        ),
        Incoming("vllm", 40_000),
        fits=False,
    ),
    Scenario(
        "a service the broker cannot unload stays",
        H100,
        (Resident("vllm", 0, replaced=True), Resident("comfy", 60_000, evictable=False)),
        Incoming("vllm", 40_000),
        fits=False,
    ),
    Scenario(
        "GB10: measured MemAvailable wins over optimistic estimates",
        HostMemory("sim-gb10", budget_mib=120_000, margin_mib=4_000, measured_free_mib=30_000),
        (Resident("vllm", 0, replaced=True), Resident("tts", 5_000, last_finished=NOW - 60)),
        Incoming("vllm", 28_000),
        fits=True,
        evict=("tts",),  # estimates say 111 GB free; the host says 26 GB usable
    ),
    Scenario(
        "GB10: enough measured memory, nothing evicted",
        HostMemory("sim-gb10", budget_mib=120_000, margin_mib=4_000, measured_free_mib=90_000),
        (Resident("vllm", 0, replaced=True), Resident("tts", 5_000, last_finished=NOW - 60)),
        Incoming("vllm", 28_000),
        fits=True,
    ),
    Scenario(
        "never while someone else holds the lock",
        H100,
        (Resident("vllm", 0, replaced=True), Resident("tts", 70_000, last_finished=NOW - 60)),
        Incoming("vllm", 40_000),
        fits=False,
        locked=True,
    ),
    Scenario(
        "too big even with everything evicted: no eviction, a clear no",
        H100,
        (Resident("vllm", 0, replaced=True), Resident("tts", 6_000)),
        Incoming("vllm", 90_000),
        fits=False,
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_it_plans_every_eviction_scenario_as_the_table_says(scenario: Scenario) -> None:
    plan = plan_eviction(
        scenario.host, scenario.residents, scenario.incoming, lock_held_by_other=scenario.locked
    )
    assert (plan.fits, plan.evict, plan.waiting_for, plan.locked) == (
        scenario.fits,
        scenario.evict,
        scenario.waiting_for,
        scenario.locked,
    ), plan.reason
    if not plan.fits:
        assert not plan.evict  # a plan that does not go evicts nothing
        assert plan.reason
    assert plan.blocked == (bool(scenario.waiting_for) or scenario.locked)


def test_it_explains_why_a_model_cannot_fit() -> None:
    plan = plan_eviction(H100, (Resident("vllm", 0, replaced=True),), Incoming("vllm", 90_000))
    assert plan.reason == (
        "needs 90000 MiB, at most 78000 MiB can be freed on sim-b without stopping "
        "services that must stay"
    )


def test_it_computes_room_from_estimates_measurement_or_both() -> None:
    residents = (Resident("a", 10_000), Resident("b", 5_000))
    assert room(HostMemory("h", 80_000, 2_000), residents) == 63_000
    assert room(HostMemory("h", None, 2_000, measured_free_mib=50_000), residents) == 48_000
    assert room(HostMemory("h", 80_000, 2_000, measured_free_mib=50_000), residents) == 48_000
    assert room(HostMemory("h", None), residents) is None


def test_it_does_not_check_unknown_memory() -> None:
    plan = plan_eviction(HostMemory("h", None), (), Incoming("vllm", 10**6))
    assert plan.fits and plan.reason == "no budget or measurement: not checked"


def test_it_chooses_the_host_with_fewest_evictions_then_most_room() -> None:
    plans = [
        EvictionPlan("a", True, evict=("x",), free_after_mib=50_000),
        EvictionPlan("b", True, free_after_mib=10_000),
        EvictionPlan("c", True, free_after_mib=30_000),
        EvictionPlan("d", False, waiting_for=("y",)),
    ]
    assert choose_host(plans).host == "c"
    assert choose_host([plans[3]]) is None

"""Idle-TTL unloads and reloads through `load_route`, against real simulated backends.

The simulated container speaks vLLM's sleep mode (`POST /sleep`, `POST /wake_up`); a
service whose `unload_route` / `load_route` point there is what the broker unloads when
its catalog model sits idle, and reloads before the next request. The unloader's clock
is the only seam: catalog TTLs are at least a minute.
"""

import asyncio
import time
from dataclasses import replace

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from arbiter.broker import metrics
from arbiter.broker.idle import IdleUnloader
from arbiter.broker.limits import ActivitySnapshot, ServiceActivity
from arbiter.broker.state import get_state
from arbiter.broker.table import CatalogEntry, RouteTable, ServiceRoute
from coordination.locks import acquire
from tests.broker.conftest import catalog_model, chat, register
from tests.helpers import Clock

TTL = 600


def route(name: str = "vllm-a", model: str = "chat-a", **fields) -> ServiceRoute:
    values = dict(
        id=1,
        name=name,
        host_id=1,
        host_name="gpu-1",
        kind="vllm",
        base_url="http://127.0.0.1:9",
        capabilities=("llm",),
        request_paths=(),
        health="up",
        health_since=None,
        loaded_model=model,
        unload_route="/sleep",
        load_route="/wake_up",
    )
    return ServiceRoute(**(values | fields))


def table(*services: ServiceRoute, ttl: int | None = TTL) -> RouteTable:
    entries = [
        CatalogEntry("chat-a", "chat-a", "llm", None, 6000, 0, idle_unload_seconds=ttl),
        CatalogEntry("chat-b", "chat-b", "llm", None, 6000, 0, idle_unload_seconds=None),
    ]
    return RouteTable(services=services, catalog=tuple(entries))


# -- when is a service due? (the rules, over plain values) -------------------------------
def due_after(seconds: float, service: ServiceRoute, activity=None, ttl=TTL) -> list[str]:
    """Names due `seconds` after the unloader first saw `service`."""
    unloader = IdleUnloader()
    activity = activity or ServiceActivity()
    unloader.due(table(service, ttl=ttl), activity, 1000.0)  # first seen at t=1000
    return [s.name for s in unloader.due(table(service, ttl=ttl), activity, 1000.0 + seconds)]


def test_it_unloads_a_model_idle_for_its_ttl_and_not_a_second_earlier():
    assert due_after(TTL - 1, route()) == []
    assert due_after(TTL, route()) == ["vllm-a"]


def test_it_counts_idleness_from_the_last_finished_request():
    activity = ServiceActivity()
    activity.last_finished["vllm-a"] = 1000.0 + 300
    assert due_after(TTL, route(), activity) == []
    assert due_after(TTL + 300, route(), activity) == ["vllm-a"]


@pytest.mark.parametrize(
    ("why", "service", "ttl"),
    [
        ("model has no idle TTL", route(model="chat-b"), TTL),
        ("model not in the catalog", route(model="elsewhere"), TTL),
        ("catalog sets no TTL", route(), None),
        ("service has no unload route", route(unload_route=""), TTL),
        ("backend is down", route(health="down"), TTL),
        ("not probed yet", route(health="unknown"), TTL),
        ("a swap runs on it", route(swap_id=7), TTL),
    ],
)
def test_it_never_unloads_the_listed_services_for_idleness(why, service, ttl):
    assert due_after(TTL * 10, service, ttl=ttl) == [], why


def test_it_keeps_a_service_with_a_request_in_flight_loaded_however_long_it_runs():
    activity = ServiceActivity()
    activity.started("vllm-a")
    assert due_after(TTL * 10, route(), activity) == []


def test_it_does_not_unload_an_unloaded_service_again():
    # Whichever broker process unloaded it: the routing table carries Service.unloaded_at.
    assert due_after(TTL * 10, route(unloaded_at=timezone.now())) == []


def test_it_puts_vllm_to_sleep_on_unified_memory_only_for_models_that_opt_in():
    """vLLM wake-ups crash on GB10 (vllm-project/vllm#50011): no idle sleep there unasked."""
    unified = route(unified_memory=True)
    assert due_after(TTL * 10, unified) == []
    opted_in = table(unified)
    entry = opted_in.catalog[0]
    opted_in = RouteTable(
        services=(unified,), catalog=(replace(entry, sleep_on_unified_memory=True),)
    )
    unloader = IdleUnloader()
    unloader.due(opted_in, ServiceActivity(), 1000.0)
    assert [s.name for s in unloader.due(opted_in, ServiceActivity(), 1000.0 + TTL)] == ["vllm-a"]
    # A generic backend's unload (not vLLM's sleep) is not affected.
    assert due_after(TTL, route(unified_memory=True, kind="http", unload_route="/unload")) == [
        "vllm-a"
    ]


def test_it_gives_a_newly_swapped_in_model_its_full_ttl():
    unloader, activity = IdleUnloader(), ServiceActivity()
    unloader.due(table(route(model="chat-b")), activity, 1000.0)
    # chat-a replaces chat-b at t=2000: its clock starts when it is first seen.
    assert unloader.due(table(route()), activity, 2000.0) == []
    assert unloader.due(table(route()), activity, 2000.0 + TTL - 1) == []
    assert [s.name for s in unloader.due(table(route()), activity, 2000.0 + TTL)] == ["vllm-a"]


# -- against a real simulated backend ------------------------------------------------------
needs_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sleepy(start_backend, transactional_db):
    """A vLLM backend in sleep mode's reach, its model with an idle TTL."""
    backend = start_backend("chat-a")
    register(
        "vllm-a",
        backend.url,
        loaded_model="chat-a",
        unload_route="/sleep",
        load_route="/wake_up",
    )
    catalog_model("chat-a", "chat-a", idle_unload_seconds=TTL)
    return backend


async def sweep(unloader: IdleUnloader) -> list[str]:
    state = get_state()
    return await unloader.sweep(await state.table.get(newer_than=time.monotonic()), state.residency)


async def unload_after_ttl() -> list[str]:
    """What an unloader sweeps away once the TTL has passed since it first looked."""
    clock = Clock()
    unloader = IdleUnloader(clock)
    assert await sweep(unloader) == []  # first seen now
    clock.now += TTL
    return await sweep(unloader)


async def counter(backend, name: str) -> float:
    return await sync_to_async(backend.counter)(name)


@needs_db
async def test_it_unloads_an_idle_model_and_the_next_request_reloads_it(aclient, sleepy):
    clock = Clock()
    unloader = IdleUnloader(clock)
    unloads = metrics.UNLOADS.labels("idle")._value.get()
    assert await sweep(unloader) == []  # first seen now
    clock.now += TTL
    assert await sweep(unloader) == ["vllm-a"]
    assert httpx.get(f"{sleepy.url}/is_sleeping").json() == {"is_sleeping": True}
    assert metrics.UNLOADS.labels("idle")._value.get() == unloads + 1
    assert await sweep(unloader) == []  # unloaded once

    response = await aclient.post("/v1/chat/completions", chat("chat-a"), "application/json")
    assert response.status_code == 200, response.content
    assert await counter(sleepy, "sim_wakes_total") == 1
    assert httpx.get(f"{sleepy.url}/is_sleeping").json() == {"is_sleeping": False}
    assert await sync_to_async(unloaded_at)() is None


@needs_db
async def test_it_shares_one_reload_among_concurrent_requests_for_an_unloaded_model(
    aclient, sleepy
):
    assert await unload_after_ttl() == ["vllm-a"]

    async def one():
        return await aclient.post("/v1/chat/completions", chat("chat-a"), "application/json")

    responses = await asyncio.gather(*(one() for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert await counter(sleepy, "sim_wakes_total") == 1
    assert await counter(sleepy, "sim_sleeps_total") == 1


@needs_db
async def test_it_unloads_nothing_while_someone_else_holds_the_lock(aclient, sleepy):
    clock = Clock()
    unloader = IdleUnloader(clock)
    await sweep(unloader)
    await sync_to_async(acquire)("nightly-eval", 600, "eval")
    clock.now += TTL
    assert await sweep(unloader) == []
    assert await counter(sleepy, "sim_sleeps_total") == 0


@needs_db
async def test_it_keeps_a_service_with_a_request_in_flight_in_another_process_loaded(
    aclient, sleepy
):
    # With REDIS_URL the other processes' figures come from Redis (`shared_limits`, held
    # by tests/ship/test_broker_processes.py); here the seam stands in for them.
    others = ActivitySnapshot(in_flight={"vllm-a": 1})

    async def other_processes() -> ActivitySnapshot:
        return others

    state = get_state()
    state.activity.others = other_processes
    clock = Clock()
    unloader = IdleUnloader(clock)
    await sweep(unloader)
    clock.now += TTL
    assert await sweep(unloader) == []
    # One that arrives there after the sweep chose the service: the unload backs off.
    url = f"{sleepy.url}/sleep"
    assert await state.residency.unload("vllm-a", url, "idle") is False
    assert await counter(sleepy, "sim_sleeps_total") == 0
    assert await sync_to_async(unloaded_at)() is None

    # Its request finished there just now: idle counts from then.
    others = ActivitySnapshot(last_finished={"vllm-a": clock.now})
    assert await sweep(unloader) == []
    clock.now += TTL
    assert await sweep(unloader) == ["vllm-a"]


@needs_db
async def test_it_answers_a_failed_reload_with_503_naming_the_service(aclient, sleepy):
    from arbiter.models import Service

    await sync_to_async(Service.objects.filter(name="vllm-a").update)(load_route="/no-such-route")
    assert await unload_after_ttl() == ["vllm-a"]

    response = await aclient.post("/v1/chat/completions", chat("chat-a"), "application/json")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "reload_failed" and error["service"] == "vllm-a"
    assert "load_route" in error["message"]
    assert response.headers["Retry-After"] == "10"
    still = await sync_to_async(unloaded_at)()  # still unloaded: the next request tries again
    assert still is not None and still <= timezone.now()


def test_it_kills_a_sleeping_engine_that_gets_a_request_as_vllm_does(start_backend):
    """vllm-project/vllm#15483: a completion sent to a sleeping vLLM crashes the engine
    ("CUDA error: an illegal memory access") and the server terminates; vLLM's launcher
    answers the EngineDeadError with an empty 500 (vllm/entrypoints/launcher.py)."""
    backend = start_backend("chat-a")
    body = chat("chat-a", max_tokens=1)
    assert httpx.post(f"{backend.url}/sleep").status_code == 200
    assert httpx.get(f"{backend.url}/health").status_code == 200  # like vLLM: still healthy
    assert httpx.get(f"{backend.url}/is_sleeping").json() == {"is_sleeping": True}
    asleep = httpx.post(f"{backend.url}/v1/chat/completions", json=body)
    assert asleep.status_code == 500 and asleep.content == b""
    assert backend.counter("sim_asleep_requests_total") == 1
    assert httpx.get(f"{backend.url}/health").status_code == 503  # the engine is dead
    assert backend.process.wait(timeout=10) == 1  # and the server process exits


def test_it_does_not_count_sleep_and_wake_as_inference_requests(start_backend):
    backend = start_backend("chat-a")
    body = chat("chat-a", max_tokens=1)
    assert httpx.post(f"{backend.url}/sleep").status_code == 200
    assert httpx.post(f"{backend.url}/sleep").status_code == 200  # already asleep: no-op
    assert httpx.post(f"{backend.url}/wake_up").status_code == 200
    assert httpx.post(f"{backend.url}/v1/chat/completions", json=body).status_code == 200
    assert backend.requests() == 1
    assert backend.counter("sim_asleep_requests_total") == 0


# -- recorded on the service row: shown, remembered across restarts, cleared by a swap ----
def unloaded_at(name: str = "vllm-a"):
    from arbiter.models import Service

    return Service.objects.values_list("unloaded_at", flat=True).get(name=name)


@needs_db
async def test_it_records_an_unload_for_the_dashboard_and_status_until_the_reload(aclient, sleepy):
    assert await unload_after_ttl() == ["vllm-a"]
    assert await sync_to_async(unloaded_at)() is not None
    status = await aclient.get("/api/status")
    [service] = [s for s in status.json()["services"] if s["name"] == "vllm-a"]
    assert service["unloaded_at"] is not None

    response = await aclient.post("/v1/chat/completions", chat("chat-a"), "application/json")
    assert response.status_code == 200
    assert await sync_to_async(unloaded_at)() is None


@needs_db
async def test_it_reloads_in_a_restarted_broker_what_an_earlier_process_unloaded(aclient, sleepy):
    from arbiter.models import Service

    httpx.post(f"{sleepy.url}/sleep")  # unloaded before this process started
    await sync_to_async(Service.objects.filter(name="vllm-a").update)(unloaded_at=timezone.now())
    response = await aclient.post("/v1/chat/completions", chat("chat-a"), "application/json")
    assert response.status_code == 200, response.content
    assert await counter(sleepy, "sim_wakes_total") == 1


@needs_db
def test_it_clears_the_unloaded_mark_when_a_swap_on_the_service_completes(sleepy):
    from arbiter.engine.swaps.store import record_transition
    from arbiter.models import Host, Service, Swap

    service = Service.objects.get(name="vllm-a")
    Service.objects.filter(pk=service.pk).update(unloaded_at=timezone.now())
    swap = Swap.objects.create(
        model_key="chat-a", host=Host.objects.get(name="gpu-1"), service=service, state="launching"
    )
    record_transition(swap.pk, Swap.WAITING_HEALTHY)
    assert unloaded_at() is not None  # not before it completes
    record_transition(swap.pk, Swap.COMPLETE)
    assert unloaded_at() is None


@needs_db
async def test_it_does_not_reload_while_someone_else_holds_the_lock(aclient, sleepy):
    assert await unload_after_ttl() == ["vllm-a"]
    await sync_to_async(acquire)("nightly-eval", 600, "eval")
    response = await aclient.post("/v1/chat/completions", chat("chat-a"), "application/json")
    assert response.status_code == 423
    assert response.json()["error"]["holder"] == "nightly-eval"
    assert int(response.headers["Retry-After"]) > 0
    assert await counter(sleepy, "sim_wakes_total") == 0


@needs_db
async def test_it_unloads_nothing_on_a_database_error_while_claiming(
    aclient, sleepy, monkeypatch, caplog
):
    """Without its claim on the row no other process would know: the unload is skipped
    (the seam: the conditional update raises as a locked SQLite database would)."""
    from django.db import OperationalError

    from arbiter.broker import residency

    def locked(*args):
        raise OperationalError("database is locked")

    monkeypatch.setattr(residency, "claim", locked)
    assert await unload_after_ttl() == []
    assert await counter(sleepy, "sim_sleeps_total") == 0
    response = await aclient.post("/v1/chat/completions", chat("chat-a"), "application/json")
    assert response.status_code == 200, response.content
    assert "broker: could not claim the unload of vllm-a" in caplog.text

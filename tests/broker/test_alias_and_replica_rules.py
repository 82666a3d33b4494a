"""Aliases and replicas as routing decides them, over hand-made tables (pure)."""

import os
from datetime import UTC, datetime

import pytest

from arbiter.broker import permissions
from arbiter.broker.errors import ModelNotAllowed, ModelNotFound
from arbiter.broker.keys import Caller
from arbiter.broker.routing import (
    Forward,
    Load,
    WaitForSwap,
    least_busy,
    list_models,
    route_capability,
    route_model,
)
from arbiter.broker.shared_limits import SharedLimits
from arbiter.broker.state import BrokerState
from arbiter.broker.table import ActiveSwap, AliasEntry, CatalogEntry, RouteTable
from arbiter.broker.views import in_flight_now
from tests.broker.test_routing_rules import CHAT, service

QWEN = CatalogEntry("qwen", "Qwen/Qwen3-8B", "llm", None, 6000, 0)
LLAMA = CatalogEntry("llama", "llama-8b", "llm", None, 6000, 0)
ALIAS = AliasEntry("chat-default", ("qwen", "llama"), 7)
MODEL_NAME = LLAMA.served_name


def table(*services, swaps=(), aliases=(ALIAS,)) -> RouteTable:
    return RouteTable(tuple(services), (QWEN, LLAMA), tuple(swaps), aliases=tuple(aliases))


def route(t: RouteTable, model: str = "chat-default"):
    return route_model(t, model, CHAT, retry_after=5)


def test_it_routes_an_alias_to_the_first_listed_model_that_is_loaded() -> None:
    decision = route(table(service("b", "llama-8b")))
    assert isinstance(decision, Forward) and decision.service.name == "b"
    # The backend knows the served name only: the body's `model` is rewritten to it.
    assert (decision.served_model, decision.limit_key) == ("llama-8b", "llama-8b")
    both = route(table(service("b", "llama-8b"), service("a", "Qwen/Qwen3-8B")))
    assert isinstance(both, Forward) and both.service.name == "a"
    assert both.served_model == "Qwen/Qwen3-8B"


def test_it_skips_a_listed_model_whose_service_is_down_swapping_or_asleep() -> None:
    awake = service("b", "llama-8b")
    for first in (
        service("a", "Qwen/Qwen3-8B", "down"),
        service("a", "Qwen/Qwen3-8B", swap_id=4),
        service("a", "Qwen/Qwen3-8B", unloaded_at=datetime(2026, 1, 1, tzinfo=UTC)),
    ):
        decision = route(table(first, awake))
        assert isinstance(decision, Forward) and decision.service.name == "b", first


def test_it_loads_the_first_listed_model_when_none_is_loaded_or_waits_for_its_load() -> None:
    assert route(table(service("a", "other"))) == Load(QWEN)
    loading = table(swaps=[ActiveSwap(3, 1, 9, "qwen", QWEN.served_name)])
    assert route(loading) == WaitForSwap(3, "qwen is being loaded by swap 3")


def test_it_answers_404_for_an_alias_that_lists_no_model_the_catalog_has() -> None:
    with pytest.raises(ModelNotFound):
        route(table(aliases=[AliasEntry("chat-default", ("gone",))]))


def test_it_prefers_a_model_over_an_alias_of_the_same_name() -> None:
    # Validation keeps the names apart; a table read mid-change still routes the model.
    clash = AliasEntry("llama-8b", ("qwen",))
    decision = route(table(service("b", "llama-8b"), aliases=[clash]), "llama-8b")
    assert isinstance(decision, Forward) and decision.served_model == ""


def test_it_lists_each_alias_with_the_model_it_points_to_now() -> None:
    listed = list_models(table(service("b", "llama-8b")))["data"]
    alias = next(m for m in listed if m["id"] == "chat-default")
    assert alias["object"] == "model" and alias["created"] == 7
    assert alias["arbiter"] == {
        "state": "alias",
        "model_keys": ["qwen", "llama"],
        "points_to": "llama-8b",
        "points_to_key": "llama",
    }
    nothing_loaded = list_models(table())["data"]
    assert next(m for m in nothing_loaded if m["id"] == "chat-default")["arbiter"]["points_to"] == (
        "Qwen/Qwen3-8B"
    )


def test_it_carries_the_other_usable_replicas_and_sends_to_the_least_busy() -> None:
    t = table(
        service("r1", "llama-8b"),
        service("r2", "llama-8b"),
        service("r3", "llama-8b", "down"),
        service("r4", "llama-8b", swap_id=2),
        service("r5", "llama-8b", "unknown"),
    )
    decision = route(t, "llama-8b")
    assert isinstance(decision, Forward)
    assert [s.name for s in (decision.service, *decision.replicas)] == ["r1", "r2", "r5"]
    # Ties keep routing's order; the fewest in flight wins; up before unknown.
    assert least_busy(decision, {}).service.name == "r1"
    assert least_busy(decision, {"r1": 3, "r2": 1}).service.name == "r2"
    assert least_busy(decision, {"r1": 3, "r2": 3}).service.name == "r1"
    assert least_busy(decision, {"r1": 9, "r2": 9, "r5": 0}).service.name == "r1"
    moved = least_busy(decision, {"r1": 2})
    assert [s.name for s in moved.replicas] == ["r1", "r5"]
    # An alias keeps the replicas of the model it resolves to.
    via_alias = route(t)
    assert isinstance(via_alias, Forward) and len(via_alias.replicas) == 2


def test_it_fails_over_once_to_another_replica_never_the_same() -> None:
    decision = route(table(service("r1", "llama-8b"), service("r2", "llama-8b")), "llama-8b")
    assert isinstance(decision, Forward)
    retry = decision.failover()
    assert retry is not None and retry.service.name == "r2" and retry.replicas == ()
    assert retry.failover() is None  # once
    alone = route(table(service("r1", "llama-8b")), "llama-8b")
    assert isinstance(alone, Forward) and alone.failover() is None


def test_it_keeps_capability_routes_to_one_service_without_replicas() -> None:
    t = table(service("r1", "llama-8b"), service("r2", "llama-8b"))
    decision = route_capability(t, ("llm",), "/v1/models", retry_after=5)
    assert isinstance(decision, Forward) and decision.replicas == ()


def caller(*models: str) -> Caller:
    return Caller(key_id=1, name="limited", role="inference", allowed_models=models)


def test_it_routes_a_limited_key_only_to_alias_models_it_may_use() -> None:
    t = table(service("a", "Qwen/Qwen3-8B"))
    limited = caller("llama")
    permissions.check_model(limited, "chat-default", t)  # it may use one of them
    narrowed = permissions.narrowed(limited, t)
    # Qwen is loaded, but this key may not use it: the alias loads llama for it.
    assert route(narrowed) == Load(LLAMA)
    with pytest.raises(ModelNotAllowed):
        permissions.check_model(caller("other"), "chat-default", t)
    # Naming the alias in a key's list grants nothing by itself.
    with pytest.raises(ModelNotAllowed):
        permissions.check_model(caller("chat-default"), "chat-default", t)
    listed = list_models(narrowed)["data"]
    shown = permissions.visible_models(limited, listed, narrowed)
    alias = next(m for m in shown if m["id"] == "chat-default")
    assert alias["arbiter"]["model_keys"] == ["llama"]
    assert alias["arbiter"]["points_to"] == "llama-8b"


REDIS_URL = os.environ.get("REDIS_URL", "")


@pytest.mark.skipif(not REDIS_URL, reason="needs Redis: set REDIS_URL (CI runs it)")
async def test_it_balances_replicas_on_the_requests_of_every_process(settings) -> None:
    """With REDIS_URL, another process's requests in flight count in the pick."""
    settings.REDIS_URL = REDIS_URL
    other = SharedLimits(REDIS_URL, settings.ARBITER_BROKER_REDIS_PREFIX, owner="other")
    state = BrokerState()  # this process: its own owner mark, the same prefix
    try:
        for _ in range(3):
            await other.acquire(MODEL_NAME, service="r1", client="c")
        decision = route(table(service("r1", MODEL_NAME), service("r2", MODEL_NAME)), MODEL_NAME)
        assert isinstance(decision, Forward)
        assert least_busy(decision, await in_flight_now(state)).service.name == "r2"
        state.activity.started("r2")  # this process sends 4 to r2: now r1 is the lesser
        state.activity.started("r2")
        state.activity.started("r2")
        state.activity.started("r2")
        assert least_busy(decision, await in_flight_now(state)).service.name == "r1"
    finally:
        keys = await other.redis.keys(settings.ARBITER_BROKER_REDIS_PREFIX + "*")
        if keys:
            await other.redis.delete(*keys)
        await other.aclose()
        await state.aclose()

"""Routing decisions over hand-made tables (pure: no database, no network)."""

from datetime import UTC, datetime, timedelta

import pytest

from arbiter.broker.errors import BackendUnavailable, ModelNotFound, RouteNotFound
from arbiter.broker.routing import Forward, Load, WaitForSwap, route_capability, route_model
from arbiter.broker.table import ActiveSwap, CatalogEntry, RouteTable, ServiceRoute, _effective

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHAT = "/v1/chat/completions"


def service(name: str, model: str = "", health: str = "up", **fields) -> ServiceRoute:
    values = {
        "id": abs(hash(name)) % 10_000,
        "host_id": 1,
        "host_name": "gpu-1",
        "kind": "vllm",
        "base_url": f"http://{name}:8000",
        "capabilities": ("llm",),
        "request_paths": (CHAT,),
        "health_since": T0,
    }
    values.update(fields)
    return ServiceRoute(name=name, health=health, loaded_model=model, **values)


ENTRY = CatalogEntry("qwen", "Qwen/Qwen3-0.6B", "llm", "gpu-1", 6000, 0)


def route(table: RouteTable, model: str, path: str = CHAT):
    return route_model(table, model, path, retry_after=5)


def test_it_sends_a_loaded_model_to_its_service_up_before_unknown() -> None:
    table = RouteTable((service("b", "m", "unknown"), service("a", "m", "down"), service("c", "m")))
    decision = route(table, "m")
    assert isinstance(decision, Forward) and decision.service.name == "c"
    assert decision.limit_key == "m" and decision.served_model == ""


def test_it_answers_503_naming_the_first_when_all_replicas_are_down() -> None:
    table = RouteTable((service("b", "m", "down"), service("a", "m", "down")))
    with pytest.raises(BackendUnavailable) as caught:
        route(table, "m")
    body = caught.value.as_body()["error"]
    assert (body["service"], body["since"]) == ("a", T0.isoformat())
    assert caught.value.headers == {"Retry-After": "5"}


def test_it_waits_for_a_service_being_swapped() -> None:
    table = RouteTable((service("a", "m", swap_id=7),))
    assert route(table, "m") == WaitForSwap(7, "a is being swapped")


def test_it_loads_a_catalog_model_loaded_nowhere_and_waits_for_one_loading() -> None:
    table = RouteTable((service("a", "other"),), (ENTRY,))
    assert route(table, "Qwen/Qwen3-0.6B") == Load(ENTRY)
    assert route(table, "qwen") == Load(ENTRY)
    loading = RouteTable(
        table.services, (ENTRY,), (ActiveSwap(3, 1, 9, "qwen", ENTRY.served_name),)
    )
    assert isinstance(route(loading, "qwen"), WaitForSwap)


def test_it_rewrites_a_catalog_key_to_the_served_name() -> None:
    table = RouteTable((service("a", ENTRY.served_name),), (ENTRY,))
    decision = route(table, "qwen")
    assert isinstance(decision, Forward)
    assert decision.served_model == ENTRY.served_name and decision.limit_key == ENTRY.served_name


def test_it_sends_any_model_to_generic_services_on_the_paths_they_declare() -> None:
    tts = service("tts", kind="http", request_paths=("/v1/audio/speech",))
    table = RouteTable((service("a", "m"), tts))
    decision = route(table, "kokoro", "/v1/audio/speech")
    assert isinstance(decision, Forward) and decision.service.name == "tts"
    with pytest.raises(ModelNotFound):
        route(table, "kokoro")  # vLLM reports its models: an unknown one is never sent


def test_it_picks_the_first_healthy_service_for_a_capability() -> None:
    table = RouteTable(
        (service("a", health="down"), service("b"), service("t", capabilities=("tts",)))
    )
    decision = route_capability(table, ("llm",), "/v1/models", 5)
    assert isinstance(decision, Forward) and decision.service.name == "b"
    assert decision.limit_key == "llm:b"
    decision = route_capability(table, ("audio", "tts"), "/audio/x", 5)
    assert decision.service.name == "t" and decision.path == "/audio/x"
    with pytest.raises(RouteNotFound):
        route_capability(table, ("image",), "/x", 5)


def test_it_trusts_a_swap_completed_after_the_last_probe_until_the_next_probe() -> None:
    stale = service("a", "old-model", "down")
    done = {stale.id: (T0 + timedelta(seconds=10), "new-model")}
    fresh = _effective(stale, T0, done)
    assert (fresh.loaded_model, fresh.health) == ("new-model", "up")
    assert _effective(stale, T0 + timedelta(seconds=11), done) == stale  # probed since
    assert _effective(stale, None, done).loaded_model == "new-model"

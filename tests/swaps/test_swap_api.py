"""The swap API's answers: created, validated, listed, and every bad input's status."""

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from arbiter.engine.swaps import store as swap_store
from arbiter.errors import Conflict
from arbiter.models import Host, Swap, SwapTransition
from catalog.models import CatalogModel
from tests.swaps.conftest import make_model, start_swap

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_creates_a_pending_swap_with_its_urls(cluster, aclient):
    response = await start_swap(aclient, "qwen3-small", dry_run=True)
    assert response.status_code == 202
    body = response.json()
    assert body == {
        "id": body["id"],
        "state": "pending",
        "dry_run": True,
        "url": f"/api/swap/{body['id']}",
        "stream_url": f"/api/swap/{body['id']}/stream",
        "log_url": f"/api/swap/{body['id']}/log",
    }
    swap = await sync_to_async(Swap.objects.select_related("host", "service").get)(pk=body["id"])
    assert (swap.model_key, swap.host.name, swap.service.name) == (
        "qwen3-small",
        "sim-b",
        "sim-b-vllm",
    )
    assert swap.requested_by == "key:swap tests"


async def test_it_names_the_model_when_it_is_not_in_the_catalog(cluster_rows, aclient):
    response = await start_swap(aclient, "no-such-model")
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "model"
    assert await sync_to_async(Swap.objects.count)() == 0


async def test_it_names_the_host_when_it_is_not_in_the_inventory(cluster_rows, aclient):
    response = await start_swap(aclient, "qwen3-small", host="sim-zz")
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "host"


async def test_it_needs_a_host_when_the_model_has_no_default_and_there_are_several(
    cluster_rows, aclient
):
    response = await start_swap(aclient, "qwen3-small", host=None)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "host"


async def test_it_uses_the_model_s_default_host(cluster, aclient):
    await sync_to_async(
        lambda: CatalogModel.objects.filter(key="smollm2").update(
            default_host=Host.objects.get(name="sim-gb10")
        )
    )()
    response = await start_swap(aclient, "smollm2", host=None)
    assert response.status_code == 202
    swap = await sync_to_async(Swap.objects.select_related("host").get)(pk=response.json()["id"])
    assert swap.host.name == "sim-gb10"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "model"),
        ({"model": ""}, "model"),
        ({"model": 5}, "model"),
        ({"model": "qwen3-small", "dry_run": "yes"}, "dry_run"),
        ({"model": "qwen3-small", "host": ["sim-b"]}, "host"),
        ({"model": "qwen3-small", "hots": "sim-b"}, "hots"),
    ],
)
async def test_it_rejects_a_bad_body_naming_the_field(cluster_rows, aclient, body, field):
    response = await aclient.post("/api/swap", body, content_type="application/json")
    assert response.status_code == 422, response.content
    assert response.json()["error"]["field"] == field
    assert await sync_to_async(Swap.objects.count)() == 0


async def test_it_refuses_requests_without_credentials(cluster_rows):
    response = await AsyncClient().post(
        "/api/swap", {"model": "qwen3-small"}, content_type="application/json"
    )
    assert response.status_code == 401


async def test_it_turns_the_database_s_one_active_swap_rule_into_409(cluster_rows, monkeypatch):
    """Two requests racing past the check: the unique constraint decides, and says who."""
    first = await sync_to_async(swap_store.create_swap)("qwen3-small", "sim-b", False, "a")
    monkeypatch.setattr(swap_store, "active_swap_on", _none_then_real())
    with pytest.raises(Conflict) as raised:
        await sync_to_async(swap_store.create_swap)("smollm2", "sim-b", False, "b")
    assert raised.value.extra["swap_id"] == first.pk
    assert await sync_to_async(Swap.objects.count)() == 1
    assert await sync_to_async(SwapTransition.objects.count)() == 1


def _none_then_real():
    real = swap_store.active_swap_on
    calls = []

    def fake(host_id):
        calls.append(host_id)
        return None if len(calls) == 1 else real(host_id)

    return fake


async def test_it_lists_recent_swaps_newest_first(cluster, aclient):
    ids = []
    for host in ("sim-a", "sim-b", "sim-gb10"):
        ids.append((await start_swap(aclient, "qwen3-small", host=host)).json()["id"])
    response = await aclient.get("/api/swaps?limit=2")
    assert response.status_code == 200
    assert [s["id"] for s in response.json()] == ids[::-1][:2]
    only_b = (await aclient.get("/api/swaps?host=sim-b")).json()
    assert [s["id"] for s in only_b] == [ids[1]]
    assert (await aclient.get("/api/swaps?limit=0")).status_code == 422


async def test_it_answers_404_for_unknown_swaps(cluster_rows, aclient):
    for path in ("/api/swap/999", "/api/swap/999/log"):
        response = await aclient.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["field"] == "swap_id"
    assert (await aclient.post("/api/swap/999/cancel")).status_code == 404


# -- validate ------------------------------------------------------------------------
async def test_it_returns_every_check_and_the_exact_command_from_validate_without_running_it(
    cluster, aclient
):
    before = len(cluster.commands("sim-b"))
    response = await aclient.post(
        "/api/swap/qwen3-small/validate", {"host": "sim-b"}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["ok"] is True
    assert [c["name"] for c in body["checks"]] == [
        "model",
        "catalog",
        "host",
        "files",
        "hf",
        "hub_cache",
        "vram",
        "memory",
        "sleep_mode",
        "image",
        "container",
        "slot",
        "ports",
        "launch_command",
    ]
    assert body["command"].startswith("docker run --detach --name=arbiter-vllm --gpus=all")
    assert body["checks"][-1]["detail"] == body["command"]
    assert body["argv"][:2] == ["docker", "run"]
    sent = [c.argv for c in cluster.commands("sim-b")[before:]]
    assert sent and not any(argv[:2] == ["docker", "run"] for argv in sent)
    assert await sync_to_async(Swap.objects.count)() == 0


async def test_it_reports_failing_checks_from_validate(cluster, aclient):
    await sync_to_async(make_model)(
        "huge", served_name="huge", estimated_vram_mib=500_000, hub_repo="org/huge"
    )
    await sync_to_async(make_model)(
        "gone", hub_repo="", local_path="/models/finetunes/gone", served_name="gone"
    )
    huge = (
        await aclient.post("/api/swap/huge/validate", {"host": "sim-b"}, "application/json")
    ).json()
    assert huge["ok"] is False
    assert {c["name"]: c["ok"] for c in huge["checks"]}["vram"] is False
    gone = (
        await aclient.post("/api/swap/gone/validate", {"host": "sim-b"}, "application/json")
    ).json()
    files = next(c for c in gone["checks"] if c["name"] == "files")
    assert files["ok"] is False and "/models/finetunes/gone" in files["detail"]


async def test_it_checks_an_unreachable_host_in_validate(cluster, aclient):
    # A first contact learns the SSH user's home (the caches' paths in the command).
    await aclient.post("/api/swap/qwen3-small/validate", {"host": "sim-a"}, "application/json")
    cluster.go_down("sim-a")
    body = (
        await aclient.post("/api/swap/qwen3-small/validate", {"host": "sim-a"}, "application/json")
    ).json()
    checks = {c["name"]: c for c in body["checks"]}
    assert body["ok"] is False
    assert checks["host"]["ok"] is False and "cannot connect" in checks["host"]["detail"]
    assert checks["launch_command"]["ok"] is True  # the command is still shown


async def test_it_names_unknown_models_and_hosts_in_validate(cluster_rows, aclient):
    missing = await aclient.post("/api/swap/nope/validate", {}, "application/json")
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "model"
    no_host = await aclient.post(
        "/api/swap/qwen3-small/validate", {"host": "sim-zz"}, "application/json"
    )
    assert no_host.status_code == 404
    assert no_host.json()["error"]["field"] == "host"
    ambiguous = await aclient.post("/api/swap/qwen3-small/validate", "", "application/json")
    assert ambiguous.status_code == 422
    assert ambiguous.json()["error"]["field"] == "host"

"""`POST /api/swap` behind the swap lock: the status table's swap rows, cell by cell.

States and tokens as in test_lock_matrix ("valid" = the caller's latest grant, "stale"
= an earlier grant it released, "garbage" = never issued). The swap check and the
swap's creation happen in one transaction, and the swap records the lock generation.
"""

import asyncio

import pytest
from asgiref.sync import async_to_sync

from arbiter.engine.swaps import store as swap_store
from arbiter.engine.swaps.dispatch import SwapDispatcher
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Swap
from catalog.loader import seed_catalog_file
from coordination import locks
from tests.coordination.test_lock_matrix import STATES, TOKENS, build_state, snapshot

pytestmark = pytest.mark.django_db

SWAP_EXPECTED = {
    ("free", "none"): 202,
    ("free", "valid"): 202,  # a free lock gates nothing; the token is ignored
    ("free", "stale"): 202,
    ("free", "garbage"): 202,
    ("held by caller", "none"): 423,
    ("held by caller", "valid"): 202,
    ("held by caller", "stale"): 423,
    ("held by caller", "garbage"): 423,
    ("held by another", "none"): 423,
    ("held by another", "valid"): 423,  # the caller's token is no longer the holder's
    ("held by another", "stale"): 423,
    ("held by another", "garbage"): 423,
    ("expired", "none"): 202,
    ("expired", "valid"): 202,
    ("expired", "stale"): 202,
    ("expired", "garbage"): 202,
}


@pytest.fixture
def cluster(sim_cluster):
    """The simulator's hosts and demo catalog, loaded as `make run` loads them."""
    apply_inventory(load_inventory(sim_cluster.config_path))
    seed_catalog_file(str(sim_cluster.config_path.with_name("catalog.yaml")))
    return sim_cluster


def _model_key() -> str:
    from catalog.models import CatalogModel

    return CatalogModel.objects.filter(local_path="").values_list("key", flat=True).first()


def _post_swap(client, token, **extra):
    headers = {} if token is None else {"X-Swap-Lock-Token": token}
    body = {"model": _model_key(), "host": "sim-a", **extra}
    return client.post("/api/swap", body, content_type="application/json", headers=headers)


@pytest.mark.parametrize("token_kind", TOKENS)
@pytest.mark.parametrize("state", STATES)
def test_it_gates_swaps_per_the_status_table(cluster, key_client, state, token_kind):
    tokens = build_state(state)
    before = snapshot()
    response = _post_swap(key_client, tokens[token_kind])
    expected = SWAP_EXPECTED[(state, token_kind)]
    assert response.status_code == expected, response.content
    body = response.json()
    assert snapshot() == before  # asking to swap never changes the lock
    for token in tokens.values():
        if token:
            assert token not in response.content.decode()
    if expected == 423:
        assert set(body["error"]) == {"type", "message", "holder", "expires_at"}
        assert body["error"]["holder"] == before["holder"]
        assert body["error"]["expires_at"] == locks.iso(before["expires_at"])
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert not Swap.objects.exists()  # nothing half-written
    else:
        swap = Swap.objects.get(pk=body["id"])
        held = state == "held by caller"
        assert swap.lock_generation == (before["generation"] if held else None)


def test_it_lets_dry_runs_through_a_held_lock(cluster, key_client):
    build_state("held by another")
    response = _post_swap(key_client, None, dry_run=True)
    assert response.status_code == 202
    assert Swap.objects.get(pk=response.json()["id"]).dry_run


@pytest.mark.django_db(transaction=True)
def test_it_issues_no_ssh_command_for_a_stale_holder(cluster, key_client):
    tokens = build_state("held by another")
    commands_before = {h: len(cluster.commands(h)) for h in ("sim-a", "sim-b", "sim-gb10")}
    assert _post_swap(key_client, tokens["stale"]).status_code == 423
    assert (
        key_client.delete(
            "/api/swap/lock", headers={"X-Swap-Lock-Token": tokens["stale"]}
        ).status_code
        == 409
    )
    # An engine round finds nothing to run on the stale holder's behalf.
    assert async_to_sync(SwapDispatcher().tick)() == []
    assert {h: len(cluster.commands(h)) for h in commands_before} == commands_before
    assert not Swap.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_fails_a_swap_accepted_before_someone_else_took_the_lock(cluster, key_client):
    # Accepted while the lock was free, but another party acquires before the engine runs.
    response = _post_swap(key_client, None)
    assert response.status_code == 202
    locks.acquire("nightly-eval", 60, "reserved the GPU")
    commands_before = len(cluster.commands("sim-a"))

    async def run_engine_round() -> str:
        dispatcher = SwapDispatcher()
        await dispatcher.tick()
        (task,) = dispatcher.tasks.values()
        return await asyncio.wait_for(task, timeout=30)

    assert async_to_sync(run_engine_round)() == Swap.FAILED
    swap = Swap.objects.get(pk=response.json()["id"])
    assert "nightly-eval" in swap.error and "generation" in swap.error
    docker_runs = [c for c in cluster.commands("sim-a")[commands_before:] if "run" in c.argv[:2]]
    assert docker_runs == []
    assert swap_store.fencing_problem(swap.pk) != ""

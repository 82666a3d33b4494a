"""The lock guards every GPU change (issue 13, item 2): the lock matrix.

While party A holds the swap lock, every route that changes what runs on a GPU, called
by anyone else (no token, an earlier grant's stale token, a token never issued), answers
423 with the holder, `expires_at` and `Retry-After` - exactly like `POST /api/swap` - and
changes nothing: no row (swaps, services, catalog, the lock) and no command sent to a simulated
host. The same call with A's token goes through. The broker, which holds no token,
neither evicts nor unloads an idle model while the lock is held.

`GATED` and `NOT_GPU_CHANGES` together name every write route of the API: a route added
later without a decision makes `test_it_has_a_decision_for_every_write_route` fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from arbiter.api.root import api
from arbiter.broker.idle import IdleUnloader
from arbiter.broker.limits import ServiceActivity
from arbiter.broker.residency import Residency
from arbiter.engine.ssh import get_pool
from arbiter.engine.swaps.store import create_swap
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Service, Swap
from catalog.models import CatalogModel
from coordination import locks
from coordination.models import SwapLock
from tests.broker.conftest import UnloadableBackend, register
from tests.broker.test_residency import route as service_route
from tests.broker.test_residency import table
from tests.catalog.conftest import parse_sse
from tests.helpers import KeyAsyncClient

HOSTS = ("sim-a", "sim-b", "sim-gb10")
TTL = 120

# (method, ninja path) -> when the gate applies.
GATED = {
    ("POST", "/swap"): "always (every cell: test_swap_gate.py); a dry run passes",
    ("POST", "/swap/{int:swap_id}/cancel"): "always",
    ("PATCH", "/services/{name}"): "when `disabled` changes",
    ("DELETE", "/services/{name}/edits"): "when it puts a different `disabled` back",
    ("PUT", "/models/{key}"): "when the model is on a GPU (catalog.api.on_a_gpu)",
    ("DELETE", "/models/{key}"): "when the model is on a GPU (catalog.api.on_a_gpu)",
    ("DELETE", "/models/{key}/disk"): "always",
    ("POST", "/models/{key}/download"): "always",
    ("DELETE", "/hosts/{name}/orphans/{container}"): "always (docker rm --force on a host)",
}
# (method, ninja path) -> why it changes nothing on a GPU.
NOT_GPU_CHANGES = {
    ("POST", "/keys"): "credentials",
    ("DELETE", "/keys/{key_id}"): "credentials",
    ("PATCH", "/hosts/{name}"): "the broker's planning budget; nothing is stopped",
    ("DELETE", "/hosts/{name}/edits"): "the broker's planning budget; nothing is stopped",
    ("POST", "/models"): "a new model runs nowhere",
    ("POST", "/swap/lock"): "the lock itself",
    ("DELETE", "/swap/lock"): "the lock itself (force release by staff stays)",
    # A lease only refuses others' GPU changes (coordination.leases); it starts, stops
    # and loads nothing, and the lock does not gate it: the two compose.
    ("POST", "/leases"): "a lease itself: it changes nothing on a GPU",
    ("PATCH", "/leases/{lease_id}"): "a lease itself: it changes nothing on a GPU",
    ("DELETE", "/leases/{lease_id}"): "a lease itself: it changes nothing on a GPU",
    ("POST", "/leases/{lease_id}/force-release"): "a lease itself (staff, audited)",
    ("POST", "/swap/{key}/validate"): "read-only pre-flight",
    ("POST", "/webhooks"): "notifications",
    ("PATCH", "/webhooks/{webhook_id}"): "notifications",
    ("DELETE", "/webhooks/{webhook_id}"): "notifications",
    ("POST", "/webhooks/{webhook_id}/test"): "notifications (one test event)",
    ("POST", "/webhooks/{webhook_id}/rotate"): "notifications",
    ("POST", "/webhooks/deliveries/{delivery_id}/redeliver"): "notifications",
    ("POST", "/aliases"): "a name for catalog models; it loads nothing",
    ("PUT", "/aliases/{name}"): "a name for catalog models; it loads nothing",
    ("DELETE", "/aliases/{name}"): "a name for catalog models; it loads nothing",
    ("POST", "/schedule"): "schedules are announcements, never executed",
    ("DELETE", "/schedule/{job_id}"): "schedules are announcements, never executed",
}


def write_routes() -> set[tuple[str, str]]:
    routes = set()
    for _prefix, router in api._routers:
        for path, view in router.path_operations.items():
            for operation in view.operations:
                routes.update((method, path) for method in operation.methods if method != "GET")
    return routes


def test_it_has_a_decision_for_every_write_route():
    assert not set(GATED) & set(NOT_GPU_CHANGES)
    assert write_routes() == set(GATED) | set(NOT_GPU_CHANGES)


# -- the matrix, on the simulated cluster ------------------------------------------------
@pytest.fixture
async def aclient(admin_key) -> AsyncIterator[KeyAsyncClient]:
    # An admin key: some gated routes (service disable/enable) are admin-only
    # (arbiter.route_policy), and the lock holds against admins too.
    yield KeyAsyncClient(admin_key)
    await get_pool().close()


@pytest.fixture
def scene(sim_cluster, transactional_db):
    """A's lock over: a model served on sim-a (its service enabled by an edit), a pending
    swap on sim-b, a model that runs nowhere."""
    apply_inventory(load_inventory(sim_cluster.config_path))
    served = CatalogModel.objects.create(
        key="served", hub_repo="Qwen/Qwen3-0.6B", served_name="Qwen/Qwen3-0.6B"
    )
    CatalogModel.objects.create(
        key="other", hub_repo="Qwen/Qwen3-1.7B", served_name="Qwen/Qwen3-1.7B"
    )
    CatalogModel.objects.create(key="idle", hub_repo="acme/idle-1B", served_name="acme/idle-1B")
    service = Service.objects.filter(host__name="sim-a", kind=Service.KIND_VLLM).first()
    assert service is not None
    # Enabled in Arbiter although the cluster file disables it: a reset would disable it.
    Service.objects.filter(pk=service.pk).update(
        loaded_model=served.served_name, disabled=False, inventory_overrides={"disabled": True}
    )
    pending = create_swap("other", "sim-b", False, "someone")
    earlier = locks.acquire("party-b", TTL, "an earlier job")  # its token goes stale
    locks.release(earlier.token)
    grant = locks.acquire("party-a", TTL, "tonight's eval")
    return {
        "cluster": sim_cluster,
        "service": service.name,
        "swap": pending.pk,
        "token": grant.token,
        "stale": earlier.token,
        "expires_at": locks.iso(grant.expires_at),
    }


def world() -> dict:
    return {
        "swaps": list(Swap.objects.order_by("pk").values()),
        "services": list(Service.objects.order_by("pk").values()),
        "models": list(CatalogModel.objects.order_by("pk").values()),
        "lock": list(SwapLock.objects.order_by("pk").values()),
    }


def sent(cluster) -> dict[str, int]:
    return {host: len(cluster.commands(host)) for host in HOSTS}


def calls(scene: dict) -> list[tuple[tuple[str, str], str, str, dict | None]]:
    """One call per gated route: (route, method, url, JSON body), in an order the holder
    can run them (cancel before a new swap on the same host, the download before the
    delete from disk, the model deleted last)."""
    return [
        (("POST", "/swap/{int:swap_id}/cancel"), "post", f"/api/swap/{scene['swap']}/cancel", None),
        (("POST", "/swap"), "post", "/api/swap", {"model": "other", "host": "sim-b"}),
        (
            ("PATCH", "/services/{name}"),
            "patch",
            f"/api/services/{scene['service']}",
            {"disabled": True},
        ),
        (
            ("DELETE", "/services/{name}/edits"),
            "delete",
            f"/api/services/{scene['service']}/edits",
            None,
        ),
        (
            ("PUT", "/models/{key}"),
            "put",
            "/api/models/served",
            {"hub_repo": "Qwen/Qwen3-0.6B", "estimated_vram_mib": 4321},
        ),
        (("POST", "/models/{key}/download"), "post", "/api/models/other/download?host=sim-a", None),
        (("DELETE", "/models/{key}/disk"), "delete", "/api/models/other/disk?host=sim-a", None),
        (("DELETE", "/models/{key}"), "delete", "/api/models/served", None),
        (
            ("DELETE", "/hosts/{name}/orphans/{container}"),
            "delete",
            "/api/hosts/sim-a/orphans/arbiter-stray",
            None,
        ),
    ]


async def send(client, method: str, url: str, body: dict | None, token: str | None):
    headers = {} if token is None else {locks.TOKEN_HEADER: token}
    if body is None:
        return await getattr(client, method)(url, headers=headers)
    return await getattr(client, method)(
        url, body, content_type="application/json", headers=headers
    )


@pytest.mark.django_db(transaction=True)
async def test_it_answers_423_to_every_gpu_change_by_a_non_holder_and_changes_nothing(
    scene, aclient
):
    cluster = scene["cluster"]
    assert {route for route, *_ in calls(scene)} == set(GATED)  # the list is complete
    garbage = "a-token-nobody-was-given"
    for route, method, url, body in calls(scene):
        for token in (None, scene["stale"], garbage):
            before, commands = await sync_to_async(world)(), sent(cluster)
            response = await send(aclient, method, url, body, token)
            assert response.status_code == 423, (route, token, response.content)
            error = response.json()["error"]
            assert set(error) == {"type", "message", "holder", "expires_at"}, route
            assert (error["type"], error["holder"]) == ("locked", "party-a"), route
            assert error["expires_at"] == scene["expires_at"], route
            assert 1 <= int(response.headers["Retry-After"]) <= TTL, route
            assert scene["token"] not in response.content.decode()
            assert await sync_to_async(world)() == before, route  # no row changed
            assert sent(cluster) == commands, route  # no docker / hf / rm sent

    # The holder, presenting its token, may do each of them.
    expected = {
        ("POST", "/swap/{int:swap_id}/cancel"): 202,
        ("POST", "/swap"): 202,
        ("PATCH", "/services/{name}"): 200,
        ("DELETE", "/services/{name}/edits"): 200,
        ("PUT", "/models/{key}"): 200,
        ("POST", "/models/{key}/download"): 200,
        ("DELETE", "/models/{key}/disk"): 204,
        ("DELETE", "/models/{key}"): 204,
        # Past the lock's gate, the host is asked: nothing there is an orphan.
        ("DELETE", "/hosts/{name}/orphans/{container}"): 404,
    }
    for route, method, url, body in calls(scene):
        response = await send(aclient, method, url, body, scene["token"])
        assert response.status_code == expected[route], (route, response.content)
        if route == ("POST", "/models/{key}/download"):
            text = "".join(
                [
                    c.decode() if isinstance(c, bytes) else c
                    async for c in response.streaming_content
                ]
            )
            assert parse_sse(text)[-1][0] == "done", text
    state = await sync_to_async(lambda: Swap.objects.get(pk=scene["swap"]).state)()
    assert state == Swap.CANCELLED
    assert not await sync_to_async(CatalogModel.objects.filter(key="served").exists)()
    rm = [c for c in cluster.commands("sim-a") if any(a[:1] == ["rm"] for a in c.argvs)]
    hf = [c for c in cluster.commands("sim-a") if "download" in c.argv]
    assert rm and hf  # the holder's download and delete did reach the host


@pytest.mark.django_db(transaction=True)
async def test_it_leaves_what_changes_no_gpu_open_while_the_lock_is_held(scene, aclient):
    # A model that runs nowhere may be edited; a service's resident VRAM may be set.
    response = await send(
        aclient, "put", "/api/models/idle", {"hub_repo": "acme/idle-1B", "port": 9100}, None
    )
    assert response.status_code == 200, response.content
    response = await send(
        aclient, "patch", f"/api/services/{scene['service']}", {"vram_resident_mib": 512}, None
    )
    assert response.status_code == 200, response.content
    # Sending the value it already has changes nothing, so it is not refused either.
    response = await send(
        aclient, "patch", f"/api/services/{scene['service']}", {"disabled": False}, None
    )
    assert response.status_code == 200, response.content


@pytest.mark.django_db(transaction=True)
async def test_it_counts_a_model_last_swapped_in_as_on_a_gpu(scene, aclient):
    # No service reports it, but the latest complete swap on a service brought it there.
    def swapped_in() -> None:
        Service.objects.update(loaded_model="")
        service = Service.objects.get(name=scene["service"])
        model = CatalogModel.objects.get(key="idle")
        Swap.objects.create(
            model=model,
            model_key="idle",
            host=service.host,
            service=service,
            state=Swap.COMPLETE,
            finished_at=timezone.now() - timedelta(minutes=5),
        )

    await sync_to_async(swapped_in)()
    response = await send(aclient, "delete", "/api/models/idle", None, None)
    assert response.status_code == 423, response.content
    assert await sync_to_async(CatalogModel.objects.filter(key="idle").exists)()


# -- the broker: no eviction, no idle unload while someone holds the lock ---------------
@pytest.fixture
def unloadable():
    import threading

    server = UnloadableBackend()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.django_db(transaction=True)
async def test_it_keeps_the_broker_from_unloading_anything_while_it_is_held(unloadable, settings):
    settings.ARBITER_BROKER_TABLE_TTL = 0  # the unloader's settle wait: 0.25 s
    await sync_to_async(register)("gen-a", unloadable.url, kind="http", unload_route="/unload")
    grant = await sync_to_async(locks.acquire)("party-a", TTL, "eval")
    async with httpx.AsyncClient() as http:
        residency = Residency(ServiceActivity(), lambda: http)
        url = f"{unloadable.url}/unload"

        # An eviction (the planner checked the lock, then someone took it): not sent.
        assert await residency.unload("gen-a", url, "eviction") is False
        # An idle unload: the sweep checks the lock before it unloads anything.
        clock_now = [1000.0]
        unloader = IdleUnloader(lambda: clock_now[0])
        idle = table(
            service_route("gen-a", kind="http", base_url=unloadable.url, unload_route="/unload")
        )
        assert await unloader.sweep(idle, residency) == []
        clock_now[0] += 10_000
        assert await unloader.sweep(idle, residency) == []
        assert unloadable.unloads == 0
        unloaded_at = await sync_to_async(lambda: Service.objects.get(name="gen-a").unloaded_at)()
        assert unloaded_at is None  # the claim was given back

        # Once the lock is released, the same unload goes through.
        await sync_to_async(locks.release)(grant.token)
        assert await residency.unload("gen-a", url, "eviction") is True
        assert unloadable.unloads == 1

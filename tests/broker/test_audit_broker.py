"""The broker's state changes in the audit trail: a load and the evictions it needed are
the engine's, on behalf of the key whose request caused them; an idle unload is the
engine's on behalf of nobody. One row each (arbiter.audit)."""

import json

import pytest
from asgiref.sync import sync_to_async

from arbiter.models import AuditEvent
from tests.broker.test_on_demand_load import cluster, crowd_sim_b, post_chat  # noqa: F401
from tests.broker.test_residency import sleepy, sweep  # noqa: F401
from tests.helpers import Clock

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@sync_to_async
def trail() -> list[tuple]:
    return list(
        AuditEvent.objects.order_by("pk").values_list(
            "action", "actor_kind", "actor_name", "on_behalf_of", "object_type", "object_id"
        )
    )


@sync_to_async
def rows(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


async def test_it_records_a_load_and_its_eviction_as_the_engines_on_behalf_of_the_key(
    cluster,  # noqa: F811
    aclient,
    unloadable,
    settings,
):
    # No dispatcher: the swap the load starts stays pending and the request gives up;
    # the eviction and the swap's creation have happened by then.
    settings.ARBITER_BROKER_QUEUE_TIMEOUT = 2.0
    await crowd_sim_b(unloadable.url)
    response = await post_chat(aclient)
    assert response.status_code == 503, response.content
    assert unloadable.unloads == 1
    assert await trail() == [
        ("broker.evict", "engine", "engine", "broker tests", "service", "sim-b-comfy"),
        ("broker.load", "engine", "engine", "broker tests", "catalog_model", "qwen3-small"),
    ]
    (load,) = await rows("broker.load")
    assert load.after["host"] == "sim-b" and load.client_address == "127.0.0.1"
    (evict,) = await rows("broker.evict")
    assert (evict.before, evict.after) == ({"loaded": True}, {"loaded": False})


async def test_it_records_an_idle_unload_as_the_engines_on_behalf_of_nobody(aclient, sleepy):  # noqa: F811
    from arbiter.broker.idle import IdleUnloader
    from tests.broker.test_residency import TTL

    clock = Clock()
    unloader = IdleUnloader(clock)
    assert await sweep(unloader) == []  # first seen now
    clock.now += TTL
    assert await sweep(unloader) == ["vllm-a"]
    assert await trail() == [("broker.idle_unload", "engine", "engine", "", "service", "vllm-a")]
    (row,) = await rows("broker.idle_unload")
    assert row.client_address is None
    assert json.dumps(row.after) == '{"loaded": false}'

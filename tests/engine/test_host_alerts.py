"""host_offline / host_online: the real sampler against a simulated host that goes away.

The sampler's record functions send `host_online_changed` inside their transaction and
coordination's receiver writes the webhook event there; these tests read the outbox."""

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from arbiter.engine.sampler import Sampler
from coordination.models import WebhookEvent

pytestmark = pytest.mark.django_db(transaction=True)

HOST_EVENTS = ("host_offline", "host_online")


@sync_to_async
def host_alerts() -> list[tuple[str, dict]]:
    rows = WebhookEvent.objects.filter(event_type__in=HOST_EVENTS).order_by("pk")
    return [(row.event_type, row.payload) for row in rows]


async def sample(sampler: Sampler, hosts, name: str) -> bool:
    host_id, target = hosts[name]
    return bool(await sampler.sample_once(host_id, "ssh", target))


@override_settings(ARBITER_STALE_AFTER_MISSES=1, ARBITER_OFFLINE_AFTER_MISSES=3)
async def test_it_writes_host_offline_once_and_host_online_on_the_first_good_sample(
    sim_cluster, hosts
):
    sampler = Sampler(interval=0.5)
    assert await sample(sampler, hosts, "sim-a")
    sim_cluster.go_down("sim-a")
    for _ in range(2):
        assert not await sample(sampler, hosts, "sim-a")
    assert await host_alerts() == []  # stale is not offline yet

    for _ in range(3):  # the third miss makes it offline; later misses say nothing new
        assert not await sample(sampler, hosts, "sim-a")
    [(kind, offline)] = await host_alerts()
    assert kind == "host_offline"
    assert offline["host"] == "sim-a" and offline["state"] == "offline"
    assert offline["missed_samples"] == 3 and offline["offline_after_misses"] == 3
    # The simulated host stopped listening: the connection is refused (errno 111).
    assert offline["last_error"].startswith("sim-a: cannot connect to 127.0.0.1:")
    assert "Connect call failed" in offline["last_error"]
    assert offline["last_sample_at"]

    sim_cluster.come_up("sim-a")
    assert await sample(sampler, hosts, "sim-a")
    assert await sample(sampler, hosts, "sim-a")
    sent = await host_alerts()
    assert [kind for kind, _ in sent] == ["host_offline", "host_online"]
    online = sent[1][1]
    assert online["host"] == "sim-a" and online["state"] == "live"
    assert online["missed_samples"] == 0 and online["last_error"] == ""


@override_settings(ARBITER_STALE_AFTER_MISSES=1, ARBITER_OFFLINE_AFTER_MISSES=3)
async def test_it_says_nothing_when_a_host_only_went_stale(sim_cluster, hosts):
    sampler = Sampler(interval=0.5)
    assert await sample(sampler, hosts, "sim-b")
    sim_cluster.go_down("sim-b")
    for _ in range(2):
        assert not await sample(sampler, hosts, "sim-b")
    sim_cluster.come_up("sim-b")
    assert await sample(sampler, hosts, "sim-b")
    assert await host_alerts() == []

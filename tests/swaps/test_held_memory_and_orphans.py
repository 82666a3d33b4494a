"""Memory a stop did not return, and orphaned containers, on the simulated cluster.

The simulator's `hold_memory_after_stop` fault keeps a stopped container's GPU process
(and its memory, listed by `nvidia-smi --query-compute-apps`) until the control API's
`free-memory`; orphans are labelled containers started through the control API behind
Arbiter's back."""

from datetime import datetime

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone

from arbiter import events
from arbiter.engine.orphans import OrphanScanner
from arbiter.engine.sampler import Sampler
from arbiter.engine.ssh import SshTarget
from arbiter.models import AuditEvent, Host
from coordination.locks.operations import acquire
from tests.helpers import free_port
from tests.swaps.conftest import make_model, start_swap, wait_for_state

pytestmark = pytest.mark.django_db(transaction=True)
FINAL = ["complete", "failed", "cancelled"]


@sync_to_async
def host_row(name: str = "sim-b") -> Host:
    return Host.objects.get(name=name)


async def swap(aclient, model: str):
    response = await start_swap(aclient, model)
    assert response.status_code == 202, response.content
    return await wait_for_state(response.json()["id"], FINAL)


async def tick(name: str = "sim-b") -> None:
    """One sampler tick of the host, as the sampler's loop takes it."""
    host = await host_row(name)
    assert await Sampler(interval=1).sample_once(host.pk, host.sampling, SshTarget.from_host(host))


@sync_to_async
def fragment(path: str, user) -> str:
    client = Client()
    client.force_login(user)
    return client.get(path).content.decode()


async def test_it_shows_memory_not_returned_with_its_holder_until_it_is_freed(
    cluster, dispatcher, aclient, swap_settings, bob
):
    swap_settings.ARBITER_SWAP_MEMORY_FREE_TIMEOUT = 1.0
    await sync_to_async(make_model)(
        "big", hub_repo="Qwen/Qwen3-8B", served_name="qwen3-8b", gpu_memory_utilization=0.9
    )
    cluster.inject("sim-b", hold_memory_after_stop=True)
    assert (await swap(aclient, "qwen3-small")).state == "complete"

    failed = await swap(aclient, "big")

    assert failed.state == "failed"
    assert "memory not returned after stopping arbiter-vllm: pid " in failed.error
    held = (await host_row()).memory_not_returned
    assert held["container"] == "arbiter-vllm"
    [process] = held["processes"]
    assert process["pid"] > 0 and process["used_mib"] > 20_000  # 0.3 of an 80 GB H100
    assert process["process_name"] == "VLLM::EngineCore"
    assert f"pid {process['pid']} VLLM::EngineCore" in failed.error
    status = (await aclient.get("/api/status")).json()
    sim_b = {h["name"]: h for h in status["hosts"]}["sim-b"]
    assert sim_b["memory_not_returned"]["processes"] == [process]
    assert {h["name"]: h for h in status["hosts"]}["sim-a"]["memory_not_returned"] is None
    card = await fragment("/fragments/hosts", bob)
    assert "Memory not returned" in card
    assert f"pid {process['pid']} VLLM::EngineCore · {process['used_mib']:.0f} MiB" in card

    # A swap that completes meanwhile does not clear it: only the process letting go does.
    assert (await swap(aclient, "qwen3-small")).state == "complete"
    await tick()  # still held: still shown
    assert (await host_row()).memory_not_returned["processes"] == [process]
    freed = httpx.post(f"{cluster.control_url}/hosts/sim-b/free-memory", timeout=5).json()
    assert freed == {"freed": 1}
    await tick()  # the next tick sees the process gone
    assert (await host_row()).memory_not_returned is None
    assert "Memory not returned" not in await fragment("/fragments/hosts", bob)


def start_stray(cluster, name: str, labels: list[str]) -> None:
    body = {
        "name": name,
        "image": "vllm/vllm-openai:latest",
        "port": free_port(),
        "gpu_memory_utilization": 0.1,
        "labels": labels,
    }
    response = httpx.post(f"{cluster.control_url}/hosts/sim-b/containers", json=body, timeout=30)
    assert response.status_code == 200, response.text


async def test_it_lists_an_orphan_and_lets_only_an_admin_remove_it(
    cluster, dispatcher, aclient, admin_aclient, bob
):
    assert (await swap(aclient, "qwen3-small")).state == "complete"
    start_stray(cluster, "arbiter-stray", ["arbiter.managed=true", "arbiter.model=old"])
    start_stray(cluster, "vllm_node", [])  # a script's container: not Arbiter's

    listed = (await aclient.get("/api/hosts/sim-b/orphans")).json()
    assert [o["name"] for o in listed["orphans"]] == ["arbiter-stray"]
    [stray] = listed["orphans"]
    assert (stray["model"], stray["state"], stray["image"]) == (
        "old",
        "running",
        "vllm/vllm-openai:latest",
    )
    assert stray["status"].startswith("Up ") and len(stray["id"]) == 12
    assert abs((timezone.now() - datetime.fromisoformat(stray["created"])).total_seconds()) < 60
    status = (await aclient.get("/api/status")).json()
    sim_b = {h["name"]: h for h in status["hosts"]}["sim-b"]
    assert [o["name"] for o in sim_b["orphans"]] == ["arbiter-stray"]
    assert "orphan-sim-b-arbiter-stray" in await fragment("/fragments/hosts", bob)

    # An operator may not; the running model's container and a script's are no orphans.
    assert (await aclient.delete("/api/hosts/sim-b/orphans/arbiter-stray")).status_code == 403
    for name in ("arbiter-vllm", "vllm_node", "nonexistent"):
        refused = await admin_aclient.delete(f"/api/hosts/sim-b/orphans/{name}")
        assert refused.status_code == 404, (name, refused.content)
        assert refused.json()["error"]["field"] == "container"
    # While someone else holds the swap lock: 423, nothing removed.
    grant = await sync_to_async(acquire)(holder="nightly-job", ttl_seconds=60)
    locked = await admin_aclient.delete("/api/hosts/sim-b/orphans/arbiter-stray")
    assert locked.status_code == 423
    assert cluster.container("sim-b", "arbiter-stray") is not None
    removed = await admin_aclient.delete(
        "/api/hosts/sim-b/orphans/arbiter-stray", headers={"X-Swap-Lock-Token": grant.token}
    )

    assert removed.status_code == 200, removed.content
    assert removed.json()["orphans"] == []
    assert cluster.container("sim-b", "arbiter-stray") is None
    assert cluster.container("sim-b", "arbiter-vllm") is not None
    assert cluster.container("sim-b", "vllm_node") is not None
    audit = await sync_to_async(lambda: AuditEvent.objects.get(action="orphan.remove"))()
    assert audit.object_id == "sim-b" and audit.before["container"]["name"] == "arbiter-stray"
    assert audit.before["container"]["image"] == "vllm/vllm-openai:latest"


@sync_to_async
def post_action(path: str, user) -> tuple[int, str]:
    client = Client()
    client.force_login(user)
    response = client.post(path)
    return response.status_code, response.content.decode()


async def test_it_scans_for_orphans_in_a_loop_and_an_admin_removes_one_from_the_card(
    cluster, dispatcher, aclient, alice, bob
):
    assert (await swap(aclient, "qwen3-small")).state == "complete"
    start_stray(cluster, "arbiter-left", ["arbiter.managed=true"])
    news = []

    def on_sampled(sender, host_id, **kwargs):
        news.append(host_id)

    events.host_sampled.connect(on_sampled)
    try:
        await OrphanScanner(interval=0.1).round()
    finally:
        events.host_sampled.disconnect(on_sampled)

    row = await host_row()
    assert [o["name"] for o in row.orphan_containers] == ["arbiter-left"]
    assert row.orphans_checked_at is not None and row.pk in news
    assert (await host_row("sim-a")).orphan_containers == []
    # Everyone sees it; only an admin gets the Remove button (dashboard.roles cuts it out).
    assert "orphan-sim-b-arbiter-left" in await fragment("/fragments/hosts", bob)
    assert 'class="orphan-remove"' not in await fragment("/fragments/hosts", bob)
    assert 'class="orphan-remove"' in await fragment("/fragments/hosts", alice)

    path = "/actions/hosts/sim-b/orphans/arbiter-left/remove"
    status, _ = await post_action(path, bob)
    assert status == 403 and cluster.container("sim-b", "arbiter-left") is not None
    status, card = await post_action(path, alice)
    assert status == 200 and 'id="host-sim-b"' in card
    assert "arbiter-left" not in card
    assert cluster.container("sim-b", "arbiter-left") is None
    assert (await host_row()).orphan_containers == []
    # The running model's container: refused under the card, nothing removed.
    status, refusal = await post_action("/actions/hosts/sim-b/orphans/arbiter-vllm/remove", alice)
    assert "is not an orphan on sim-b" in refusal
    assert cluster.container("sim-b", "arbiter-vllm") is not None

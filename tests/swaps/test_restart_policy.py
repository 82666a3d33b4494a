"""The restart policy on the simulated cluster: a model whose container crashes after it
was ready is restarted (policy on), given up on after N restarts in the window, and left
alone with the policy off. The crash is the simulated vLLM's `crash_after_ready` fault:
the engine logs a fatal error and the container exits 1, as docker then shows it."""

import asyncio
import time

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from arbiter import events
from arbiter.engine.probes import probe_services_once
from arbiter.engine.supervisor import Supervisor, backoff_seconds
from arbiter.engine.swaps import store
from arbiter.models import Service, Swap, SwapTransition
from catalog.models import CatalogModel
from coordination.locks.operations import acquire, release
from coordination.models import WebhookEvent
from tests.swaps.conftest import start_swap, wait_for_state

pytestmark = pytest.mark.django_db(transaction=True)
FINAL = ["complete", "failed", "cancelled"]
SERVICE = "sim-b-vllm"
CRASH_AFTER = 0.3  # seconds the simulated model serves before its engine dies


@pytest.fixture
def restart_settings(swap_settings):
    swap_settings.ARBITER_RESTART_BACKOFF_SECONDS = 0.1
    swap_settings.ARBITER_RESTART_BACKOFF_MAX_SECONDS = 1.0
    return swap_settings


@sync_to_async
def set_policy(key: str, restart_max: int | None, window: int | None = 600) -> None:
    CatalogModel.objects.filter(key=key).update(
        restart_max=restart_max, restart_window_seconds=window if restart_max else None
    )


@sync_to_async
def service_row() -> Service:
    return Service.objects.get(name=SERVICE)


@sync_to_async
def restarts() -> list[Swap]:
    return list(Swap.objects.filter(kind=Swap.KIND_RESTART).order_by("created_at"))


async def wait_until_exited(cluster, name: str = "arbiter-vllm", timeout: float = 15.0) -> None:
    """Until docker on sim-b shows the container exited (the crash has happened)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {c.name: c.status for c in cluster.containers("sim-b")}
        if found.get(name, "").startswith("exited"):
            return
        assert time.monotonic() < deadline, f"{name} did not exit: {found}"
        await asyncio.sleep(0.05)


async def crash_and_probe(cluster) -> None:
    await wait_until_exited(cluster)
    results = await probe_services_once()
    assert results[SERVICE].health == "down"


async def swap_in_crashing(cluster, aclient, model: str = "qwen3-small") -> Swap:
    cluster.inject("sim-b", crash_after_ready=CRASH_AFTER)
    response = await start_swap(aclient, model)
    assert response.status_code == 202, response.content
    swap = await wait_for_state(response.json()["id"], FINAL)
    assert swap.state == "complete", swap.error
    return swap


async def test_it_restarts_a_model_that_crashed_after_it_was_ready_and_it_serves_again(
    cluster, dispatcher, aclient, restart_settings
):
    await set_policy("qwen3-small", 2)
    first = await swap_in_crashing(cluster, aclient)
    await crash_and_probe(cluster)

    outcomes = await Supervisor(interval=0.1).round()

    assert len(outcomes) == 1 and outcomes[0].startswith("restart swap"), outcomes
    [restart] = await restarts()
    assert restart.model_key == "qwen3-small" and restart.host_id == first.host_id
    assert restart.requested_by == "arbiter (restart policy)"
    assert restart.not_before is not None and restart.not_before > restart.created_at
    detail = await sync_to_async(
        lambda: SwapTransition.objects.get(swap=restart, state="pending").detail
    )()
    assert "restart 1 of at most 2" in detail and "exit code 1" in detail, detail
    done = await wait_for_state(restart.pk, FINAL)
    assert done.state == "complete", done.error

    # The same launch: the argv of the swap it repeats, but for the label naming the swap.
    def launch(swap: Swap) -> list[str]:
        return [a for a in swap.launch_argv if not a.startswith("--label=arbiter.swap=")]

    assert launch(done) == launch(first)
    assert f"--label=arbiter.swap={done.pk}" in done.launch_argv
    results = await probe_services_once()
    assert results[SERVICE].health == "up"
    base_url = (await service_row()).base_url
    models = httpx.get(f"{base_url}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["Qwen/Qwen3-0.6B"]
    # Up and served: nothing more to do.
    assert await Supervisor().round() == []


async def test_it_gives_up_after_max_restarts_in_the_window_and_says_why(
    cluster, dispatcher, aclient, restart_settings
):
    await set_policy("qwen3-small", 1)
    gave_up = []

    def on_gave_up(sender, **kwargs):
        gave_up.append(kwargs)

    events.restart_gave_up.connect(on_gave_up)
    try:
        await swap_in_crashing(cluster, aclient)
        cluster.inject("sim-b", crash_after_ready=CRASH_AFTER)  # the restart crashes too
        await crash_and_probe(cluster)
        [outcome] = await Supervisor().round()
        assert outcome.startswith("restart swap"), outcome
        [restart] = await restarts()
        assert (await wait_for_state(restart.pk, FINAL)).state == "complete"
        await crash_and_probe(cluster)

        # A new supervisor (as after an Arbiter restart) counts the restarts from the rows.
        [outcome] = await Supervisor().round()
    finally:
        events.restart_gave_up.disconnect(on_gave_up)

    assert outcome.startswith("gave up"), outcome
    service = await service_row()
    assert service.failed_at is not None
    assert "1 restart(s) within 600 s did not keep it up" in service.failed_reason
    assert "exit code 1" in service.failed_reason
    assert len(gave_up) == 1 and gave_up[0]["model_key"] == "qwen3-small"
    assert gave_up[0]["reason"] == service.failed_reason
    # ...and the webhook event is in the outbox, written with the give-up.
    [event] = await sync_to_async(
        lambda: list(WebhookEvent.objects.filter(event_type="restart_gave_up"))
    )()
    assert event.payload["service"] == SERVICE and event.payload["model"] == "qwen3-small"
    assert len(await restarts()) == 1
    # Given up is final until someone swaps a model in.
    assert await Supervisor().round() == []
    response = await start_swap(aclient, "smollm2")
    assert (await wait_for_state(response.json()["id"], FINAL)).state == "complete"
    service = await service_row()
    assert service.failed_at is None and service.failed_reason == ""


async def test_it_leaves_a_crashed_model_alone_when_the_policy_is_off(
    cluster, dispatcher, aclient, restart_settings
):
    await swap_in_crashing(cluster, aclient)
    await crash_and_probe(cluster)

    assert await Supervisor().round() == []
    assert await restarts() == []
    assert (await service_row()).health == "down"


async def test_it_waits_for_the_lock_before_restarting(
    cluster, dispatcher, aclient, restart_settings
):
    await set_policy("qwen3-small", 2)
    await swap_in_crashing(cluster, aclient)
    grant = await sync_to_async(acquire)(holder="nightly-job", ttl_seconds=60)
    await crash_and_probe(cluster)

    supervisor = Supervisor()
    assert await supervisor.round() == []
    assert await restarts() == []

    await sync_to_async(release)(grant.token)
    [outcome] = await supervisor.round()
    assert outcome.startswith("restart swap"), outcome


def test_it_backs_off_exponentially_up_to_the_cap(settings):
    settings.ARBITER_RESTART_BACKOFF_SECONDS = 10
    settings.ARBITER_RESTART_BACKOFF_MAX_SECONDS = 60
    assert [backoff_seconds(k) for k in range(5)] == [10, 20, 40, 60, 60]


def test_it_does_not_claim_a_restart_before_its_backoff_ends(cluster_rows):
    swap = store.create_swap(
        "qwen3-small",
        "sim-b",
        dry_run=False,
        requested_by="test",
        kind=Swap.KIND_RESTART,
        not_before=timezone.now() + timezone.timedelta(seconds=60),
    )
    assert store.claim_pending() == []
    Swap.objects.filter(pk=swap.pk).update(not_before=timezone.now())
    assert store.claim_pending() == [swap.pk]

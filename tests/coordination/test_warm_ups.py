"""Warm-ups ahead of scheduled jobs, with a stepped clock: the model is swapped in before
the run, held by a system lease for the window, released after; a warm-up that the lock
or someone else's lease makes impossible is recorded as missed, shown on the schedule
panel and sent as a `warm_up_missed` webhook. Plus the `warm_up` field's validation."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async

from arbiter.engine.swaps.store import create_swap
from arbiter.models import Host, Swap
from catalog.models import CatalogModel
from coordination import locks, webhooks
from coordination.leases import operations as leases
from coordination.leases.gate import active_leases
from coordination.models import ScheduledJob, WarmUp, WebhookDelivery, WebhookEvent
from coordination.schedules import register_job
from coordination.schedules.warm_ups import WarmUpLoop
from dashboard.panels.schedules import schedule_panel
from tests.coordination.test_webhook_receiver import Receiver, make_endpoint
from tests.swaps import conftest as swap_fixtures
from tests.swaps.conftest import wait_for_state

# The simulated cluster's fixtures (tests/swaps/conftest.py), used here by name.
cluster = swap_fixtures.cluster
cluster_rows = swap_fixtures.cluster_rows
dispatcher = swap_fixtures.dispatcher
swap_settings = swap_fixtures.swap_settings

RUN_AT = datetime(2030, 1, 1, 2, 30, tzinfo=UTC)  # "30 2 * * *"
LEAD = 600
HOLD = 1800
LOAD = 300  # ARBITER_WARM_UP_DEFAULT_LOAD_SECONDS here: no earlier swap says otherwise
DUE = RUN_AT - timedelta(seconds=LEAD + LOAD)  # 02:15


def at(moment: datetime, seconds: float = 0) -> datetime:
    return moment + timedelta(seconds=seconds)


def nightly(**warm_up) -> ScheduledJob:
    job, _created = register_job(
        {
            "id": "nightly-eval",
            "name": "Nightly eval",
            "cron": "30 2 * * *",
            "timezone": "UTC",
            "target_model": "qwen3-small",
            "warm_up": {"host": "sim-b", "lead_seconds": LEAD, "hold_seconds": HOLD, **warm_up},
        }
    )
    return job


@pytest.fixture(autouse=True)
def _default_load(settings):
    settings.ARBITER_WARM_UP_DEFAULT_LOAD_SECONDS = LOAD


@sync_to_async
def warm_up_rows() -> list[WarmUp]:
    return list(WarmUp.objects.order_by("pk"))


@sync_to_async
def held_leases() -> list[tuple[str, str, str, bool]]:
    return [
        (lease.model_key, lease.host.name, lease.holder, lease.system) for lease in active_leases()
    ]


async def test_it_loads_before_the_run_holds_the_window_and_releases_after(dispatcher):
    await sync_to_async(nightly)()
    loop = WarmUpLoop()
    step = sync_to_async(loop.step)

    await step(at(DUE, -60))  # not due yet
    assert await warm_up_rows() == []

    await step(at(DUE, 1))  # due: claimed, the swap goes through create_swap
    [warm_up] = await warm_up_rows()
    assert (warm_up.state, warm_up.run_at, warm_up.host_name) == ("swapping", RUN_AT, "sim-b")
    swap = await sync_to_async(Swap.objects.get)(pk=warm_up.swap_id)
    assert (swap.model_key, swap.requested_by) == ("qwen3-small", "warm-up:nightly-eval")

    # Another serve process's loop (or this one after a restart) claims nothing more.
    await sync_to_async(WarmUpLoop().step)(at(DUE, 2))
    assert await sync_to_async(Swap.objects.count)() == 1

    await wait_for_state(swap.pk, Swap.COMPLETE)
    await step(at(DUE, 60))  # loaded, 4 minutes before the model must be ready
    [warm_up] = await warm_up_rows()
    assert warm_up.state == "held"
    assert await held_leases() == [("qwen3-small", "sim-b", "warm-up:nightly-eval", True)]

    await step(RUN_AT)  # the run: still held
    await step(at(RUN_AT, HOLD - 1))  # the end of the window: still held
    assert (await warm_up_rows())[0].state == "held"
    assert len(await held_leases()) == 1

    await step(at(RUN_AT, HOLD + 1))  # after the window: released
    [warm_up] = await warm_up_rows()
    assert warm_up.state == "done"
    assert await held_leases() == []
    # The next run is tomorrow: nothing new today, and the job itself never ran.
    await step(at(RUN_AT, HOLD + 60))
    assert len(await warm_up_rows()) == 1
    assert await sync_to_async(Swap.objects.count)() == 1


async def test_it_swaps_nothing_when_the_model_is_served_already(dispatcher):
    await sync_to_async(nightly)()
    swap = await sync_to_async(create_swap)("qwen3-small", "sim-b", False, "alice")
    await wait_for_state(swap.pk, Swap.COMPLETE)
    # That swap's launch time is now the expected load time (seconds, not LOAD's 300).
    await sync_to_async(WarmUpLoop().step)(at(DUE, 1))
    assert await warm_up_rows() == []
    await sync_to_async(WarmUpLoop().step)(at(RUN_AT, -LEAD))
    [warm_up] = await warm_up_rows()
    assert warm_up.state == "held" and warm_up.swap_id is None
    assert await sync_to_async(Swap.objects.count)() == 1


@pytest.mark.django_db(transaction=True)
def test_it_records_a_warm_up_blocked_by_a_lease_shows_it_and_sends_the_webhook(cluster_rows):
    with Receiver() as receiver:
        _endpoint, _secret = make_endpoint(receiver.url, events=["warm_up_missed"])
        leases.acquire("smollm2", "sim-b", "alice", 7200, "long eval")
        nightly()
        WarmUpLoop().step(at(DUE, 1))

        warm_up = WarmUp.objects.get()
        assert warm_up.state == "missed"
        assert "alice" in warm_up.reason and "smollm2" in warm_up.reason
        assert not Swap.objects.exists()  # nothing was swapped

        html = schedule_panel()
        assert 'data-state="missed"' in html and "alice" in html

        event = WebhookEvent.objects.get(event_type="warm_up_missed")
        assert event.payload["job_id"] == "nightly-eval"
        assert event.payload["host"] == "sim-b" and event.payload["model"] == "qwen3-small"
        assert event.payload["run_at"].startswith("2030-01-01T02:30:00")
        delivery = WebhookDelivery.objects.get(event=event)
        webhooks.attempt_delivery(delivery.pk)
        [request] = receiver.wait_for(1)
        body = json.loads(request.body)
        assert body["type"] == "warm_up_missed" and "alice" in body["data"]["reason"]

        # One warm-up per run: later rounds neither retry nor send it again.
        WarmUpLoop().step(at(DUE, 30))
        assert WarmUp.objects.count() == 1
        assert WebhookEvent.objects.filter(event_type="warm_up_missed").count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_records_a_warm_up_refused_by_the_lock(cluster_rows):
    locks.acquire("bob", 3600, "maintenance")
    nightly()
    WarmUpLoop().step(at(DUE, 1))
    warm_up = WarmUp.objects.get()
    assert warm_up.state == "missed" and "bob" in warm_up.reason
    assert not Swap.objects.exists()
    assert WebhookEvent.objects.filter(event_type="warm_up_missed").count() == 1


# --- the warm_up field -------------------------------------------------------------------


@pytest.fixture
def rows(db):
    Host.objects.create(name="spark-1", address="10.0.0.1")
    CatalogModel.objects.create(key="qwen3-small", hub_repo="Qwen/Qwen3-0.6B", served_name="q")


def post(client, **warm_up):
    body = {
        "id": "nightly-eval",
        "name": "Nightly eval",
        "cron": "*/15 * * * *",
        "target_model": "qwen3-small",
        "warm_up": {"host": "spark-1", "lead_seconds": 300, "hold_seconds": 600, **warm_up},
    }
    return client.post("/api/schedule", body, content_type="application/json")


def test_it_stores_and_returns_the_warm_up(key_client, rows):
    response = post(key_client)
    assert response.status_code == 201
    assert response.json()["warm_up"] == {
        "host": "spark-1",
        "lead_seconds": 300,
        "hold_seconds": 600,
    }
    job = ScheduledJob.objects.get()
    assert (job.warm_up_host.name, job.warm_up_lead_seconds, job.warm_up_hold_seconds) == (
        "spark-1",
        300,
        600,
    )


@pytest.mark.parametrize(
    ("warm_up", "status", "field"),
    [
        ({"host": "nowhere"}, 404, "warm_up.host"),
        ({"lead_seconds": -1}, 422, "warm_up.lead_seconds"),
        ({"lead_seconds": 901}, 422, "warm_up.lead_seconds"),  # the cron period is 900 s
        ({"lead_seconds": "60"}, 422, "warm_up.lead_seconds"),
        ({"hold_seconds": 0}, 422, "warm_up.hold_seconds"),
        ({"hold_seconds": 86401}, 422, "warm_up.hold_seconds"),
        ({"hold": 5}, 422, "warm_up.hold"),
    ],
)
def test_it_refuses_a_bad_warm_up_naming_the_field(key_client, rows, warm_up, status, field):
    response = post(key_client, **warm_up)
    assert response.status_code == status, response.content
    assert response.json()["error"]["field"] == field
    assert not ScheduledJob.objects.exists()


def test_it_accepts_a_lead_of_exactly_the_cron_period(key_client, rows):
    assert post(key_client, lead_seconds=900).status_code == 201

"""Arbiter stores and shows scheduled jobs; it never runs them.

Time is moved across many scheduled times (the clock is patched, nothing sleeps) while
the registry is read through the API and the domain functions; afterwards no swap
exists, the lock row is exactly as it was, no huey task was enqueued and no simulated
host received a single SSH command.
"""

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from huey.contrib.djhuey import HUEY

from arbiter.models import Swap
from catalog.models import CatalogModel
from coordination.models import LockAudit, ScheduledJob, SwapLock, WebhookEvent
from coordination.schedules import next_runs, schedule_warnings

pytestmark = pytest.mark.django_db

START = datetime(2024, 10, 26, 20, 0, tzinfo=UTC)  # across Riga's autumn clock change
STEP = timedelta(minutes=7)
STEPS = 90  # 10.5 hours


def lock_snapshot() -> list[tuple]:
    return list(
        SwapLock.objects.order_by("scope").values_list(
            "scope", "holder", "token_hash", "generation", "acquired_at", "expires_at"
        )
    )


def test_it_triggers_no_lock_swap_task_or_ssh_command_across_scheduled_times(
    sim_cluster, key_client
):
    CatalogModel.objects.create(key="qwen3-small", hub_repo="Qwen/Qwen3-0.6B", served_name="q")
    jobs = [
        ("every-minute", "* * * * *", "UTC"),
        ("quarter-hour", "*/15 * * * *", "Europe/Riga"),
        ("nightly", "30 3 * * *", "Europe/Riga"),
        ("hourly", "0 * * * *", "Europe/Riga"),
    ]
    for job_id, cron, tz in jobs:
        body = {"id": job_id, "name": job_id, "cron": cron, "timezone": tz}
        response = key_client.post(
            "/api/schedule", {**body, "target_model": "qwen3-small"}, "application/json"
        )
        assert response.status_code == 201
    # A lock somebody holds for the whole range: the warnings read it, nothing takes it.
    SwapLock.objects.create(
        holder="nightly-cron",
        purpose="eval",
        token_hash="0" * 64,
        generation=7,
        acquired_at=START,
        expires_at=START + STEP * STEPS,
    )

    lock_before = lock_snapshot()
    commands_before = {host: sim_cluster.commands(host) for host in sim_cluster.hosts}
    pending_before, scheduled_before = HUEY.pending_count(), HUEY.scheduled_count()
    passed_runs = set()

    with mock.patch.object(HUEY, "enqueue", wraps=HUEY.enqueue) as enqueue:
        for step in range(STEPS):
            now = START + STEP * step
            with mock.patch("django.utils.timezone.now", return_value=now):
                listed = key_client.get("/api/schedule")
                assert listed.status_code == 200
                assert key_client.get("/api/schedule/nightly").status_code == 200
                lock = SwapLock.objects.get()
                warnings = schedule_warnings(ScheduledJob.objects.all(), lock.expires_at)
            assert any(w.kind == "lock_held" for w in warnings)
            for item in listed.json():
                assert all(datetime.fromisoformat(run) > now for run in item["next_runs"])
            for job in ScheduledJob.objects.all():
                passed_runs.update(next_runs(job, count=3, after=now))

    # The clock really went past scheduled times: dozens of runs came and went.
    assert len([run for run in passed_runs if run < START + STEP * STEPS]) > 50
    enqueue.assert_not_called()
    assert (HUEY.pending_count(), HUEY.scheduled_count()) == (pending_before, scheduled_before)
    assert not Swap.objects.exists()
    assert lock_snapshot() == lock_before
    assert SwapLock.objects.get().generation == 7
    assert not LockAudit.objects.exists()
    assert not WebhookEvent.objects.exists()
    for host, before in commands_before.items():
        assert sim_cluster.commands(host) == before, f"{host} received SSH commands"

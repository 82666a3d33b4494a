"""The plots the sampler draws from memory are the ones the database gives.

`history_with_tick` (the sampler's path, kept in memory) and `gpu_history` (page loads
and polls, read from the database) must give the same series: after ordinary ticks,
after the window cut, and after a gap, when another writer (a new engine leader) may
have written samples the memory never saw.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from arbiter.models import GpuSample, Host
from dashboard.panels import history

pytestmark = pytest.mark.django_db
INTERVAL = 2.0


@pytest.fixture
def host(settings):
    settings.ARBITER_SAMPLE_INTERVAL = INTERVAL
    history._windows.clear()
    return Host.objects.create(name="plot-host", address="127.0.0.1")


def write_tick(host: Host, at, utilization: float) -> list[GpuSample]:
    rows = [
        GpuSample(
            host=host,
            taken_at=at,
            index=index,
            uuid=f"GPU-{index}",
            name="H100",
            utilization_pct=utilization + index,
            memory_used_mib=1000.0 * index,
            memory_total_mib=80_000.0,
        )
        for index in range(2)
    ]
    GpuSample.objects.bulk_create(rows)
    return rows


def test_it_draws_from_memory_what_the_database_gives_through_ticks_the_cut_and_a_gap(
    host, monkeypatch
):
    start = timezone.now() - timedelta(minutes=20)
    clock = {"now": start}
    monkeypatch.setattr(history.timezone, "now", lambda: clock["now"])
    at = start
    # Twelve minutes of ticks: past the five-minute window, so the cut is exercised.
    for n in range(360):
        at = start + timedelta(seconds=INTERVAL * n)
        clock["now"] = at
        drawn = history.history_with_tick(host.pk, write_tick(host, at, n % 90))
        if n % 45 == 0:
            assert drawn == history.gpu_history(host.pk), n
    assert len(drawn[0]["utilization_pct"]) == 151  # 5 min of 2 s ticks, both ends in
    # Another leader writes a minute of ticks this process never sees, then this one
    # samples again: the memory must not miss them.
    for n in range(1, 31):
        write_tick(host, at + timedelta(seconds=INTERVAL * n), 50)
    at += timedelta(seconds=INTERVAL * 31)
    clock["now"] = at
    drawn = history.history_with_tick(host.pk, write_tick(host, at, 7))
    assert drawn == history.gpu_history(host.pk)
    assert drawn[1]["utilization_pct"][-31:-1] == [51.0] * 30


def test_it_draws_no_plots_for_a_tick_without_readings(host):
    assert history.history_with_tick(host.pk, []) == {}

"""A host's history page (/hosts/<name>/history): its GPUs over all the samples kept,
averaged into a fixed number of points and drawn wide; a card's plots link to it."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from arbiter.models import GpuSample, Host
from dashboard.panels import history

pytestmark = pytest.mark.django_db
INTERVAL = 2.0
WINDOW_S = history.LONG_WINDOW.total_seconds()


@pytest.fixture
def host(settings):
    settings.ARBITER_SAMPLE_INTERVAL = INTERVAL
    return Host.objects.create(name="gpu-7", address="10.0.0.7", last_sample_at=timezone.now())


def write(host: Host, at, index: int, util: float | None, used: float = 20_000.0) -> None:
    GpuSample.objects.create(
        host=host,
        taken_at=at,
        index=index,
        name="NVIDIA H100",
        utilization_pct=util,
        memory_used_mib=used,
        memory_total_mib=80_000.0,
    )


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_shows_each_gpu_wide_with_its_newest_readings(bob, host):
    now = timezone.now()
    for index, util in ((0, 25.0), (1, 75.0)):
        for tick in range(10):
            write(host, now - timedelta(seconds=INTERVAL * tick), index, util)
    response = logged_in(bob).get("/hosts/gpu-7/history")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<title>gpu-7 history · Arbiter</title>" in html
    assert 'id="host-history-gpu-7"' in html and 'hx-get="/hosts/gpu-7/history"' in html
    assert "The last 15 minutes" in html and "the mean of 5 s" in html
    for index, util in ((0, 25), (1, 75)):
        figure = html[html.index(f'id="plot-gpu-7-{index}"') :]
        figure = figure[: figure.index("</figure>")]
        assert f"GPU {index} · NVIDIA H100" in figure
        assert f'<b class="now-util">{util} %</b>' in figure
        assert '<b class="now-mem">25 %</b>' in figure
        assert 'class="plot plot-wide" viewBox="0 0 960 280"' in figure
        assert "−15 min" in figure


def test_it_answers_a_poll_with_the_panel_alone(bob, host):
    write(host, timezone.now(), 0, 10.0)
    response = logged_in(bob).get("/hosts/gpu-7/history", headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith("<section") and "<html" not in html
    assert 'id="host-history-gpu-7"' in html


def test_it_says_so_for_a_host_without_samples(bob, host):
    html = logged_in(bob).get("/hosts/gpu-7/history").content.decode()
    assert "No GPU samples in the last 15 minutes." in html


@pytest.mark.parametrize("name", ["no-such-host", "retired"])
def test_it_answers_404_for_an_unknown_host(bob, host, name):
    Host.objects.create(name="retired", address="10.0.0.9", in_inventory=False)
    assert logged_in(bob).get(f"/hosts/{name}/history").status_code == 404


def test_it_sends_a_visitor_to_log_in(host):
    response = Client().get("/hosts/gpu-7/history")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/hosts/gpu-7/history"


def test_it_is_linked_from_the_card(bob, host):
    write(host, timezone.now(), 0, 10.0)
    html = logged_in(bob).get("/fragments/hosts").content.decode()
    card = html[html.index('id="host-gpu-7"') :]
    assert '<a class="host-history-link" href="/hosts/gpu-7/history">History</a>' in card
    assert re.search(r'<a class="gpu-plots" href="/hosts/gpu-7/history"[^>]*>\s*<figure', card)


def test_it_averages_the_window_into_a_fixed_number_of_points(host):
    now = timezone.now()
    span = WINDOW_S / history.LONG_POINTS  # 5 s
    rows = []
    # Every 2 s over the whole window (and a minute before it, left out), utilisation
    # rising by one per span; GPU 1 has no readings for a minute 10 minutes ago.
    for tick in range(int((WINDOW_S + 60) / INTERVAL)):
        at = now - timedelta(seconds=INTERVAL * tick + 0.5)
        age = (now - at).total_seconds()
        for index in (0, 1):
            if index == 1 and 570 < age < 630:
                continue
            util = float(history.LONG_POINTS - int(age // span)) if age < WINDOW_S else 999.0
            rows.append(
                GpuSample(
                    host=host,
                    taken_at=at,
                    index=index,
                    utilization_pct=util,
                    memory_used_mib=8000.0,
                    memory_total_mib=80_000.0,
                )
            )
    GpuSample.objects.bulk_create(rows)

    plots = history.long_history(host.pk, now)

    steady = plots[0]
    assert len(steady["ages_s"]) == history.LONG_POINTS  # 450 readings -> 180 points
    assert steady["utilization_pct"] == [float(n) for n in range(1, history.LONG_POINTS + 1)]
    assert steady["memory_pct"] == [10.0] * history.LONG_POINTS
    assert steady["ages_s"][0] == pytest.approx(WINDOW_S - span / 2)
    assert steady["ages_s"][-1] == pytest.approx(span / 2)
    assert 999.0 not in steady["utilization_pct"]  # older than the window: not drawn
    # The minute without readings is a gap: one None where the line breaks.
    gappy = plots[1]
    assert gappy["utilization_pct"].count(None) == 1
    at_gap = gappy["ages_s"][gappy["utilization_pct"].index(None)]
    assert 570 < at_gap < 630
    assert len(gappy["ages_s"]) == history.LONG_POINTS - 12 + 1  # 12 spans empty, one break


def test_it_breaks_the_cards_window_where_a_host_was_away(host):
    now = timezone.now()
    for tick in [*range(0, 10), *range(30, 40)]:  # away for 40 s, 20 ticks ago
        write(host, now - timedelta(seconds=INTERVAL * tick), 0, 50.0)
    plot = history.series(history.read_points(host.pk, now), now)[0]
    assert plot["utilization_pct"].count(None) == 1
    assert len(plot["utilization_pct"]) == 21
    assert plot["ages_s"][-1] == 0.0 and plot["ages_s"][0] == pytest.approx(78.0)

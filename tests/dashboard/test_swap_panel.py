"""The dashboard's swap panel, rendered from Swap / SwapTransition / SwapLogLine rows."""

import asyncio
import re
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.test import Client
from django.utils import timezone

from arbiter.engine.swaps.journal import SwapJournal
from arbiter.models import Host, Swap, SwapLogLine, SwapTransition
from dashboard.consumers import full_state
from dashboard.live import DASHBOARD_GROUP, PUSH_INTERVAL, on_swap_progressed
from dashboard.panels.swaps import swap_log, swap_panel

PHASES = ["pending", "preflight", "stopping", "launching", "waiting_healthy", "complete"]


def make_swap(
    host: str,
    model: str,
    states: list[str],
    *,
    lines: list[tuple[str, str]] = (),
    error: str = "",
    ago: float = 10.0,
) -> Swap:
    """A swap requested `ago` seconds ago that went through `states` a second apart."""
    host_row, _ = Host.objects.get_or_create(name=host, defaults={"address": "10.0.0.9"})
    start = timezone.now() - timedelta(seconds=ago)
    final = states[-1] in Swap.FINAL_STATES
    swap = Swap.objects.create(model_key=model, host=host_row, state=states[-1], error=error)
    Swap.objects.filter(pk=swap.pk).update(
        created_at=start,
        started_at=start + timedelta(seconds=0.5),
        finished_at=start + timedelta(seconds=len(states) - 1) if final else None,
    )
    for i, state in enumerate(states):
        SwapTransition.objects.create(swap=swap, state=state, at=start + timedelta(seconds=i))
    SwapLogLine.objects.bulk_create(
        SwapLogLine(swap=swap, seq=i + 1, stream=stream, text=text)
        for i, (stream, text) in enumerate(lines)
    )
    swap.refresh_from_db()
    return swap


def steps(html: str, swap_id: int) -> dict[str, str]:
    """phase -> status in the stepper of swap `swap_id`'s card."""
    card = re.search(rf'<article class="swap [^"]*" id="swap-{swap_id}".*?</article>', html, re.S)
    assert card, f"no card for swap {swap_id}"
    return dict(re.findall(r'data-phase="([^"]+)" data-status="([^"]+)"', card.group(0)))


def section(html: str, element_id: str) -> str:
    """The element with that id, through its matching closing tag."""
    start = re.search(rf'<(\w+)[^>]* id="{element_id}"', html)
    assert start, f"no #{element_id}"
    tag, depth = start.group(1), 0
    for match in re.finditer(rf"<(/?){tag}\b", html[start.start() :]):
        depth += -1 if match.group(1) else 1
        if depth == 0:
            return html[start.start() : start.start() + match.end()]
    raise AssertionError(f"#{element_id} is not closed")


@pytest.mark.django_db
class TestRendering:
    def test_it_shows_an_active_swap_with_its_phase_progress_elapsed_and_log(self):
        swap = make_swap(
            "spark-1",
            "qwen3-600m",
            PHASES[:5],
            lines=[
                ("arbiter", "→ launching"),
                ("stdout", "INFO Loading safetensors checkpoint shards"),
                ("stderr", "WARNING low disk"),
            ],
        )
        html = swap_panel()
        assert 'id="swap-panel"' in html
        assert f'data-swap-id="{swap.pk}" data-state="waiting_healthy"' in html
        assert steps(html, swap.pk) == {
            "pending": "done",
            "preflight": "done",
            "stopping": "done",
            "launching": "done",
            "waiting_healthy": "current",
            "complete": "todo",
        }
        assert 'data-phase="launching" data-status="done">Launching <small>+3.0 s</small>' in html
        assert '<progress max="100" value="80">' in html
        # A running swap's elapsed time ticks in the browser from the server's figure.
        elapsed = re.search(r'class="swap-elapsed"[^>]* data-running data-elapsed="([\d.]+)"', html)
        assert elapsed and 9.5 < float(elapsed.group(1)) < 20
        assert f'hx-post="/actions/swaps/{swap.pk}/cancel"' in html
        # The three sources of lines are told apart.
        assert 'class="log-line log-arbiter"' in html
        assert 'class="log-line log-stdout"' in html
        assert 'class="log-line log-stderr"' in html
        assert "Loading safetensors checkpoint shards" in html

    def test_it_shows_the_last_30_lines_of_a_long_log(self):
        make_swap(
            "spark-1",
            "qwen3-600m",
            PHASES[:5],
            lines=[("stdout", f"line {i:03d}") for i in range(45)],
        )
        html = swap_panel()
        assert "line 014" not in html
        assert "line 015" in html and "line 044" in html
        assert "Last 30 of 45 lines" in html

    def test_it_escapes_log_lines(self):
        swap = make_swap(
            "spark-1",
            "qwen3-600m",
            PHASES[:5],
            lines=[("stdout", '<script>alert("x")</script><img src=x onerror=alert(1)>')],
        )
        for html in (swap_panel(), swap_log(swap.pk)):
            assert "<script>alert" not in html
            assert "<img src=x" not in html
            assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x" in html

    def test_it_marks_where_a_failed_swap_stopped_and_shows_its_error_in_the_history(self):
        swap = make_swap(
            "spark-1",
            "smollm2-instruct",
            ["pending", "preflight", "stopping", "launching", "failed"],
            lines=[("stdout", "EngineCore failed to start."), ("stderr", "RuntimeError: boom")],
            error="container exited with status 1",
        )
        html = swap_panel()
        # It is still its host's current swap (it just ended) ...
        assert steps(html, swap.pk) == {
            "pending": "done",
            "preflight": "done",
            "stopping": "done",
            "launching": "stopped-failed",
            "waiting_healthy": "skipped",
            "failed": "failed",
        }
        assert "swap-cancel" not in html
        # ... and in the history, with its outcome, duration and error.
        history = section(html, "swap-history")
        entry = section(history, f"swap-past-{swap.pk}")
        assert 'data-state="failed"' in entry
        assert "smollm2-instruct" in entry and "spark-1" in entry
        assert "4.0 s" in entry  # requested → failed
        assert "container exited with status 1" in entry
        assert f'hx-get="/swaps/{swap.pk}/log"' in entry
        # The full log keeps every line and the error.
        log = swap_log(swap.pk)
        assert "container exited with status 1" in log
        assert "EngineCore failed to start." in log and "RuntimeError: boom" in log
        assert 'class="log-line log-stderr"' in log

    def test_it_shows_a_completed_swap_done_without_a_ticker_or_cancel(self):
        swap = make_swap("spark-1", "qwen3-600m", PHASES, lines=[("stdout", "ready")])
        html = swap_panel()
        assert set(steps(html, swap.pk).values()) == {"done"}
        assert '<progress max="100" value="100">' in html
        card = section(section(html, "swap-current"), f"swap-{swap.pk}")
        assert "data-running" not in card
        assert "swap-cancel" not in card
        assert ">5.0 s<" in card

    def test_it_keeps_long_finished_swaps_in_the_history_only(self):
        old = make_swap("spark-1", "qwen3-600m", PHASES, ago=3600)
        html = swap_panel()
        assert f'id="swap-{old.pk}"' not in section(html, "swap-current")
        assert "No swap running" in html
        assert f'id="swap-past-{old.pk}"' in section(html, "swap-history")

    def test_it_shows_one_card_per_host_preferring_the_active_swap(self):
        ended = make_swap("spark-1", "qwen3-600m", PHASES, ago=60)
        running = make_swap("spark-1", "bge-small", PHASES[:3], ago=5)
        other = make_swap("spark-2", "smollm2-instruct", PHASES[:2], ago=1)
        current = section(swap_panel(), "swap-current")
        assert f'id="swap-{running.pk}"' in current
        assert f'id="swap-{other.pk}"' in current
        assert f'id="swap-{ended.pk}"' not in current

    def test_it_is_part_of_the_full_state_a_socket_gets_on_connect(self):
        make_swap("spark-1", "qwen3-600m", PHASES[:3])
        state = full_state()
        assert re.search(r'<section id="swap-panel"[^>]*hx-swap-oob="true"', state, re.S)


@pytest.mark.django_db
class TestViews:
    @pytest.mark.parametrize("path", ["/fragments/swaps", "/swaps/{id}/log"])
    def test_it_needs_a_login(self, path):
        swap = make_swap("spark-1", "qwen3-600m", PHASES)
        url = path.format(id=swap.pk)
        response = Client().get(url, headers={"HX-Request": "true"})
        assert response.status_code == 204
        assert response["HX-Redirect"] == "/login/?next=/"
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")

    def test_it_serves_the_panel_and_a_log_to_a_logged_in_user(self, bob):
        swap = make_swap("spark-1", "qwen3-600m", PHASES, lines=[("stdout", "served")])
        client = Client()
        client.force_login(bob)
        panel = client.get("/fragments/swaps", headers={"HX-Request": "true"})
        assert panel.status_code == 200
        assert b'id="swap-panel"' in panel.content
        assert b"hx-swap-oob" not in panel.content  # the poll swaps it in place
        log = client.get(f"/swaps/{swap.pk}/log", headers={"HX-Request": "true"})
        assert log.status_code == 200
        assert b"served" in log.content
        assert client.get("/swaps/999999/log").status_code == 404

    def test_it_is_included_in_the_page(self, bob):
        swap = make_swap("spark-1", "qwen3-600m", PHASES[:4])
        client = Client()
        client.force_login(bob)
        page = client.get("/").content.decode()
        assert '<section id="swap-panel"' in page
        assert f'data-swap-id="{swap.pk}" data-state="launching"' in page


# -- pushes ----------------------------------------------------------------------------
async def _listen() -> tuple[object, str]:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(DASHBOARD_GROUP, channel)
    return layer, channel


async def _drain(layer, channel, quiet: float = 0.8) -> list[str]:
    """Every fragment pushed until nothing came for `quiet` seconds."""
    pushed = []
    while True:
        try:
            message = await asyncio.wait_for(layer.receive(channel), quiet)
        except TimeoutError:
            return pushed
        pushed.append(message["html"])


@pytest.mark.django_db(transaction=True)
async def test_it_is_pushed_by_the_engine_journal_for_a_line():
    swap = await sync_to_async(make_swap)("spark-1", "qwen3-600m", PHASES[:3])
    layer, channel = await _listen()
    journal = SwapJournal(swap.pk)
    await journal.load()
    await journal.say("stopping arbiter-vllm")
    pushed = await _drain(layer, channel)
    assert len(pushed) == 1
    opening = '<div id="swap-current" class="swap-current" hx-swap-oob="true"'
    assert pushed[0].lstrip().startswith(opening)
    assert "stopping arbiter-vllm" in pushed[0]


@pytest.mark.django_db(transaction=True)
async def test_it_throttles_a_chatty_log_and_still_delivers_the_last_state():
    swap = await sync_to_async(make_swap)("spark-1", "qwen3-600m", PHASES[:5])
    layer, channel = await _listen()
    started = asyncio.get_running_loop().time()
    for _line in range(80):  # 80 lines in about 1 s
        on_swap_progressed(None, swap_id=swap.pk, ended=False)
        await asyncio.sleep(0.0125)

    @sync_to_async
    def complete() -> None:
        Swap.objects.filter(pk=swap.pk).update(state="complete", finished_at=timezone.now())
        SwapTransition.objects.create(swap=swap, state="complete")

    await complete()
    on_swap_progressed(None, swap_id=swap.pk, ended=True)
    pushed = await _drain(layer, channel)
    took = asyncio.get_running_loop().time() - started
    # At most one push per interval (plus the first one, sent at once).
    assert 2 <= len(pushed) <= took / PUSH_INTERVAL + 2, len(pushed)
    # The ending pushes the whole panel (the history changed), showing the final state.
    assert pushed[-1].lstrip().startswith('<section id="swap-panel"')
    assert f'data-swap-id="{swap.pk}" data-state="complete"' in pushed[-1]
    assert f'id="swap-past-{swap.pk}"' in pushed[-1]

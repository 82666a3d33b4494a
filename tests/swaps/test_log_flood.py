"""A container that floods its log: Arbiter's memory stays bounded, the stored lines are
capped with a marker and the tail kept, an endless line is cut, and the swap completes.

The simulated container prints FLOOD_MIB of 200-character lines and one 1 MiB line
without a break before it starts (fault `log_flood_mib`); the real `docker logs`
replays the same through SSH, which the engine follows. Peak memory (VmHWM) is that of
this whole test process — the engine, the simulated hosts' sshd and docker — so it
bounds Arbiter's share from above.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from arbiter.models import SwapLogLine
from tests.swaps.conftest import log_lines, start_swap, wait_for_state

FINAL = ["complete", "failed", "cancelled"]

# 16 MiB (84k lines) in the suite; the note's 1 GiB figure: ARBITER_TEST_FLOOD_MIB=1024.
FLOOD_MIB = float(os.environ.get("ARBITER_TEST_FLOOD_MIB", "16"))
MAX_LINES = 1500
TAIL_LINES = 100
LINE_CHARS = 4096


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.fixture
def capped_log(settings):
    settings.ARBITER_SWAP_LOG_MAX_LINES = MAX_LINES
    settings.ARBITER_SWAP_LOG_TAIL_LINES = TAIL_LINES
    settings.ARBITER_SWAP_LOG_LINE_CHARS = LINE_CHARS
    settings.ARBITER_SWAP_HEALTH_TIMEOUT = 120.0


@pytest.mark.timeout(300)  # every stored line is also published (Redis in CI's second run)
async def test_it_caps_cuts_and_bounds_a_flooded_log_and_the_swap_completes(
    cluster, dispatcher, aclient, capped_log
):
    cluster.inject("sim-b", log_flood_mib=FLOOD_MIB)
    before = peak_rss_mib()
    started = time.monotonic()
    response = await start_swap(aclient, "qwen3-small")
    swap = await wait_for_state(response.json()["id"], FINAL, timeout=240)
    took = time.monotonic() - started
    growth = peak_rss_mib() - before
    assert swap.state == "complete", swap.error

    lines = await log_lines(swap.pk)
    output = [text for text in await log_lines(swap.pk, "stdout")]
    flood_lines = int(FLOOD_MIB * 1024 * 1024 / 200)
    print(
        f"\n{FLOOD_MIB:g} MiB of log ({flood_lines} lines) followed in {took:.1f} s; "
        f"{len(lines)} lines stored; peak RSS of the test process grew {growth:.0f} MiB"
    )
    # Capped: the first MAX_LINES container lines, the marker, then the last ones.
    markers = [text for text in lines if "lines of the container's output not stored" in text]
    assert len(markers) == 1, markers
    assert f"ARBITER_SWAP_LOG_MAX_LINES={MAX_LINES}" in markers[0]
    container_lines = await _container_line_count(swap.pk)
    assert MAX_LINES <= container_lines <= MAX_LINES + 2 * TAIL_LINES
    assert output[0].startswith("WARNING flood.py:1 [simulated flood] line         0")
    # The tail is the end of the log: the start-up lines that came after the flood.
    assert any("Application startup complete." in text for text in output[-TAIL_LINES:])
    # The 1 MiB line is cut, not stored whole (it lies in the part left out here, so
    # the longest stored line is a whole 200-character one or a cut one).
    assert max(len(text) for text in lines) <= LINE_CHARS + 64
    # Bounded: far less than the flood passed through this process.
    assert growth < max(64.0, FLOOD_MIB / 2), f"peak RSS grew {growth:.0f} MiB"


async def _container_line_count(swap_id: int) -> int:
    from asgiref.sync import sync_to_async

    return await sync_to_async(
        SwapLogLine.objects.filter(swap_id=swap_id, stream__in=("stdout", "stderr")).count
    )()


def test_it_finds_the_overlap_where_the_end_of_the_log_continues_what_was_seen():
    from collections import deque

    from arbiter.engine.swaps.journal import overlap

    seen = deque([("stdout", f"line {n}") for n in range(10)], maxlen=5)  # lines 5..9
    end = [("stdout", f"line {n}") for n in range(7, 12)]  # the log's last five: 7..11
    assert overlap(seen, end) == 3  # 7, 8, 9 seen; 10 and 11 are new
    assert overlap(seen, [("stdout", "line 12")]) == 0  # a gap: nothing in common
    assert overlap(seen, [("stdout", f"line {n}") for n in range(5, 10)]) == 5  # all seen
    assert overlap(deque(), end) == 0

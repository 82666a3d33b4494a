"""The hosts' GPU plots, per GPU utilisation and memory use (percent) against time.

Two views of the same samples: the card's five minutes (every reading) and the host's
history page, all the database keeps (`arbiter.engine.sampler.HISTORY`) averaged into
a fixed number of points, so a plot costs the same however often hosts are sampled.

The sampler draws a host's card on every tick (32 hosts every 2 s), and reading the
plot window back from the database for each card was the largest part of that cost.
So the process that samples (the engine leader) keeps each host's window in memory:
read from the database the first time, and again after a gap (a leader change, a host
that missed ticks), then extended with each tick's rows as they are written and cut to
the window. Page loads and polls read the database; both give the same series.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple, TypedDict

from django.conf import settings
from django.utils import timezone

from arbiter.engine.sampler import HISTORY
from arbiter.models import GpuSample

WINDOW = timedelta(minutes=5)
LONG_WINDOW = HISTORY  # the history page shows all the samples the database keeps
LONG_POINTS = 180  # per GPU and series on the history page: 5 s apart over 15 minutes


class GpuHistory(TypedDict):
    """One GPU's plot, oldest first: each point's age (seconds before the right edge of
    the plot, its "now") and its readings; a None reading breaks the line (a gap)."""

    ages_s: list[float]
    utilization_pct: list[float | None]
    memory_pct: list[float | None]


class Point(NamedTuple):
    taken_at: datetime
    index: int
    utilization_pct: float | None
    memory_pct: float | None


_windows: dict[int, deque[Point]] = {}  # per host, oldest first
_lock = threading.Lock()


def empty_history() -> GpuHistory:
    return GpuHistory(ages_s=[], utilization_pct=[], memory_pct=[])


def memory_pct(used: float | None, total: float | None) -> float | None:
    return 100.0 * used / total if used is not None and total else None


def sample_gap_s() -> float:
    """Readings further apart than this are drawn with a gap between them: one missed
    tick still joins up, a host that was away for longer shows where it was away."""
    return 3 * float(settings.ARBITER_SAMPLE_INTERVAL)


def read_points(host_id: int, now: datetime, window: timedelta = WINDOW) -> deque[Point]:
    rows = (
        GpuSample.objects.filter(host_id=host_id, taken_at__gte=now - window)
        .order_by("taken_at")
        .values_list("taken_at", "index", "utilization_pct", "memory_used_mib", "memory_total_mib")
    )
    return deque(Point(at, i, util, memory_pct(used, total)) for at, i, util, used, total in rows)


def gpu_history(host_id: int) -> dict[int, GpuHistory]:
    """The window as the database holds it now."""
    now = timezone.now()
    return series(read_points(host_id, now), now)


def history_with_tick(host_id: int, tick: list[GpuSample]) -> dict[int, GpuHistory]:
    """The window including `tick`, the rows of one time the sampler just wrote."""
    if not tick:  # no GPU readings this tick (a driver fault): the card shows no GPUs
        return {}
    taken_at = tick[0].taken_at
    # Further apart than a few ticks: samples may have been written by another leader
    # meanwhile, or none at all; either way the database has the truth.
    gap = timedelta(seconds=sample_gap_s())
    with _lock:
        points = _windows.get(host_id)
        if not points or taken_at - points[-1].taken_at > gap:
            points = read_points(host_id, taken_at)  # holds the tick: it is written
        else:
            points.extend(
                Point(
                    r.taken_at,
                    r.index,
                    r.utilization_pct,
                    memory_pct(r.memory_used_mib, r.memory_total_mib),
                )
                for r in tick
            )
        start = taken_at - WINDOW
        while points and points[0].taken_at < start:
            points.popleft()
        _windows[host_id] = points
        return series(points, taken_at)


def long_history(
    host_id: int,
    now: datetime | None = None,
    window: timedelta = LONG_WINDOW,
    points: int = LONG_POINTS,
) -> dict[int, GpuHistory]:
    """`window` before `now` in `points` equal spans per GPU, each the mean of the
    readings in it, at its middle; a span without readings leaves a gap."""
    now = now or timezone.now()
    start = now - window
    span = window / points
    span_s = span.total_seconds()
    # (index, span number) -> [utilisation sum, count, memory sum, count]
    sums: dict[tuple[int, int], list[float]] = {}
    for point in read_points(host_id, now, window):
        number = min(int((point.taken_at - start).total_seconds() / span_s), points - 1)
        total = sums.setdefault((point.index, number), [0.0, 0, 0.0, 0])
        if point.utilization_pct is not None:
            total[0] += point.utilization_pct
            total[1] += 1
        if point.memory_pct is not None:
            total[2] += point.memory_pct
            total[3] += 1
    means = [
        Point(
            start + span * (number + 0.5),
            index,
            util / util_count if util_count else None,
            mem / mem_count if mem_count else None,
        )
        for (index, number), (util, util_count, mem, mem_count) in sorted(
            sums.items(), key=lambda item: (item[0][1], item[0][0])
        )
    ]
    return series(means, now, gap_s=max(1.5 * span_s, sample_gap_s()))


def series(
    points: Iterable[Point], now: datetime, gap_s: float | None = None
) -> dict[int, GpuHistory]:
    """Per GPU, the points' ages before `now` and readings, oldest first; where two
    readings are more than `gap_s` apart, a None between them breaks the line."""
    gap = sample_gap_s() if gap_s is None else gap_s
    history: dict[int, GpuHistory] = {}
    last_age: dict[int, float] = {}
    for point in points:
        age = (now - point.taken_at).total_seconds()
        gpu = history.get(point.index)
        if gpu is None:
            gpu = history[point.index] = empty_history()
        elif last_age[point.index] - age > gap:
            gpu["ages_s"].append((last_age[point.index] + age) / 2)
            gpu["utilization_pct"].append(None)
            gpu["memory_pct"].append(None)
        last_age[point.index] = age
        gpu["ages_s"].append(age)
        gpu["utilization_pct"].append(point.utilization_pct)
        gpu["memory_pct"].append(point.memory_pct)
    return history

"""The host cards' five-minute plots: per GPU, utilisation and memory use (percent).

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
from datetime import datetime, timedelta
from typing import NamedTuple, TypedDict

from django.conf import settings
from django.utils import timezone

from arbiter.models import GpuSample

WINDOW = timedelta(minutes=5)


class GpuHistory(TypedDict):
    utilization_pct: list[float | None]
    memory_pct: list[float | None]


class Point(NamedTuple):
    taken_at: datetime
    index: int
    utilization_pct: float | None
    memory_pct: float | None


_windows: dict[int, deque[Point]] = {}  # per host, oldest first
_lock = threading.Lock()


def memory_pct(used: float | None, total: float | None) -> float | None:
    return 100.0 * used / total if used is not None and total else None


def read_points(host_id: int, now: datetime) -> deque[Point]:
    rows = (
        GpuSample.objects.filter(host_id=host_id, taken_at__gte=now - WINDOW)
        .order_by("taken_at")
        .values_list("taken_at", "index", "utilization_pct", "memory_used_mib", "memory_total_mib")
    )
    return deque(Point(at, i, util, memory_pct(used, total)) for at, i, util, used, total in rows)


def gpu_history(host_id: int) -> dict[int, GpuHistory]:
    """The window as the database holds it now."""
    return series(read_points(host_id, timezone.now()))


def history_with_tick(host_id: int, tick: list[GpuSample]) -> dict[int, GpuHistory]:
    """The window including `tick`, the rows of one time the sampler just wrote."""
    if not tick:  # no GPU readings this tick (a driver fault): the card shows no GPUs
        return {}
    taken_at = tick[0].taken_at
    # Further apart than a few ticks: samples may have been written by another leader
    # meanwhile, or none at all; either way the database has the truth.
    gap = timedelta(seconds=3 * float(settings.ARBITER_SAMPLE_INTERVAL))
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
        return series(points)


def series(points: deque[Point]) -> dict[int, GpuHistory]:
    history: dict[int, GpuHistory] = {}
    for point in points:
        gpu = history.setdefault(point.index, GpuHistory(utilization_pct=[], memory_pct=[]))
        gpu["utilization_pct"].append(point.utilization_pct)
        gpu["memory_pct"].append(point.memory_pct)
    return history

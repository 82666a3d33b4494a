"""The timeline page (`#timeline`): per host, bars over the next hours, conflicts marked.

The data is `coordination.schedules.timeline` (the same as GET /api/timeline); this only
places each item as a left offset and a width in percent of the window.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from coordination.schedules.timeline import timeline

HOURS = 24
MIN_WIDTH = 0.4  # percent: a run (an instant) is still visible


def _bar(start: datetime, end: datetime, window_start: datetime, span: float) -> dict[str, float]:
    left = max(0.0, (start - window_start).total_seconds() / span * 100)
    right = min(100.0, (end - window_start).total_seconds() / span * 100)
    return {"left": round(left, 3), "width": round(max(MIN_WIDTH, right - left), 3)}


def timeline_context(hours: int = HOURS, now: datetime | None = None) -> dict[str, Any]:
    data = timeline(hours, now or timezone.now())
    start, end = data["start"], data["end"]
    span = (end - start).total_seconds()
    hosts = []
    for host in data["hosts"]:
        rows = [
            {**run, "bar": _bar(run["window_start"], run["window_end"], start, span)}
            for run in host["runs"]
        ]
        warm_ups = [
            {**item, "bar": _bar(item["starts_at"], item["hold_until"], start, span)}
            for item in host["warm_ups"]
        ]
        leases = [
            {**lease, "bar": _bar(max(lease["starts_at"], start), lease["expires_at"], start, span)}
            for lease in host["leases"]
        ]
        conflicts = [
            {**conflict, "bar": _bar(conflict["start"], conflict["end"], start, span)}
            for conflict in host["conflicts"]
        ]
        hosts.append(
            {
                "name": host["name"],
                "runs": rows,
                "warm_ups": warm_ups,
                "leases": leases,
                "conflicts": conflicts,
            }
        )
    lock = data["lock"]
    lock_bar = _bar(start, lock["expires_at"], start, span) if lock["expires_at"] else None
    ticks = [
        {"label": f"{start + timedelta(hours=h):%H:%M}", "left": round(h / hours * 100, 3)}
        for h in range(0, hours, max(1, hours // 12))
    ]
    return {
        "timeline": data,
        "hosts": hosts,
        "lock_bar": lock_bar,
        "ticks": ticks,
        "conflicts": data["conflicts"],
    }

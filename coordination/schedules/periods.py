"""A cron expression's period: the shortest gap between two consecutive runs.

A warm-up's lead may not exceed it, or the warm-up for one run would start before the
previous run (and its hold) had happened.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

# Runs are sampled over a year from a fixed start (so the answer does not depend on the
# day it is asked): enough for every weekday/month pattern, and DST's 23-hour days.
SAMPLE_START = datetime(2030, 1, 1, tzinfo=UTC)
SAMPLE_SPAN = timedelta(days=366)
SAMPLE_RUNS = 5000


def shortest_gap_seconds(cron: str, tz_name: str) -> float | None:
    """The smallest gap between consecutive runs in seconds, None for under two runs."""
    zone = ZoneInfo(tz_name)
    try:
        runs = CronSim(cron, SAMPLE_START.astimezone(zone))
    except CronSimError:
        return None
    end = SAMPLE_START + SAMPLE_SPAN
    shortest: float | None = None
    previous: datetime | None = None
    for count, local in enumerate(runs):
        run = local.astimezone(UTC)
        if run >= end or count >= SAMPLE_RUNS:
            break
        if previous is not None and run > previous:
            gap = (run - previous).total_seconds()
            shortest = gap if shortest is None else min(shortest, gap)
        previous = run
    return shortest

"""What the dashboard points out about the registered jobs: runs while the lock is held,
and jobs that fire close together."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from arbiter.errors import InvalidInput
from coordination.schedules.runs import Schedule, aware, next_runs, runs_between


@dataclass(frozen=True)
class ScheduleWarning:
    """Something the dashboard should point out about the registered jobs."""

    kind: Literal["lock_held", "collision"]
    job_ids: tuple[str, ...]
    runs: tuple[datetime, ...]  # UTC: the run concerned, or the two colliding runs
    message: str


def _hhmm(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _minutes(span: timedelta) -> str:
    minutes = span.total_seconds() / 60
    return f"{minutes:g} minute" + ("" if minutes == 1 else "s")


def schedule_warnings(
    jobs: Iterable[Schedule],
    held_until: datetime | None,
    window: timedelta = timedelta(minutes=10),
    horizon: timedelta = timedelta(hours=24),
    *,
    now: datetime | None = None,
) -> list[ScheduleWarning]:
    """Warnings about the jobs, computed from plain values (no database, no lock module).

    - `lock_held`: the job's next run falls before `held_until` (the lock's expiry, None
      when the lock is free): that run will find the GPU reserved. One per job.
    - `collision`: two jobs have runs at most `window` apart within `horizon` from now.
      One per pair of jobs, for their first such runs.
    Jobs whose stored cron or timezone no longer validates are skipped.
    """
    start = aware(now)
    usable: list[tuple[Schedule, list[datetime]]] = []
    for job in jobs:
        try:
            usable.append((job, runs_between(job, start, start + horizon)))
        except InvalidInput:
            continue

    warnings: list[ScheduleWarning] = []
    if held_until is not None and aware(held_until) > start:
        for job, _runs in usable:
            first = next_runs(job, 1, after=start)
            if first and first[0] < held_until:
                warnings.append(
                    ScheduleWarning(
                        "lock_held",
                        (job.job_id,),
                        (first[0],),
                        f"{job.job_id} fires at {_hhmm(first[0])} while the lock is held "
                        f"(until {_hhmm(held_until)})",
                    )
                )

    events = sorted((run, job.job_id) for job, runs in usable for run in runs)
    seen: set[tuple[str, str]] = set()
    low = 0
    for high, (run, job_id) in enumerate(events):
        while events[low][0] < run - window:
            low += 1
        for earlier, other_id in events[low:high]:
            pair = (other_id, job_id) if other_id < job_id else (job_id, other_id)
            if other_id == job_id or pair in seen:
                continue
            seen.add(pair)
            warnings.append(
                ScheduleWarning(
                    "collision",
                    (other_id, job_id),
                    (earlier, run),
                    f"{other_id} ({_hhmm(earlier)}) and {job_id} ({_hhmm(run)}) fire within "
                    f"{_minutes(window)} of each other",
                )
            )
    return warnings

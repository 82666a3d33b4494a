"""A job's run times: from its cron expression in its own IANA timezone, handed out in UTC."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Protocol
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from django.utils import timezone

from coordination.schedules.cron import cron_error, validate_cron
from coordination.schedules.jobs import validate_timezone


class Schedule(Protocol):
    """What the run computations need of a job (a ScheduledJob, or anything shaped so)."""

    job_id: str
    cron: str
    timezone: str


def aware(moment: datetime | None) -> datetime:
    if moment is None:
        return timezone.now()
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("schedule times must be timezone-aware")
    return moment


def iter_runs(job: Schedule, after: datetime | None = None) -> Iterator[datetime]:
    """The job's run times strictly after `after` (default now), as UTC datetimes.

    Stops when cronsim finds nothing in 50 years. A stored row that no longer validates
    (a timezone dropped from tzdata) raises InvalidInput naming the field.
    """
    start = aware(after)
    try:
        zone = ZoneInfo(validate_timezone(job.timezone))
        runs = CronSim(validate_cron(job.cron), start.astimezone(zone))
    except CronSimError as error:  # validate_cron and CronSim disagreeing: report, not 500
        raise cron_error(str(error)) from None
    last = start
    for local in runs:
        run = local.astimezone(UTC)
        # cronsim follows Debian cron across a DST fall-back: a job at a fixed local
        # time (`30 3 * * *`) runs in the first 03:30 only. Started inside the repeated
        # hour, it hands back that first 03:30, which is already in the past.
        if run <= last:
            continue
        last = run
        yield run


def next_runs(job: Schedule, count: int = 5, after: datetime | None = None) -> list[datetime]:
    """The next `count` run times after `after` (default now), computed in the job's
    timezone (DST as cronsim and Debian cron do it), returned in UTC."""
    return list(islice(iter_runs(job, after), count))


def runs_between(
    job: Schedule, start: datetime, end: datetime, limit: int = 2000
) -> list[datetime]:
    """Run times in (start, end), at most `limit` of them."""
    runs: list[datetime] = []
    for run in iter_runs(job, start):
        if run >= end or len(runs) >= limit:
            break
        runs.append(run)
    return runs

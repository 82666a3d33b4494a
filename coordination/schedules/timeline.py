"""The timeline: what will happen on each host in the next hours, and where it collides.

Per host: the scheduled runs placed there (a job's host is its warm-up host; jobs without
one are listed apart, `unplaced_runs`), the warm-ups (rows already claimed, and the ones
the loop will claim for later runs), the held leases; globally the lock. Conflicts:
- `jobs`: two jobs needing different models on one host, with overlapping windows (a
  job's window runs from its lead before the run to its hold after it);
- `lease`: a warm-up whose window meets someone else's lease on another model of its
  host (the warm-up's swap would be refused), and every warm-up recorded as missed.
Plain values only (TypedDicts): the API returns them, the dashboard draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

from django.utils import timezone

from arbiter.errors import InvalidInput
from arbiter.models import Host
from coordination.leases.gate import active_leases
from coordination.locks.gate import current_lock
from coordination.models import ScheduledJob, WarmUp
from coordination.schedules.runs import runs_between
from coordination.schedules.warm_ups import expected_load_seconds

MIN_HOURS = 1
MAX_HOURS = 168


class RunItem(TypedDict):
    job_id: str
    model: str
    run_at: datetime
    window_start: datetime  # run_at - lead (the model must be ready by then)
    window_end: datetime  # run_at + hold


class WarmUpItem(TypedDict):
    job_id: str
    model: str
    run_at: datetime
    starts_at: datetime  # when the loop claims it and swaps
    hold_until: datetime
    state: str  # planned (also for runs not claimed yet), swapping, held, done, missed
    reason: str


class LeaseItem(TypedDict):
    id: int
    model: str
    holder: str
    purpose: str
    system: bool
    starts_at: datetime
    expires_at: datetime


class ConflictItem(TypedDict):
    kind: str  # jobs / lease
    host: str
    start: datetime
    end: datetime
    job_ids: list[str]
    message: str


class HostTimeline(TypedDict):
    name: str
    runs: list[RunItem]
    warm_ups: list[WarmUpItem]
    leases: list[LeaseItem]
    conflicts: list[ConflictItem]


class LockItem(TypedDict):
    held: bool
    holder: str
    purpose: str
    expires_at: datetime | None


class Timeline(TypedDict):
    start: datetime
    end: datetime
    hours: int
    hosts: list[HostTimeline]
    unplaced_runs: list[RunItem]
    lock: LockItem
    conflicts: list[ConflictItem]


def check_hours(hours: int) -> int:
    if not MIN_HOURS <= hours <= MAX_HOURS:
        raise InvalidInput(f"hours: must be {MIN_HOURS} to {MAX_HOURS}", field="hours")
    return hours


def _hhmm(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


@dataclass
class _Window:
    job: ScheduledJob
    run: RunItem


def _job_runs(job: ScheduledJob, start: datetime, end: datetime) -> list[RunItem]:
    lead = timedelta(seconds=job.warm_up_lead_seconds)
    hold = timedelta(seconds=job.warm_up_hold_seconds)
    try:
        runs = runs_between(job, start, end)
    except InvalidInput:  # a stored row that no longer validates: nothing to draw
        return []
    return [
        RunItem(
            job_id=job.job_id,
            model=job.target_model.key,
            run_at=run,
            window_start=run - lead,
            window_end=run + hold,
        )
        for run in runs
    ]


def _job_conflicts(host: str, windows: list[_Window]) -> list[ConflictItem]:
    conflicts: list[ConflictItem] = []
    seen: set[tuple[str, str, datetime, datetime]] = set()
    ordered = sorted(windows, key=lambda w: w.run["window_start"])
    for index, first in enumerate(ordered):
        for second in ordered[index + 1 :]:
            if second.run["window_start"] > first.run["window_end"]:
                break
            if first.run["model"] == second.run["model"]:
                continue
            key = (first.job.job_id, second.job.job_id, first.run["run_at"], second.run["run_at"])
            if key in seen:
                continue
            seen.add(key)
            conflicts.append(
                ConflictItem(
                    kind="jobs",
                    host=host,
                    start=second.run["window_start"],
                    end=min(first.run["window_end"], second.run["window_end"]),
                    job_ids=[first.job.job_id, second.job.job_id],
                    message=(
                        f"{first.job.job_id} ({first.run['model']}, {_hhmm(first.run['run_at'])}) "
                        f"and {second.job.job_id} ({second.run['model']}, "
                        f"{_hhmm(second.run['run_at'])}) need different models on {host} at once"
                    ),
                )
            )
    return conflicts


def _warm_ups(
    job: ScheduledJob, runs: list[RunItem], rows: dict[tuple[int, datetime], WarmUp]
) -> list[WarmUpItem]:
    assert job.warm_up_host is not None
    load = timedelta(seconds=expected_load_seconds(job.target_model.key, job.warm_up_host.name))
    items: list[WarmUpItem] = []
    for run in runs:
        row = rows.get((job.pk, run["run_at"]))
        items.append(
            WarmUpItem(
                job_id=job.job_id,
                model=run["model"],
                run_at=run["run_at"],
                starts_at=run["window_start"] - load,
                hold_until=run["window_end"],
                state=row.state if row is not None else WarmUp.PLANNED,
                reason=row.reason if row is not None else "",
            )
        )
    return items


def timeline(hours: int = 24, now: datetime | None = None) -> Timeline:
    """The next `hours` hours per host (InvalidInput naming `hours` outside 1..168)."""
    check_hours(hours)
    start = now or timezone.now()
    end = start + timedelta(hours=hours)
    hosts: dict[str, HostTimeline] = {
        name: HostTimeline(name=name, runs=[], warm_ups=[], leases=[], conflicts=[])
        for name in Host.objects.order_by("name").values_list("name", flat=True)
    }
    unplaced: list[RunItem] = []
    windows: dict[str, list[_Window]] = {}
    rows = {
        (row.job_id, row.run_at): row
        for row in WarmUp.objects.select_related("job").filter(
            run_at__gte=start - timedelta(days=1), run_at__lt=end
        )
    }
    jobs = ScheduledJob.objects.select_related("target_model", "warm_up_host")
    for job in jobs:
        runs = _job_runs(job, start, end)
        if job.warm_up_host is None:
            unplaced.extend(runs)
            continue
        host = hosts[job.warm_up_host.name]
        host["runs"].extend(runs)
        host["warm_ups"].extend(_warm_ups(job, runs, rows))
        windows.setdefault(host["name"], []).extend(_Window(job, run) for run in runs)
    # Warm-ups recorded as missed whose run has passed but whose window has not.
    for row in rows.values():
        if row.state == WarmUp.MISSED and row.run_at <= start and row.hold_until > start:
            if row.host_name in hosts:
                hosts[row.host_name]["warm_ups"].append(
                    WarmUpItem(
                        job_id=row.job.job_id,
                        model=row.model_key,
                        run_at=row.run_at,
                        starts_at=row.created_at,
                        hold_until=row.hold_until,
                        state=row.state,
                        reason=row.reason,
                    )
                )
    for lease in active_leases(start):
        if lease.host.name in hosts:
            hosts[lease.host.name]["leases"].append(
                LeaseItem(
                    id=lease.pk,
                    model=lease.model_key,
                    holder=lease.holder,
                    purpose=lease.purpose,
                    system=lease.system,
                    starts_at=lease.created_at,
                    expires_at=lease.expires_at,
                )
            )
    conflicts: list[ConflictItem] = []
    for name, host in hosts.items():
        host["runs"].sort(key=lambda run: run["run_at"])
        host["warm_ups"].sort(key=lambda item: item["run_at"])
        host["conflicts"] = _job_conflicts(name, windows.get(name, [])) + _lease_conflicts(host)
        conflicts.extend(host["conflicts"])
    lock = current_lock()
    return Timeline(
        start=start,
        end=end,
        hours=hours,
        hosts=list(hosts.values()),
        unplaced_runs=sorted(unplaced, key=lambda run: run["run_at"]),
        lock=LockItem(
            held=lock.held,
            holder=(lock.holder or "") if lock.held else "",
            purpose=(lock.purpose or "") if lock.held else "",
            expires_at=lock.expires_at if lock.held else None,
        ),
        conflicts=conflicts,
    )


def _lease_conflicts(host: HostTimeline) -> list[ConflictItem]:
    """Warm-ups that someone else's lease on another model of the host would refuse,
    and the warm-ups recorded as missed."""
    conflicts: list[ConflictItem] = []
    for item in host["warm_ups"]:
        if item["state"] == WarmUp.MISSED:
            conflicts.append(
                ConflictItem(
                    kind="lease",
                    host=host["name"],
                    start=item["starts_at"],
                    end=item["hold_until"],
                    job_ids=[item["job_id"]],
                    message=f"warm-up of {item['model']} for {item['job_id']} "
                    f"({_hhmm(item['run_at'])}) missed: {item['reason']}",
                )
            )
            continue
        if item["state"] != WarmUp.PLANNED:
            continue
        for lease in host["leases"]:
            if lease["model"] != item["model"] and lease["expires_at"] > item["starts_at"]:
                conflicts.append(
                    ConflictItem(
                        kind="lease",
                        host=host["name"],
                        start=item["starts_at"],
                        end=min(lease["expires_at"], item["hold_until"]),
                        job_ids=[item["job_id"]],
                        message=f"warm-up of {item['model']} for {item['job_id']} "
                        f"({_hhmm(item['run_at'])}) is blocked by {lease['holder']!r}'s lease "
                        f"on {lease['model']} until {_hhmm(lease['expires_at'])}",
                    )
                )
                break
    return conflicts

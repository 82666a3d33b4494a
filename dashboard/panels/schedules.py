"""The schedule panel (`#schedule-panel`): registered jobs, next runs, warnings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict
from zoneinfo import ZoneInfo

from django.template.loader import render_to_string
from django.utils import timezone

from arbiter.errors import InvalidInput
from coordination import locks
from coordination.models import ScheduledJob, WarmUp
from coordination.schedules import next_runs, schedule_warnings

NEXT_RUNS = 3
COLLISION_WINDOW = timedelta(minutes=10)
WARNING_HORIZON = timedelta(hours=24)
WARM_UPS_SHOWN = 10


class RunView(TypedDict):
    utc: datetime
    utc_label: str
    local_label: str


class JobView(TypedDict):
    """A registered job as the panel shows it."""

    job_id: str
    name: str
    owner: str
    cron: str
    timezone: str
    target_model: str
    description: str
    next_runs: list[RunView]
    error: str
    warned: bool
    warm_up: str  # "on sim-b, ready 10 min before, held 30 min after"; "" without one


class WarmUpView(TypedDict):
    """A warm-up of one run (coordination.schedules.warm_ups), as the panel lists it."""

    job_id: str
    model: str
    host: str
    run_label: str
    state: str
    reason: str


def _warm_up_label(job: ScheduledJob) -> str:
    if job.warm_up_host is None:
        return ""
    return (
        f"on {job.warm_up_host.name}, ready {job.warm_up_lead_seconds} s before, "
        f"held {job.warm_up_hold_seconds} s after"
    )


def _warm_up_views(now: datetime) -> list[WarmUpView]:
    """Open warm-ups and those of runs in the last day (the missed ones with the reason)."""
    rows = (
        WarmUp.objects.select_related("job")
        .filter(run_at__gte=now - timedelta(days=1))
        .order_by("-run_at", "-pk")[:WARM_UPS_SHOWN]
    )
    return [
        WarmUpView(
            job_id=row.job.job_id,
            model=row.model_key,
            host=row.host_name,
            run_label=f"{row.run_at.astimezone(UTC):%a %Y-%m-%d %H:%M} UTC",
            state=row.state,
            reason=row.reason,
        )
        for row in rows
    ]


class WarningView(TypedDict):
    kind: str  # lock_held / collision
    job_ids: list[str]
    message: str


def _run_view(run: datetime, zone: ZoneInfo) -> RunView:
    local = run.astimezone(zone)
    return RunView(
        utc=run,
        utc_label=f"{run.astimezone(UTC):%a %Y-%m-%d %H:%M} UTC",
        local_label=f"{local:%a %Y-%m-%d %H:%M} {local.tzname()}",
    )


def schedule_context(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    jobs = list(ScheduledJob.objects.select_related("target_model", "warm_up_host"))
    lock = locks.current_lock()
    held_until = lock.expires_at if lock.held else None
    warnings = [
        WarningView(kind=w.kind, job_ids=list(w.job_ids), message=w.message)
        for w in schedule_warnings(jobs, held_until, COLLISION_WINDOW, WARNING_HORIZON, now=now)
    ]
    warned = {job_id for warning in warnings for job_id in warning["job_ids"]}
    views: list[JobView] = []
    for job in jobs:
        runs: list[RunView] = []
        error = ""
        try:
            zone = ZoneInfo(job.timezone)
            runs = [_run_view(run, zone) for run in next_runs(job, NEXT_RUNS, after=now)]
        except (InvalidInput, LookupError, ValueError) as exc:
            # A stored row that no longer validates (a zone dropped from tzdata): say so.
            error = getattr(exc, "message", str(exc))
        views.append(
            JobView(
                job_id=job.job_id,
                name=job.name,
                owner=job.owner,
                cron=job.cron,
                timezone=job.timezone,
                target_model=job.target_model.key,
                description=job.description,
                next_runs=runs,
                error=error,
                warned=job.job_id in warned,
                warm_up=_warm_up_label(job),
            )
        )
    first = min((view["next_runs"][0]["utc"] for view in views if view["next_runs"]), default=None)
    next_run = {"at": first, "seconds_left": (first - now).total_seconds()} if first else None
    return {
        "jobs": views,
        "schedule_warnings": warnings,
        "next_run": next_run,
        "warm_ups": _warm_up_views(now),
    }


def schedule_panel(*, oob: bool = False) -> str:
    """`#schedule-panel`."""
    context = {**schedule_context(), "oob": oob}
    return render_to_string("dashboard/partials/schedule_panel.html", context)

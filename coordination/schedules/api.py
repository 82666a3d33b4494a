"""Coordination API: the schedule registry. Arbiter stores and shows these jobs; it never
runs them (no task, no lock, no swap is ever started from here)."""

from datetime import datetime
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Status

from arbiter import audit, events
from arbiter.errors import NotFound
from coordination.models import ScheduledJob
from coordination.schedules import next_runs, register_job
from coordination.schedules.schemas import ScheduledJobIn, ScheduledJobOut, TimelineOut
from coordination.schedules.timeline import timeline

router = Router(tags=["coordination"])


def _announce() -> None:
    events.send_on_commit(events.schedules_changed)


def get_job(job_id: str) -> ScheduledJob:
    job = (
        ScheduledJob.objects.select_related("target_model", "warm_up_host")
        .filter(job_id=job_id)
        .first()
    )
    if job is None:
        raise NotFound(f"no scheduled job with id {job_id!r}", field="id")
    return job


def _audited(job: ScheduledJob) -> dict[str, Any]:
    """A job's fields for the audit trail."""
    return {
        "name": job.name,
        "owner": job.owner,
        "cron": job.cron,
        "timezone": job.timezone,
        "target_model": job.target_model.key,
        "warm_up": warm_up_out(job),
    }


def warm_up_out(job: ScheduledJob) -> dict[str, Any] | None:
    if job.warm_up_host is None:
        return None
    return {
        "host": job.warm_up_host.name,
        "lead_seconds": job.warm_up_lead_seconds,
        "hold_seconds": job.warm_up_hold_seconds,
    }


def job_out(job: ScheduledJob, now: datetime) -> dict[str, Any]:
    return {
        "id": job.job_id,
        "name": job.name,
        "owner": job.owner,
        "cron": job.cron,
        "timezone": job.timezone,
        "target_model": job.target_model.key,
        "description": job.description,
        "warm_up": warm_up_out(job),
        "next_runs": next_runs(job, after=now),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


@router.get("/schedule", response=list[ScheduledJobOut], summary="List scheduled jobs")
def list_jobs(request: HttpRequest):
    now = timezone.now()
    jobs = ScheduledJob.objects.select_related("target_model", "warm_up_host")
    return [job_out(job, now) for job in jobs]


@router.get("/schedule/{job_id}", response=ScheduledJobOut, summary="One scheduled job")
def get_scheduled_job(request: HttpRequest, job_id: str):
    return job_out(get_job(job_id), timezone.now())


@router.post(
    "/schedule",
    response={200: ScheduledJobOut, 201: ScheduledJobOut},
    summary="Register a scheduled job (201), or update the one with this id in place (200)",
)
def register_scheduled_job(request: HttpRequest, payload: ScheduledJobIn):
    with transaction.atomic():  # the job and its audit row commit together
        jobs = ScheduledJob.objects.select_related("target_model", "warm_up_host")
        before = jobs.filter(job_id=payload.id).first()
        job, created = register_job(payload.model_dump())
        audit.record(
            request,
            "schedule.register",
            "schedule",
            job.job_id,
            before=_audited(before) if before is not None else None,
            after=_audited(job),
        )
    _announce()
    return Status(201 if created else 200, job_out(get_job(job.job_id), timezone.now()))


@router.delete("/schedule/{job_id}", response={204: None}, summary="Remove a scheduled job")
def delete_scheduled_job(request: HttpRequest, job_id: str):
    with transaction.atomic():
        job = ScheduledJob.objects.select_related("target_model").filter(job_id=job_id).first()
        if job is None:
            raise NotFound(f"no scheduled job with id {job_id!r}", field="id")
        audit.record(request, "schedule.delete", "schedule", job_id, before=_audited(job))
        job.delete()
    _announce()
    return Status(204, None)


@router.get(
    "/timeline",
    response=TimelineOut,
    summary="The next hours per host: runs, warm-ups, leases, the lock and conflicts",
)
def get_timeline(request: HttpRequest, hours: int = 24):
    return timeline(hours)

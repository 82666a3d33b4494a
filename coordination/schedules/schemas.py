"""Schedule registry API schemas. Types are checked here; the rules live in
coordination.schedules (one place for the API and the dashboard)."""

from datetime import datetime

from ninja import Field, Schema
from pydantic import ConfigDict


class WarmUpIn(Schema):
    """Swap the job's model in on `host` ahead of each run and hold it for the run."""

    model_config = ConfigDict(extra="forbid", strict=True)

    host: str = Field(..., description="Inventory name of the host to warm the model on")
    lead_seconds: int = Field(
        ..., description="Ready this long before the run; 0 to the cron period"
    )
    hold_seconds: int = Field(
        ..., description="Keep the model leased this long after the run time (1-86400)"
    )


class WarmUpOut(Schema):
    host: str
    lead_seconds: int
    hold_seconds: int


class ScheduledJobIn(Schema):
    """A recurring job as its scheduler registers it; re-POSTing an id updates it."""

    # A misspelt field (`timzone`) is an error naming it, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(..., description="Stable id chosen by the scheduler, `[A-Za-z0-9._-]`")
    name: str
    owner: str = ""
    cron: str = Field(..., description="Five fields: minute hour day-of-month month day-of-week")
    timezone: str = Field("UTC", description="IANA name the cron is read in, e.g. Europe/Riga")
    target_model: str = Field(..., description="Catalog key of the model the job swaps in")
    description: str = ""
    warm_up: WarmUpIn | None = Field(
        None, description="Optional: warm the model up ahead of each run (never runs the job)"
    )


class ScheduledJobOut(Schema):
    id: str
    name: str
    owner: str
    cron: str
    timezone: str
    target_model: str
    description: str
    warm_up: WarmUpOut | None
    next_runs: list[datetime] = Field(..., description="The next five runs, in UTC")
    created_at: datetime
    updated_at: datetime


class TimelineRunOut(Schema):
    job_id: str
    model: str
    run_at: datetime
    window_start: datetime
    window_end: datetime


class TimelineWarmUpOut(Schema):
    job_id: str
    model: str
    run_at: datetime
    starts_at: datetime
    hold_until: datetime
    state: str = Field(..., description="planned, swapping, held, done or missed")
    reason: str


class TimelineLeaseOut(Schema):
    id: int
    model: str
    holder: str
    purpose: str
    system: bool
    starts_at: datetime
    expires_at: datetime


class TimelineConflictOut(Schema):
    kind: str = Field(..., description="jobs (different models at once) or lease")
    host: str
    start: datetime
    end: datetime
    job_ids: list[str]
    message: str


class TimelineHostOut(Schema):
    name: str
    runs: list[TimelineRunOut]
    warm_ups: list[TimelineWarmUpOut]
    leases: list[TimelineLeaseOut]
    conflicts: list[TimelineConflictOut]


class TimelineLockOut(Schema):
    held: bool
    holder: str
    purpose: str
    expires_at: datetime | None


class TimelineOut(Schema):
    start: datetime
    end: datetime
    hours: int
    hosts: list[TimelineHostOut]
    unplaced_runs: list[TimelineRunOut] = Field(..., description="Runs of jobs with no host")
    lock: TimelineLockOut
    conflicts: list[TimelineConflictOut]

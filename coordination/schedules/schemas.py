"""Schedule registry API schemas. Types are checked here; the rules live in
coordination.schedules (one place for the API and the dashboard)."""

from datetime import datetime

from ninja import Field, Schema
from pydantic import ConfigDict


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


class ScheduledJobOut(Schema):
    id: str
    name: str
    owner: str
    cron: str
    timezone: str
    target_model: str
    description: str
    next_runs: list[datetime] = Field(..., description="The next five runs, in UTC")
    created_at: datetime
    updated_at: datetime

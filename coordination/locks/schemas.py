"""Schemas of the swap-lock routes (`/api/swap/lock`). Never a token hash; the token
itself only in the grant."""

from datetime import datetime
from typing import Any

from ninja import Field, Schema
from pydantic import ConfigDict, field_validator

from coordination import locks


class LockIn(Schema):
    """Acquire (no token header) or extend (the holder's `X-Swap-Lock-Token`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    holder: str = Field(..., description="Who holds it, 1-200 characters (shown to others)")
    ttl_seconds: int = Field(..., description="Seconds from now until it expires")
    purpose: str = Field("", description="Why, up to 500 characters")

    @field_validator("holder", mode="before")
    @classmethod
    def holder_is_a_name(cls, value: Any) -> str:
        return locks.clean_holder(value)

    @field_validator("ttl_seconds", mode="before")
    @classmethod
    def ttl_is_in_range(cls, value: Any) -> int:
        # Read at request time: ARBITER_LOCK_MAX_TTL may differ per deployment (and test).
        return locks.clean_ttl(value)

    @field_validator("purpose", mode="before")
    @classmethod
    def purpose_is_short_text(cls, value: Any) -> str:
        return locks.clean_text(value, locks.PURPOSE_MAX)


class LockGrantOut(Schema):
    """201: a new grant. The token is shown here once and never again."""

    token: str
    holder: str
    purpose: str
    generation: int
    acquired_at: datetime
    expires_at: datetime


class LockExtendedOut(Schema):
    """200: the same grant with a new expiry."""

    holder: str
    generation: int
    expires_at: datetime


class LockStateOut(Schema):
    """The lock now; `held` false means anyone may acquire it (unless `blocked_until`)."""

    scope: str
    held: bool
    holder: str | None
    purpose: str | None
    generation: int
    acquired_at: datetime | None
    expires_at: datetime | None
    seconds_left: int
    blocked_until: datetime | None
    released_at: datetime | None
    released_by: str
    release_reason: str

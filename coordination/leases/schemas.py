"""Schemas of the lease routes (`/api/leases`). Never a token hash; the token itself
only in the grant."""

from datetime import datetime
from typing import Any

from ninja import Field, Schema
from pydantic import ConfigDict, field_validator

from coordination import locks
from coordination.locks.schemas import LockIn


class LeaseIn(LockIn):
    """Acquire a lease: the model (catalog key), optionally the host, and as for the lock:
    who, for how long, why (the same fields, checked the same way)."""

    model: str = Field(..., description="The catalog key of the model to lease")
    host: str | None = Field(
        None, description="The host; omitted: the one host serving the model now"
    )

    @field_validator("model", mode="before")
    @classmethod
    def model_is_a_key(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be a catalog key")
        return value.strip()

    @field_validator("host", mode="before")
    @classmethod
    def host_is_a_name(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("must be a host name")
        return value.strip() or None


class LeaseExtendIn(Schema):
    """Extend a lease (its token in `X-Arbiter-Lease-Token`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ttl_seconds: int = Field(..., description="Seconds from now until it expires")

    @field_validator("ttl_seconds", mode="before")
    @classmethod
    def ttl_is_in_range(cls, value: Any) -> int:
        return locks.clean_ttl(value)


class LeaseForceIn(Schema):
    """Force-release: why (recorded in the audit trail)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field("", description="Why, up to 500 characters")

    @field_validator("reason", mode="before")
    @classmethod
    def reason_is_short_text(cls, value: Any) -> str:
        return locks.clean_text(value, 500)


class LeaseGrantOut(Schema):
    """201: a new lease. The token is shown here once and never again."""

    id: int
    token: str
    model: str
    host: str
    holder: str
    purpose: str
    system: bool
    created_at: datetime
    expires_at: datetime


class LeaseOut(Schema):
    """A lease as anyone may see it: never the token."""

    id: int
    model: str
    host: str
    holder: str
    purpose: str
    system: bool
    created_at: datetime
    expires_at: datetime
    seconds_left: int
    held: bool
    released_at: datetime | None
    released_by: str
    release_reason: str

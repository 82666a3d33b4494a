"""The leases' values: the token header, the blocked party's 423, a lease as plain data.

Limits and cleaners are the lock's (coordination.locks.values): the same TTL range
(1..ARBITER_LOCK_MAX_TTL), holder and free-text rules, token hashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from arbiter.errors import Locked
from coordination.locks.values import iso, seconds_until
from coordination.models import Lease

TOKEN_HEADER = "X-Arbiter-Lease-Token"  # noqa: S105 - a header name, not a secret
FORCE_RELEASED_EVENT = "lease.force_released"


def blocked_by(lease: Lease) -> dict[str, object]:
    """What a blocked party is told about the lease in its way: never the token."""
    return {
        "lease_id": lease.pk,
        "holder": lease.holder,
        "purpose": lease.purpose,
        "expires_at": iso(lease.expires_at),
        "model": lease.model_key,
        "host": lease.host.name,
        "system": lease.system,
    }


def leased_error(lease: Lease, now: datetime, action: str = "") -> Locked:
    """The 423 for a held lease: who holds it, why, until when, and Retry-After."""
    what = f"; {action}" if action else ""
    return Locked(
        f"model {lease.model_key!r} on host {lease.host.name} is leased by {lease.holder!r} "
        f"until {iso(lease.expires_at)}{what}",
        holder=lease.holder,
        expires_at=iso(lease.expires_at),
        retry_after=seconds_until(lease.expires_at, now),
        blocked_by=blocked_by(lease),
    )


@dataclass(frozen=True)
class LeaseGrant:
    """A fresh lease. `token` exists only here: shown once, stored hashed."""

    id: int
    token: str
    model: str
    host: str
    holder: str
    purpose: str
    system: bool
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class LeaseState:
    """A lease as readers see it (GET /api/leases, /api/status, the dashboard)."""

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


def lease_state(lease: Lease, now: datetime) -> LeaseState:
    held = lease.is_held(now)
    return LeaseState(
        id=lease.pk,
        model=lease.model_key,
        host=lease.host.name,
        holder=lease.holder,
        purpose=lease.purpose,
        system=lease.system,
        created_at=lease.created_at,
        expires_at=lease.expires_at,
        seconds_left=seconds_until(lease.expires_at, now) if held else 0,
        held=held,
        released_at=lease.released_at,
        released_by=lease.released_by,
        release_reason=lease.release_reason,
    )

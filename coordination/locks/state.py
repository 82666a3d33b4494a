"""The lock as the API answers it: its state, a fresh grant, the 423 for a held lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

from arbiter.errors import Locked
from coordination.locks.values import iso, seconds_until
from coordination.models import SwapLock


@dataclass(frozen=True)
class LockState:
    """The lock as a reader sees it now (dashboard, /api/status, GET /api/swap/lock)."""

    scope: str
    held: bool
    holder: str | None
    purpose: str | None
    generation: int
    acquired_at: datetime | None
    expires_at: datetime | None
    seconds_left: int
    # Set while a force release's lock-delay keeps everybody out.
    blocked_until: datetime | None
    # The last release (by its holder or forced), until the next grant.
    released_at: datetime | None
    released_by: str
    release_reason: str


@dataclass(frozen=True)
class LockGrant:
    """A fresh grant. `token` exists only here: it is shown once and stored hashed."""

    token: str
    scope: str
    holder: str
    purpose: str
    generation: int
    acquired_at: datetime
    expires_at: datetime


class ForceReleasedPayload(TypedDict):
    """The `lock.force_released` webhook event."""

    scope: str
    old_holder: str
    old_generation: int
    new_generation: int
    actor: str
    reason: str
    at: str


def lock_state(row: SwapLock | None, scope: str, now: datetime) -> LockState:
    if row is None:
        return LockState(scope, False, None, None, 0, None, None, 0, None, None, "", "")
    held = row.is_held(now)
    blocked = row.blocked_until if row.blocked_until and row.blocked_until > now else None
    return LockState(
        scope=row.scope,
        held=held,
        holder=row.holder if held else None,
        purpose=row.purpose if held else None,
        generation=row.generation,
        acquired_at=row.acquired_at if held else None,
        expires_at=row.expires_at if held else None,
        seconds_left=seconds_until(row.expires_at, now) if held and row.expires_at else 0,
        blocked_until=blocked,
        released_at=row.released_at,
        released_by=row.released_by,
        release_reason=row.release_reason,
    )


def locked_error(row: SwapLock, now: datetime) -> Locked:
    """The 423 for a held (or lock-delayed) row: holder and expiry, never the token."""
    if row.is_held(now):
        assert row.expires_at is not None
        return Locked(
            f"the swap lock is held by {row.holder!r} until {iso(row.expires_at)}",
            holder=row.holder,
            expires_at=iso(row.expires_at),
            retry_after=seconds_until(row.expires_at, now),
        )
    assert row.blocked_until is not None
    return Locked(
        f"the swap lock was force-released and cannot be acquired before {iso(row.blocked_until)}",
        holder=None,
        expires_at=iso(row.blocked_until),
        retry_after=seconds_until(row.blocked_until, now),
        blocked_until=iso(row.blocked_until),
    )

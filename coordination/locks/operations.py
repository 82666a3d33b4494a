"""The lock's operations: each change of hands one conditional UPDATE (see the package)."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from arbiter import events
from arbiter.errors import (
    Conflict,
    Forbidden,
    PreconditionFailed,
    PreconditionRequired,
)
from arbiter.roles import ADMIN, may
from coordination import webhooks
from coordination.locks.gate import row_for_update
from coordination.locks.state import (
    ForceReleasedPayload,
    LockGrant,
    LockState,
    lock_state,
    locked_error,
)
from coordination.locks.values import (
    FORCE_RELEASED_EVENT,
    GLOBAL,
    PURPOSE_MAX,
    REASON_MAX,
    TOKEN_HEADER,
    checked,
    clean_holder,
    clean_lock_delay,
    clean_text,
    clean_ttl,
    hash_token,
    iso,
)
from coordination.models import LockAudit, SwapLock

logger = logging.getLogger(__name__)


def _ensure_row(scope: str) -> None:
    # Outside the lock's transaction: the row is created once per scope and never
    # deleted; get_or_create copes with two processes creating it at the same time.
    SwapLock.objects.get_or_create(scope=scope)


def _free(scope: str, now: datetime) -> QuerySet[SwapLock]:
    """The scope's row if nobody holds it and no lock-delay is running."""
    return (
        SwapLock.objects.filter(scope=scope)
        .filter(Q(token_hash="") | Q(expires_at__isnull=True) | Q(expires_at__lte=now))
        .filter(Q(blocked_until__isnull=True) | Q(blocked_until__lte=now))
    )


def _held_with(scope: str, token_hash: str, now: datetime) -> QuerySet[SwapLock]:
    """The scope's row if this token's grant is the current, unexpired one."""
    return SwapLock.objects.filter(scope=scope, token_hash=token_hash, expires_at__gt=now)


def _announce(*, forced: bool = False) -> None:
    """Once the current transaction commits, tell whoever listens (the dashboards)."""
    events.send_on_commit(events.lock_changed, forced=forced)


# --- Operations -----------------------------------------------------------------------


def acquire(holder: str, ttl_seconds: int, purpose: str = "", *, scope: str = GLOBAL) -> LockGrant:
    """Grant the lock if it is free or expired (and no lock-delay runs): one UPDATE.

    Raises Locked (423) when someone holds it or a lock-delay runs.
    """
    holder = checked("holder", clean_holder, holder)
    ttl_seconds = checked("ttl_seconds", clean_ttl, ttl_seconds)
    purpose = checked("purpose", clean_text, purpose, PURPOSE_MAX)
    token = secrets.token_urlsafe(32)
    _ensure_row(scope)
    with transaction.atomic():
        now = timezone.now()
        expires_at = now + timedelta(seconds=ttl_seconds)
        grant = {
            "holder": holder,
            "purpose": purpose,
            "token_hash": hash_token(token),
            "generation": F("generation") + 1,
            "acquired_at": now,
            "expires_at": expires_at,
            "blocked_until": None,
            "released_at": None,
            "released_by": "",
            "release_reason": "",
        }
        if not _free(scope, now).update(**grant):
            row = row_for_update(scope)
            assert row is not None
            if row.is_held(now) or (row.blocked_until and row.blocked_until > now):
                raise locked_error(row, now)
            # PostgreSQL only: the holder released between our UPDATE and the read. We
            # hold the row lock now, so this second UPDATE cannot lose.
            if not _free(scope, now).update(**grant):
                raise Conflict("the swap lock changed while acquiring it; try again")
        generation = SwapLock.objects.filter(scope=scope).values_list("generation", flat=True)[0]
        _announce()
    logger.info("swap lock %s granted to %r (generation %d)", scope, holder, generation)
    return LockGrant(token, scope, holder, purpose, generation, now, expires_at)


def extend(token: str, ttl_seconds: int, *, scope: str = GLOBAL) -> LockState:
    """Move the expiry of the current grant to now + ttl; same generation. One UPDATE.

    Raises Locked (423) when another grant holds the lock, PreconditionFailed (412) when
    the lock is free or expired: an expired grant is never brought back.
    """
    ttl_seconds = checked("ttl_seconds", clean_ttl, ttl_seconds)
    with transaction.atomic():
        now = timezone.now()
        expires_at = now + timedelta(seconds=ttl_seconds)
        if _held_with(scope, hash_token(token or ""), now).update(expires_at=expires_at):
            _announce()
            return lock_state(SwapLock.objects.get(scope=scope), scope, now)
        row = row_for_update(scope)
        if row is not None and row.is_held(now):
            raise locked_error(row, now)
    raise PreconditionFailed(
        "this token does not hold the swap lock (it expired, was released or "
        "force-released, or was never issued); acquire the lock again without it",
        field=TOKEN_HEADER,
    )


def release(token: str | None, *, scope: str = GLOBAL, reason: str = "") -> None:
    """Release the current grant by its token: one UPDATE; a release record is kept.

    Raises PreconditionRequired (428) without a token, Conflict (409) when the token is
    not the current grant's (wrong, stale or expired) - and then nothing is changed.
    """
    reason = checked("reason", clean_text, reason, REASON_MAX)
    if not token:
        raise PreconditionRequired(
            f"send the lock token in the {TOKEN_HEADER} header (or force=true as staff)",
            field=TOKEN_HEADER,
        )
    now = timezone.now()
    released = _held_with(scope, hash_token(token), now).update(
        # SQL reads the old row on the right-hand side: released_by gets the old holder.
        released_by=F("holder"),
        released_at=now,
        release_reason=reason or "released by the holder",
        holder="",
        purpose="",
        token_hash="",
        acquired_at=None,
        expires_at=None,
    )
    if not released:
        raise Conflict(
            "this token does not hold the swap lock (wrong, stale or expired); "
            "the lock was left as it is",
            field=TOKEN_HEADER,
        )
    _announce()
    logger.info("swap lock %s released by its holder", scope)


def force_release(
    actor: Any, *, reason: str = "", lock_delay_seconds: int = 0, scope: str = GLOBAL
) -> LockAudit:
    """An admin person takes the lock from its holder: generation bumped, audited, event.

    The audit row, the `lock.force_released` event (webhook outbox) and the lock change
    commit together or not at all. With a lock-delay nobody may acquire until it passes.
    Raises Forbidden (403) for an actor who is not a person with the admin role
    (arbiter.roles), Conflict (409) when the lock is not held.
    """
    if not hasattr(actor, "get_username") or not may(actor, ADMIN):
        raise Forbidden("force release needs a logged-in person with the admin role")
    reason = checked("reason", clean_text, reason, REASON_MAX)
    lock_delay_seconds = checked("lock_delay_seconds", clean_lock_delay, lock_delay_seconds)
    actor_name = actor.get_username()
    with transaction.atomic():
        now = timezone.now()
        row = row_for_update(scope)
        if row is None or not row.is_held(now):
            raise Conflict("the swap lock is not held: there is nothing to force-release")
        old_generation = row.generation
        blocked_until = now + timedelta(seconds=lock_delay_seconds) if lock_delay_seconds else None
        changed = SwapLock.objects.filter(
            scope=scope, generation=old_generation, token_hash=row.token_hash
        ).update(
            holder="",
            purpose="",
            token_hash="",
            acquired_at=None,
            expires_at=None,
            generation=F("generation") + 1,
            blocked_until=blocked_until,
            released_at=now,
            released_by=actor_name,
            release_reason=reason or "force-released",
        )
        if not changed:  # pragma: no cover - the row is locked by us
            raise Conflict("the swap lock changed while force-releasing it; try again")
        audit = LockAudit.objects.create(
            scope=scope,
            actor=actor,
            actor_name=actor_name,
            at=now,
            reason=reason,
            old_holder=row.holder,
            old_purpose=row.purpose,
            old_generation=old_generation,
            new_generation=old_generation + 1,
            lock_delay_seconds=lock_delay_seconds,
        )
        payload: ForceReleasedPayload = {
            "scope": scope,
            "old_holder": row.holder,
            "old_generation": old_generation,
            "new_generation": old_generation + 1,
            "actor": actor_name,
            "reason": reason,
            "at": iso(now) or "",
        }
        webhooks.emit_event(FORCE_RELEASED_EVENT, dict(payload))
        _announce(forced=True)
    logger.warning(
        "swap lock %s force-released by %s from %r (generation %d -> %d)",
        scope,
        actor_name,
        row.holder,
        old_generation,
        old_generation + 1,
    )
    return audit

"""The swap lock over HTTP (the spec's status table is the contract).

    GET    /api/swap/lock                      the lock now (never the token or its hash)
    POST   /api/swap/lock {holder, ttl_seconds, purpose}
               no token header       -> 201 grant (token shown once) | 423 held
               X-Swap-Lock-Token     -> 200 extended | 423 held by another | 412 not held
    DELETE /api/swap/lock  + token   -> 204 | 409 wrong/stale token (lock untouched)
                                         | 428 no token
    DELETE /api/swap/lock?force=true[&reason=..][&lock_delay_seconds=N]
               staff session only    -> 204 audited | 403 | 409 not held

Lock calls are authenticated like every API call; the token is not a credential.
"""

from django.db import transaction
from django.http import HttpRequest
from ninja import Query, Router, Status

from arbiter import audit, route_policy
from arbiter.errors import Forbidden, InvalidInput
from arbiter.models import ApiKey
from arbiter.roles import ADMIN, may
from coordination import locks
from coordination.locks.schemas import LockExtendedOut, LockGrantOut, LockIn, LockStateOut

router = Router(tags=["coordination"])


def _token(request: HttpRequest) -> str | None:
    """The `X-Swap-Lock-Token` header; an empty one counts as absent."""
    return request.headers.get(locks.TOKEN_HEADER, "").strip() or None


@router.get("/swap/lock", response=LockStateOut, summary="The swap lock now")
def get_lock(request: HttpRequest):
    return locks.current_lock()


@router.post(
    "/swap/lock",
    response={201: LockGrantOut, 200: LockExtendedOut},
    summary="Acquire the swap lock, or extend it with X-Swap-Lock-Token",
)
def acquire_or_extend_lock(request: HttpRequest, payload: LockIn):
    token = _token(request)
    # The lock change and its audit row commit together (never the token in the row).
    with transaction.atomic():
        if token is None:
            grant = locks.acquire(payload.holder, payload.ttl_seconds, payload.purpose)
            audit.record(
                request,
                "lock.acquire",
                "lock",
                grant.scope,
                after={
                    "holder": grant.holder,
                    "purpose": grant.purpose,
                    "generation": grant.generation,
                    "expires_at": grant.expires_at,
                },
            )
            return Status(201, grant)
        before = locks.current_lock()
        state = locks.extend(token, payload.ttl_seconds)
        audit.record(
            request,
            "lock.extend",
            "lock",
            state.scope,
            before={"expires_at": before.expires_at},
            after={"holder": state.holder, "expires_at": state.expires_at},
        )
    return Status(200, state)


@router.delete(
    "/swap/lock",
    response={204: None},
    summary="Release the swap lock with its token, or force-release it (admin person)",
)
def release_lock(
    request: HttpRequest,
    force: bool = Query(False, description="Admin people only: take the lock from its holder"),
    reason: str = Query("", description="Recorded with the release (up to 500 characters)"),
    lock_delay_seconds: int = Query(
        0, description="With force: nobody may acquire for this many seconds"
    ),
):
    if not force:
        if lock_delay_seconds:
            raise InvalidInput(
                "lock_delay_seconds: only with force=true",
                field="lock_delay_seconds",
                errors=[{"field": "lock_delay_seconds", "message": "only with force=true"}],
            )
        with transaction.atomic():
            before = locks.current_lock()
            locks.release(_token(request), reason=reason)
            audit.record(
                request,
                "lock.release",
                "lock",
                before.scope,
                before={"holder": before.holder, "generation": before.generation},
                after={"holder": None, "reason": reason},
            )
        return Status(204, None)
    force_release(request, reason=reason, lock_delay_seconds=lock_delay_seconds)
    return Status(204, None)


def force_release(request: HttpRequest, *, reason: str, lock_delay_seconds: int) -> None:
    """An admin person takes the lock from its holder, audited (the lock's own LockAudit
    and the trail's row). The one way in for the API route and the banner's form
    (dashboard/actions.py). Forbidden for a key or a lower role, Conflict when not held,
    InvalidInput naming `reason` or `lock_delay_seconds`."""
    principal = audit.principal_of(request)
    # Taking a lock from someone is a person's act: an admin's session, never an API key.
    if isinstance(principal, ApiKey) or not may(principal, ADMIN):
        raise Forbidden(
            "force release needs a logged-in person with the admin role; "
            + route_policy.describe(principal),
            needed=route_policy.PERSON_ADMIN,
        )
    with transaction.atomic():
        # LockAudit stays the banner's own record; the trail gets its row too.
        record = locks.force_release(
            principal, reason=reason, lock_delay_seconds=lock_delay_seconds
        )
        audit.record(
            request,
            "lock.force_release",
            "lock",
            record.scope,
            before={"holder": record.old_holder, "generation": record.old_generation},
            after={
                "holder": None,
                "generation": record.new_generation,
                "reason": reason,
                "lock_delay_seconds": lock_delay_seconds,
            },
        )

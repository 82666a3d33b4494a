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

from django.http import HttpRequest
from ninja import Query, Router, Status

from arbiter.errors import Forbidden, InvalidInput
from arbiter.models import ApiKey
from coordination import locks
from coordination.lock_schemas import LockExtendedOut, LockGrantOut, LockIn, LockStateOut

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
    if token is None:
        grant = locks.acquire(payload.holder, payload.ttl_seconds, payload.purpose)
        return Status(201, grant)
    return Status(200, locks.extend(token, payload.ttl_seconds))


@router.delete(
    "/swap/lock",
    response={204: None},
    summary="Release the swap lock with its token, or force-release it (staff)",
)
def release_lock(
    request: HttpRequest,
    force: bool = Query(False, description="Staff only: take the lock from its holder"),
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
        locks.release(_token(request), reason=reason)
        return Status(204, None)
    # Taking a lock from someone is a person's act: a staff session, never an API key.
    if isinstance(request.auth, ApiKey) or not getattr(request.auth, "is_staff", False):
        raise Forbidden("force release needs a logged-in staff user (an API key is not one)")
    locks.force_release(request.auth, reason=reason, lock_delay_seconds=lock_delay_seconds)
    return Status(204, None)

"""Leases over HTTP.

    GET    /api/leases                        the held leases (never a token)
    POST   /api/leases {model, host?, holder, ttl_seconds, purpose}
                                              -> 201 grant (token shown once)
                                               | 404 model/host | 409 host | 422
    PATCH  /api/leases/{id} {ttl_seconds}  + X-Arbiter-Lease-Token
                                              -> 200 extended | 409 wrong token
                                               | 412 ended | 428 no token
    DELETE /api/leases/{id}                + X-Arbiter-Lease-Token
                                              -> 204 | 409 wrong token or ended | 428
    POST   /api/leases/{id}/force-release {reason}
                                              admin person only -> 200 audited | 409

Each change and its audit row commit together (never the token in the row).
"""

from django.db import transaction
from django.http import HttpRequest
from ninja import Router, Status

from arbiter import audit, route_policy
from arbiter.errors import Forbidden
from arbiter.models import ApiKey
from arbiter.roles import ADMIN, may
from coordination import leases
from coordination.leases.schemas import (
    LeaseExtendIn,
    LeaseForceIn,
    LeaseGrantOut,
    LeaseIn,
    LeaseOut,
)

router = Router(tags=["coordination"])


def _token(request: HttpRequest) -> str | None:
    """The `X-Arbiter-Lease-Token` header; an empty one counts as absent."""
    return request.headers.get(leases.TOKEN_HEADER, "").strip() or None


@router.get("/leases", response=list[LeaseOut], summary="The held leases")
def list_leases(request: HttpRequest):
    return leases.held_leases()


@router.post("/leases", response={201: LeaseGrantOut}, summary="Lease a model on a host")
def acquire_lease(request: HttpRequest, payload: LeaseIn):
    with transaction.atomic():
        grant = leases.acquire(
            payload.model, payload.host, payload.holder, payload.ttl_seconds, payload.purpose
        )
        audit.record(
            request,
            "lease.acquire",
            "lease",
            grant.id,
            after={
                "model": grant.model,
                "host": grant.host,
                "holder": grant.holder,
                "purpose": grant.purpose,
                "expires_at": grant.expires_at,
            },
        )
    return Status(201, grant)


@router.patch("/leases/{lease_id}", response=LeaseOut, summary="Extend a lease with its token")
def extend_lease(request: HttpRequest, lease_id: int, payload: LeaseExtendIn):
    with transaction.atomic():
        state = leases.extend(lease_id, _token(request), payload.ttl_seconds)
        audit.record(
            request, "lease.extend", "lease", lease_id, after={"expires_at": state.expires_at}
        )
    return state


@router.delete("/leases/{lease_id}", response={204: None}, summary="Release a lease")
def release_lease(request: HttpRequest, lease_id: int):
    with transaction.atomic():
        ended = leases.release(lease_id, _token(request))
        audit.record(
            request,
            "lease.release",
            "lease",
            lease_id,
            before={"holder": ended.holder, "model": ended.model, "host": ended.host},
            after={"released": True},
        )
    return Status(204, None)


@router.post(
    "/leases/{lease_id}/force-release",
    response=LeaseOut,
    summary="Take a lease from its holder (admin person), audited",
)
def force_release_lease(request: HttpRequest, lease_id: int, payload: LeaseForceIn):
    return force_release(request, lease_id, reason=payload.reason)


def force_release(request: HttpRequest, lease_id: int, *, reason: str) -> leases.LeaseState:
    """An admin person ends someone's lease, audited. The one way in for the API route
    and the dashboard's lease panel (dashboard/actions.py). Forbidden for a key or a
    lower role, NotFound naming lease_id, Conflict when it is not held."""
    principal = audit.principal_of(request)
    if isinstance(principal, ApiKey) or not may(principal, ADMIN):
        raise Forbidden(
            "force release needs a logged-in person with the admin role; "
            + route_policy.describe(principal),
            needed=route_policy.PERSON_ADMIN,
        )
    with transaction.atomic():
        after = leases.force_release(lease_id, reason=reason, actor=principal)
        audit.record(
            request,
            "lease.force_release",
            "lease",
            lease_id,
            before={
                "holder": after.holder,
                "purpose": after.purpose,
                "model": after.model,
                "host": after.host,
                "expires_at": after.expires_at,
            },
            after={"released": True, "reason": reason},
        )
    return after

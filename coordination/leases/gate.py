"""The leases' gate: what a swap, an eviction, an idle or residency unload and a service
disable ask before they take a model off a host.

Reads only; no lease changes hands here (that is `operations`). The engine and the
broker call it beside the lock's gate (coordination.locks.gate): the lock and leases
compose, so even the lock's holder is refused when a lease holds the model it would
replace. Only the lease's holder, presenting its token, passes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime

from django.db.models import QuerySet
from django.utils import timezone

from coordination.leases.values import leased_error
from coordination.locks.values import hash_token
from coordination.models import Lease


def active_leases(now: datetime | None = None) -> QuerySet[Lease]:
    """Held, unexpired leases, soonest to expire first (host joined in)."""
    return Lease.objects.held(now).select_related("host").order_by("expires_at", "pk")


def _holds(lease: Lease, token: str | None) -> bool:
    return bool(token) and secrets.compare_digest(hash_token(token or ""), lease.token_hash)


def blocking_lease(
    model_key: str, host_name: str, token: str | None = None, *, now: datetime | None = None
) -> Lease | None:
    """A held lease on `model_key` on `host_name` whose token is not `token`, or None."""
    for lease in active_leases(now).filter(model_key=model_key, host__name=host_name):
        if not _holds(lease, token):
            return lease
    return None


def blocking_lease_among(
    model_keys: Iterable[str], host_name: str, token: str | None = None
) -> Lease | None:
    """The first lease blocking any of `model_keys` on the host (see `blocking_lease`)."""
    keys = sorted(set(model_keys) - {""})
    if not keys:
        return None
    leases = active_leases().filter(model_key__in=keys, host__name=host_name)
    for lease in leases:
        if not _holds(lease, token):
            return lease
    return None


def assert_not_leased(
    model_key: str, host_name: str, token: str | None = None, *, action: str = ""
) -> None:
    """Raise Locked (423, `blocked_by` and Retry-After) when someone else leases the
    model on the host; nothing when it is free or `token` is the lease's."""
    now = timezone.now()
    lease = blocking_lease(model_key, host_name, token, now=now)
    if lease is not None:
        raise leased_error(lease, now, action)


def assert_none_leased(
    model_keys: Iterable[str], host_name: str, token: str | None = None, *, action: str = ""
) -> None:
    """`assert_not_leased` for every model a host (or service) serves now."""
    lease = blocking_lease_among(model_keys, host_name, token)
    if lease is not None:
        raise leased_error(lease, timezone.now(), action)


def leased_on(host_name: str) -> list[Lease]:
    """The held leases on a host."""
    return list(active_leases().filter(host__name=host_name))

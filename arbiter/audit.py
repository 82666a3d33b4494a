"""The audit trail: one `AuditEvent` row per state change, with who, what and from where.

Callers write the row in the same transaction as the change it records, so a change
that rolls back leaves no row and a row never describes a change that did not happen.

    audit.record(request, "swap.cancel", "swap", swap.pk, before={...}, after={...})

`request` is the HTTP request that asked for the change (its principal and client
address are taken from it), or an `Actor` for changes without one (the engine acting
on someone's behalf, a management command).
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest
from django.utils import timezone

from arbiter.models import ApiKey, AuditEvent
from arbiter.roles import level_of


@dataclass(frozen=True)
class Actor:
    """Who made a change, as the audit row names them."""

    kind: str  # AuditEvent.PERSON / KEY / ENGINE
    name: str
    role: str = ""
    on_behalf_of: str = ""
    client_address: str | None = None


ENGINE = Actor(kind=AuditEvent.ENGINE, name="engine")


def principal_of(request: HttpRequest) -> Any:
    """The authenticated principal: the API's (`request.auth`, set by django-ninja) or
    the logged-in person of a Django view."""
    principal = getattr(request, "auth", None)
    if principal is not None:
        return principal
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None


def actor_for(principal: Any, client_address: str | None = None) -> Actor:
    """The actor for an ApiKey, a user, or "anonymous"."""
    if isinstance(principal, ApiKey):
        return Actor(AuditEvent.KEY, principal.name, principal.role, "", client_address)
    if principal is None or principal == "anonymous":
        return Actor(AuditEvent.PERSON, "anonymous", "", "", client_address)
    return Actor(
        AuditEvent.PERSON, principal.get_username(), level_of(principal) or "", "", client_address
    )


def actor_of(request: HttpRequest) -> Actor:
    return actor_for(principal_of(request), request.META.get("REMOTE_ADDR") or None)


def engine_for(actor: Actor) -> Actor:
    """The engine acting on `actor`'s behalf (a broker load for a key, say)."""
    return Actor(AuditEvent.ENGINE, "engine", "", actor.name, actor.client_address)


def _plain(value: Any) -> Any:
    # JSONField cannot store datetimes or Decimals: store what the API would show.
    return None if value is None else json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def record(
    who: HttpRequest | Actor,
    action: str,
    object_type: str,
    object_id: Any = "",
    *,
    before: Any = None,
    after: Any = None,
) -> AuditEvent:
    """Write one audit row. `before` / `after`: small dicts of plain values (datetimes
    are stored as ISO strings); never a secret, a key hash or a lock token."""
    actor = who if isinstance(who, Actor) else actor_of(who)
    return AuditEvent.objects.create(
        actor_kind=actor.kind,
        actor_name=actor.name[:150],
        actor_role=actor.role,
        on_behalf_of=actor.on_behalf_of[:150],
        action=action,
        object_type=object_type,
        object_id=str(object_id)[:200],
        before=_plain(before),
        after=_plain(after),
        client_address=actor.client_address,
    )


def command(name: str) -> Actor:
    """A management command run on the server (`manage.py create_api_key`): the engine,
    on behalf of whoever ran it there (the OS user when known)."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's anonymous uid)
        who = ""
    return Actor(AuditEvent.ENGINE, f"manage.py {name}"[:150], "", who)


def for_key(name: str, role: str, client_address: str | None) -> Actor:
    """The engine acting for an API key's request (the broker loading or evicting)."""
    return engine_for(Actor(AuditEvent.KEY, name, role, "", client_address or None))


def retention_days() -> int:
    return int(getattr(settings, "ARBITER_AUDIT_RETENTION_DAYS", 365))


def prune(now: datetime | None = None) -> int:
    """Delete rows older than ARBITER_AUDIT_RETENTION_DAYS (0 keeps every row); returns
    how many. Run by the engine's periodic housekeeping with the GPU sample history."""
    days = retention_days()
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = AuditEvent.objects.filter(at__lt=cutoff).delete()
    return deleted

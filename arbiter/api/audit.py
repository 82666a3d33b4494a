"""The audit trail over HTTP (admins): who changed what, newest first.

    GET /api/audit?actor=&action=&object_type=&object_id=&since=&until=&limit=&before_id=
        -> {"events": [...], "next_before_id": id | null}

Filters (all optional, combined with AND):

- `actor`: a user or key name; matches the actor and whom the engine acted for, so
  `actor=app1` also finds the broker's loads for key app1;
- `action`: exact (`swap.start`), or every action under a prefix ending in a dot
  (`swap.`);
- `object_type`, `object_id`: exact;
- `since`, `until`: ISO 8601 times (`2026-12-03T10:00:00Z`, or a date); a time without
  an offset is UTC. `since` is inclusive, `until` exclusive. A bad value is a 422
  naming the field.

Paging is a cursor: rows come newest first (by id, which is insertion order), `limit`
of them (default 50, at most 500); `next_before_id` is the `before_id` of the next
page, null on the last one. A cursor stays right while new rows arrive, unlike an
offset. The dashboard's /audit/ page uses the same filters (`filtered_events`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.dateparse import parse_date, parse_datetime
from ninja import Field, Query, Router, Schema

from arbiter.errors import InvalidInput
from arbiter.models import AuditEvent

router = Router(tags=["audit"])

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
FILTERS = ("actor", "action", "object_type", "object_id", "since", "until")


class AuditQuery(Schema):
    actor: str | None = Field(None, max_length=150, description="User or key name")
    action: str | None = Field(
        None, max_length=64, description="Exact action, or a prefix ending in '.' (swap.)"
    )
    object_type: str | None = Field(None, max_length=32)
    object_id: str | None = Field(None, max_length=200)
    since: str | None = Field(None, description="ISO 8601; inclusive")
    until: str | None = Field(None, description="ISO 8601; exclusive")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    before_id: int | None = Field(None, ge=1, description="Rows with a smaller id (paging)")


class AuditEventOut(Schema):
    id: int
    at: datetime
    actor_kind: str
    actor_name: str
    actor_role: str
    on_behalf_of: str
    action: str
    object_type: str
    object_id: str
    before: Any = None
    after: Any = None
    client_address: str | None


class AuditPageOut(Schema):
    events: list[AuditEventOut]
    next_before_id: int | None = Field(
        ..., description="Pass as before_id for the next (older) page; null on the last"
    )


def parse_time(field: str, value: str) -> datetime:
    """An ISO 8601 time or date (UTC when it has no offset), or InvalidInput naming `field`."""
    text = value.strip()
    try:
        moment = parse_datetime(text)
        if moment is None:
            day = parse_date(text)
            if day is not None:
                moment = datetime(day.year, day.month, day.day)
    except ValueError:  # well-formed but impossible, e.g. month 13
        moment = None
    if moment is None:
        raise InvalidInput(
            f"{field}: {value[:40]!r} is not an ISO 8601 time (e.g. 2026-12-03T10:00:00Z)",
            field=field,
        )
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def filtered_events(filters: dict[str, Any]) -> QuerySet[AuditEvent]:
    """The rows matching `filters` (FILTERS' names; empty values ignored), newest first."""
    rows = AuditEvent.objects.order_by("-pk")
    if actor := (filters.get("actor") or "").strip():
        rows = rows.filter(Q(actor_name=actor) | Q(on_behalf_of=actor))
    if action := (filters.get("action") or "").strip():
        rows = (
            rows.filter(action__startswith=action)
            if action.endswith(".")
            else rows.filter(action=action)
        )
    if object_type := (filters.get("object_type") or "").strip():
        rows = rows.filter(object_type=object_type)
    if object_id := (filters.get("object_id") or "").strip():
        rows = rows.filter(object_id=object_id)
    if since := (filters.get("since") or "").strip():
        rows = rows.filter(at__gte=parse_time("since", since))
    if until := (filters.get("until") or "").strip():
        rows = rows.filter(at__lt=parse_time("until", until))
    return rows


def page(rows: QuerySet[AuditEvent], limit: int, before_id: int | None) -> tuple[list, int | None]:
    """One page of `rows` (newest first) and the cursor of the next, or None."""
    if before_id is not None:
        rows = rows.filter(pk__lt=before_id)
    found = list(rows[: limit + 1])
    more = len(found) > limit
    found = found[:limit]
    return found, (found[-1].pk if more and found else None)


def event_out(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "at": event.at,
        "actor_kind": event.actor_kind,
        "actor_name": event.actor_name,
        "actor_role": event.actor_role,
        "on_behalf_of": event.on_behalf_of,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "before": event.before,
        "after": event.after,
        "client_address": event.client_address,
    }


@router.get(
    "/audit",
    response=AuditPageOut,
    url_name="audit_list",
    summary="The audit trail, newest first (filters, cursor paging)",
)
def list_audit(request: HttpRequest, query: Query[AuditQuery]):
    rows = filtered_events(query.model_dump())
    events, next_before_id = page(rows, query.limit, query.before_id)
    return {"events": [event_out(e) for e in events], "next_before_id": next_before_id}

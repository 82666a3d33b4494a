"""The outbox: events written in the caller's transaction, one delivery per endpoint."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from coordination.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

EVENT_TYPES = WebhookEndpoint.EVENT_TYPES


def new_event_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def _utf8_safe(value: Any) -> Any:
    """Lone surrogates (e.g. from undecodable log bytes) become U+FFFD: bodies are UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_utf8_safe(key): _utf8_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_utf8_safe(item) for item in value]
    return value


def emit_event(event_type: str, payload: dict[str, Any]) -> WebhookEvent:
    """Write an event to the outbox; it is delivered after the caller's transaction commits.

    MUST be called inside the transaction that writes the state the event reports (e.g.
    the swap's final state): a rollback then discards the event and nothing is sent.
    Delivery never runs in the caller: this costs a few inserts. Dry runs must not call
    it. `payload` must be JSON-serialisable (datetimes, UUIDs and Decimals are converted).
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError(
            "emit_event must run inside the transaction that writes the state it reports "
            "(wrap both in transaction.atomic())"
        )
    data = _utf8_safe(json.loads(json.dumps(payload, cls=DjangoJSONEncoder, allow_nan=False)))
    with transaction.atomic():
        event = WebhookEvent.objects.create(
            event_id=new_event_id(), event_type=event_type, payload=data
        )
        endpoints = [e for e in WebhookEndpoint.objects.filter(enabled=True) if e.wants(event_type)]
        # Read the payload back as the database normalised it (jsonb rewrites numbers
        # such as 1e+16): the returned event then serialises exactly as every attempt will.
        event.refresh_from_db(fields=["payload"])
        WebhookDelivery.objects.bulk_create(
            WebhookDelivery(event=event, endpoint=e, next_attempt_at=event.created_at)
            for e in endpoints
        )
    if endpoints:
        transaction.on_commit(wake_workers, robust=True)
    return event


# How to ask the workers for a delivery round: set by `coordination.tasks` (the huey
# tasks, which build on this package; the coordination app imports them when it is
# ready). The outbox only writes rows; running deliveries is the tasks' business.
_waker: Callable[[float], None] | None = None


def set_waker(waker: Callable[[float], None]) -> None:
    global _waker
    _waker = waker


def wake_workers(delay: float = 0) -> None:
    """Ask huey to look for due deliveries now (or after `delay` seconds). Before the
    app is ready nobody can deliver; the minutely drain catches up."""
    if _waker is not None:
        _waker(delay)


def prune_finished(now: datetime | None = None) -> int:
    """Delete finished deliveries (delivered or failed, with their attempts) older than
    ARBITER_WEBHOOK_DELIVERY_RETENTION_DAYS, then the events left without a delivery;
    pending ones are never touched. 0 keeps everything. Returns the deliveries deleted."""
    days = settings.ARBITER_WEBHOOK_DELIVERY_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    with transaction.atomic():
        old = WebhookDelivery.objects.filter(created_at__lt=cutoff).exclude(
            status=WebhookDelivery.PENDING
        )
        deleted = old.count()
        old.delete()
        WebhookEvent.objects.filter(created_at__lt=cutoff, deliveries__isnull=True).delete()
    return deleted

"""The webhook panel (`#webhook-panel`): endpoints and their recent deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

from django.db.models import Prefetch
from django.template.loader import render_to_string

from coordination.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint
from coordination.webhooks import TEST_EVENT_TYPE
from dashboard.panels.labels import utc_label

MAX_ENDPOINTS = 50
DELIVERIES_PER_ENDPOINT = 5


class AttemptView(TypedDict):
    at: datetime
    at_label: str
    status_code: int | None
    latency_ms: float | None
    error: str
    excerpt: str


class DeliveryView(TypedDict):
    """One event for one endpoint, with its attempt log."""

    id: int
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    created_at: datetime
    created_label: str
    next_attempt_label: str
    excerpt: str  # the last attempt's response excerpt, or its error
    attempt_log: list[AttemptView]
    can_redeliver: bool


class TestResultView(TypedDict):
    """What the endpoint's last test send got (admins' Send test; from its logged delivery)."""

    ok: bool
    text: str  # e.g. "✓ HTTP 200 in 14 ms · thanks" or "✗ no answer in 0 ms · not sent: …"


class EndpointView(TypedDict):
    id: int
    url: str
    description: str
    events: list[str]
    format: str
    enabled: bool
    disabled_reason: str
    deliveries: list[DeliveryView]
    delivery_count: int
    last_test: TestResultView | None


def _attempt_view(attempt: DeliveryAttempt) -> AttemptView:
    return AttemptView(
        at=attempt.at,
        at_label=utc_label(attempt.at),
        status_code=attempt.status_code,
        latency_ms=attempt.latency_ms,
        error=attempt.error,
        excerpt=attempt.response_excerpt,
    )


def _delivery_view(delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> DeliveryView:
    log_rows = [_attempt_view(a) for a in delivery.attempt_log.all()]
    last = log_rows[-1] if log_rows else None
    pending = delivery.status == WebhookDelivery.PENDING
    return DeliveryView(
        id=delivery.pk,
        event_id=delivery.event.event_id,
        event_type=delivery.event.event_type,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        created_at=delivery.created_at,
        created_label=utc_label(delivery.created_at),
        next_attempt_label=utc_label(delivery.next_attempt_at) if pending else "",
        excerpt=(last["excerpt"] or last["error"]) if last else "",
        attempt_log=log_rows,
        can_redeliver=endpoint.enabled,
    )


def _last_test(endpoint: WebhookEndpoint) -> TestResultView | None:
    """The last test send's answer, read from the attempt it logged (so every re-render,
    pushed or polled, shows it until the next test)."""
    attempt = (
        DeliveryAttempt.objects.filter(
            delivery__endpoint=endpoint, delivery__event__event_type=TEST_EVENT_TYPE
        )
        .order_by("-at", "-pk")
        .first()
    )
    if attempt is None:
        return None
    code = attempt.status_code
    ok = code is not None and 200 <= code < 300
    text = ("✓ " if ok else "✗ ") + (f"HTTP {code}" if code is not None else "no answer")
    text += f" in {round(attempt.latency_ms or 0.0)} ms"
    for part in (attempt.error, attempt.response_excerpt):
        if part:
            text += f" · {part}"
    return TestResultView(ok=ok, text=text)


def webhook_context() -> dict[str, Any]:
    endpoints = list(WebhookEndpoint.objects.all()[:MAX_ENDPOINTS])
    views = []
    pending = False
    for endpoint in endpoints:
        deliveries = (
            WebhookDelivery.objects.filter(endpoint=endpoint)
            .select_related("event")
            .prefetch_related(Prefetch("attempt_log", queryset=DeliveryAttempt.objects.all()))
            .order_by("-created_at", "-pk")[:DELIVERIES_PER_ENDPOINT]
        )
        shown = [_delivery_view(d, endpoint) for d in deliveries]
        pending = pending or any(d["status"] == WebhookDelivery.PENDING for d in shown)
        views.append(
            EndpointView(
                id=endpoint.pk,
                url=endpoint.url,
                description=endpoint.description,
                events=list(endpoint.events),
                format=endpoint.format,
                enabled=endpoint.enabled,
                disabled_reason=endpoint.disabled_reason,
                deliveries=shown,
                delivery_count=WebhookDelivery.objects.filter(endpoint=endpoint).count(),
                last_test=_last_test(endpoint),
            )
        )
    return {
        "endpoints": views,
        "endpoint_total": WebhookEndpoint.objects.count(),
        "event_types": WebhookEndpoint.EVENT_TYPES,  # the admins' edit forms
        "deliveries_pending": pending,
    }


def webhook_panel(*, oob: bool = False) -> str:
    """`#webhook-panel`."""
    context = {**webhook_context(), "oob": oob}
    return render_to_string("dashboard/partials/webhook_panel.html", context)

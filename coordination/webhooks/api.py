"""Coordination API: webhook endpoints, their deliveries, redelivery.

    GET    /api/webhooks                                 endpoints (never a secret)
    POST   /api/webhooks                                 {url, secret?, events?, description?}
                                                         -> 201 with the secret, shown once
    PATCH  /api/webhooks/{id}                            {url?, description?, events?, enabled?}
    DELETE /api/webhooks/{id}                            204 (its deliveries go with it)
    POST   /api/webhooks/{id}/test                       one signed `webhook.test` event, sent
                                                         now; 200 with what happened
    POST   /api/webhooks/{id}/rotate                     {secret?, previous_valid_hours?}
                                                         -> the new secret, shown once
    GET    /api/webhooks/{id}/deliveries                 newest first, with every attempt
    POST   /api/webhooks/deliveries/{id}/redeliver       202; same `webhook-id`

Changing endpoints needs an API key or a staff user (it decides where Arbiter sends
data); reading and redelivering need any identity, never anonymous access.
"""

from typing import Any

from django.db import transaction
from django.db.models import Prefetch
from django.http import HttpRequest
from ninja import Router, Status

from arbiter import audit, events
from arbiter.errors import ArbiterError, InvalidInput, NotFound
from arbiter.roles import ADMIN, may
from coordination import webhooks
from coordination.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint
from coordination.webhooks.schemas import (
    DeliveryOut,
    RedeliveryOut,
    RotateIn,
    WebhookCreatedOut,
    WebhookIn,
    WebhookOut,
    WebhookPatchIn,
    WebhookRotatedOut,
    WebhookTestOut,
)

router = Router(tags=["coordination"])


class Forbidden(ArbiterError):
    status = 403
    error_type = "forbidden"


def _require_identity(request: HttpRequest) -> None:
    if audit.principal_of(request) in (None, "anonymous"):
        raise Forbidden("webhooks are not readable anonymously: log in or use an API key")


def _require_manager(request: HttpRequest) -> None:
    # arbiter.route_policy already asks the admin role of every webhook write; this
    # keeps the view safe if it is ever mounted without that policy.
    if not may(audit.principal_of(request), ADMIN):
        raise Forbidden("changing webhooks needs the admin role")


def _endpoint(webhook_id: int, *, for_update: bool = False) -> WebhookEndpoint:
    rows = WebhookEndpoint.objects.select_for_update() if for_update else WebhookEndpoint.objects
    endpoint = rows.filter(pk=webhook_id).first()
    if endpoint is None:
        raise NotFound(f"no webhook with id {webhook_id}", field="webhook_id")
    return endpoint


def _endpoint_out(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.pk,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": endpoint.events,
        "format": endpoint.format,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "created_at": endpoint.created_at,
        "previous_secret_expires_at": endpoint.previous_secret_expires_at
        if endpoint.previous_secret_encrypted
        else None,
    }


def _delivery_out(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.pk,
        "event_id": delivery.event.event_id,
        "event_type": delivery.event.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at
        if delivery.status == WebhookDelivery.PENDING
        else None,
        "last_status_code": delivery.last_status_code,
        "created_at": delivery.created_at,
        "attempt_log": [
            {
                "at": a.at,
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
                "response_excerpt": a.response_excerpt,
            }
            for a in delivery.attempt_log.all()
        ],
    }


@router.get("/webhooks", response=list[WebhookOut], summary="List webhook endpoints")
def list_webhooks(request: HttpRequest):
    _require_identity(request)
    return [_endpoint_out(e) for e in WebhookEndpoint.objects.all()]


@router.post(
    "/webhooks", response={201: WebhookCreatedOut}, summary="Add an endpoint (secret shown once)"
)
def create_webhook(request: HttpRequest, payload: WebhookIn):
    endpoint, secret = add_endpoint(request, payload)
    return Status(201, {**_endpoint_out(endpoint), "secret": secret})


# The operations below are the one way in for the API routes and for the dashboard's
# webhook forms and buttons (dashboard/actions.py): same checks, same audit rows.


def add_endpoint(request: HttpRequest, payload: WebhookIn) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its audit row; returns it with its secret (shown once)."""
    _require_manager(request)
    with transaction.atomic():  # the endpoint and its audit row (never the secret) together
        endpoint, secret = webhooks.create_endpoint(
            payload.url,
            secret=payload.secret,
            events=payload.events,
            description=payload.description,
            format=payload.format,
        )
        audit.record(
            request,
            "webhook.create",
            "webhook",
            endpoint.pk,
            after={"url": endpoint.url, "events": endpoint.events, "format": endpoint.format},
        )
    return endpoint, secret


@router.patch(
    "/webhooks/{webhook_id}",
    response=WebhookOut,
    summary="Change an endpoint's url, description, events, format or enabled",
)
def update_webhook(request: HttpRequest, webhook_id: int, payload: WebhookPatchIn):
    return _endpoint_out(change_endpoint(request, webhook_id, payload))


def change_endpoint(
    request: HttpRequest, webhook_id: int, payload: WebhookPatchIn
) -> WebhookEndpoint:
    """Change the fields sent; audited (and pushed) only when something changed."""
    _require_manager(request)
    changes = payload.model_dump(exclude_unset=True)
    with transaction.atomic():
        endpoint = _endpoint(webhook_id, for_update=True)
        before, after = webhooks.update_endpoint(endpoint, changes)
        if after:
            audit.record(
                request, "webhook.update", "webhook", endpoint.pk, before=before, after=after
            )
            events.send_on_commit(events.webhooks_changed)
    return endpoint


@router.post(
    "/webhooks/{webhook_id}/test",
    response=WebhookTestOut,
    summary="Send one signed test event to this endpoint now and say what happened",
)
def test_webhook(request: HttpRequest, webhook_id: int):
    return send_test_event(request, webhook_id)


def send_test_event(request: HttpRequest, webhook_id: int) -> webhooks.SendTestResult:
    """One signed test event sent now (logged as a delivery), and its audit row."""
    _require_manager(request)
    # Outside any transaction: the HTTP request may take up to the delivery deadline.
    result = webhooks.send_test(_endpoint(webhook_id))
    outcome = {
        "ok": result.ok,
        "status_code": result.status_code,
        "error": result.error,
        "event_id": result.event_id,
    }
    with transaction.atomic():
        audit.record(request, "webhook.test", "webhook", webhook_id, after=outcome)
    return result


@router.delete("/webhooks/{webhook_id}", response={204: None}, summary="Remove an endpoint")
def delete_webhook(request: HttpRequest, webhook_id: int):
    remove_endpoint(request, webhook_id)
    return Status(204, None)


def remove_endpoint(request: HttpRequest, webhook_id: int) -> None:
    """Delete an endpoint (its deliveries go with it), audited."""
    _require_manager(request)
    with transaction.atomic():
        endpoint = _endpoint(webhook_id)
        audit.record(
            request,
            "webhook.delete",
            "webhook",
            webhook_id,
            before={"url": endpoint.url, "events": endpoint.events},
        )
        endpoint.delete()


@router.post(
    "/webhooks/{webhook_id}/rotate",
    response=WebhookRotatedOut,
    summary="Rotate the secret; the previous one keeps signing for a while",
)
def rotate_webhook_secret(request: HttpRequest, webhook_id: int, payload: RotateIn | None = None):
    _require_manager(request)
    payload = payload or RotateIn.model_validate({})
    with transaction.atomic():
        endpoint = _endpoint(webhook_id)
        secret = webhooks.rotate_secret(
            endpoint, new_secret=payload.secret, previous_valid_hours=payload.previous_valid_hours
        )
        # That it rotated and until when the old secret signs; never either secret.
        audit.record(
            request,
            "webhook.rotate",
            "webhook",
            endpoint.pk,
            after={"previous_secret_expires_at": endpoint.previous_secret_expires_at},
        )
    return {
        "id": endpoint.pk,
        "secret": secret,
        "previous_secret_expires_at": endpoint.previous_secret_expires_at,
    }


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response=list[DeliveryOut],
    summary="An endpoint's deliveries, newest first, with every attempt",
)
def list_deliveries(request: HttpRequest, webhook_id: int, limit: int = 50):
    _require_identity(request)
    if not 1 <= limit <= 500:
        raise InvalidInput("limit: must be between 1 and 500", field="limit")
    endpoint = _endpoint(webhook_id)
    deliveries = (
        WebhookDelivery.objects.filter(endpoint=endpoint)
        .select_related("event")
        .prefetch_related(Prefetch("attempt_log", queryset=DeliveryAttempt.objects.all()))
        .order_by("-created_at", "-pk")[:limit]
    )
    return [_delivery_out(d) for d in deliveries]


@router.post(
    "/webhooks/deliveries/{delivery_id}/redeliver",
    response={202: RedeliveryOut},
    summary="Send a delivery's event again, with the same webhook-id",
)
def redeliver(request: HttpRequest, delivery_id: int):
    delivery = redeliver_delivery(request, delivery_id)
    return Status(
        202,
        {
            "id": delivery.pk,
            "event_id": delivery.event.event_id,
            "status": delivery.status,
            "next_attempt_at": delivery.next_attempt_at,
        },
    )


def redeliver_delivery(request: HttpRequest, delivery_id: int) -> WebhookDelivery:
    """Send a delivery's event again (same webhook-id), audited."""
    _require_identity(request)
    with transaction.atomic():
        delivery = webhooks.redeliver(delivery_id)
        audit.record(
            request,
            "webhook.redeliver",
            "webhook_delivery",
            delivery.pk,
            after={"endpoint": delivery.endpoint_id, "event_id": delivery.event.event_id},
        )
    return delivery

"""Coordination API: webhook endpoints, their deliveries, redelivery.

    GET    /api/webhooks                                 endpoints (never a secret)
    POST   /api/webhooks                                 {url, secret?, events?, description?}
                                                         -> 201 with the secret, shown once
    DELETE /api/webhooks/{id}                            204 (its deliveries go with it)
    POST   /api/webhooks/{id}/rotate                     {secret?, previous_valid_hours?}
                                                         -> the new secret, shown once
    GET    /api/webhooks/{id}/deliveries                 newest first, with every attempt
    POST   /api/webhooks/deliveries/{id}/redeliver       202; same `webhook-id`

Changing endpoints needs an API key or a staff user (it decides where Arbiter sends
data); reading and redelivering need any identity, never anonymous access.
"""

from typing import Any

from django.db.models import Prefetch
from django.http import HttpRequest
from ninja import Router, Status

from arbiter.errors import ArbiterError, InvalidInput, NotFound
from arbiter.models import ApiKey
from coordination import tasks as _tasks  # noqa: F401 - see below
from coordination import webhooks
from coordination.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint
from coordination.webhook_schemas import (
    DeliveryOut,
    RedeliveryOut,
    RotateIn,
    WebhookCreatedOut,
    WebhookIn,
    WebhookOut,
    WebhookRotatedOut,
)

router = Router(tags=["coordination"])
# Importing `coordination.tasks` above registers the huey tasks whenever the API is
# loaded (system checks load it at start-up), so an embedded consumer knows the outbox
# drain before the first event; `run_huey` finds them by autodiscovery anyway.


class Forbidden(ArbiterError):
    status = 403
    error_type = "forbidden"


def _require_identity(request: HttpRequest) -> None:
    if request.auth == "anonymous":
        raise Forbidden("webhooks are not readable anonymously: log in or use an API key")


def _require_manager(request: HttpRequest) -> None:
    user = request.auth
    if not isinstance(user, ApiKey) and not getattr(user, "is_staff", False):
        raise Forbidden("changing webhooks needs an API key or a staff user")


def _endpoint(webhook_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(pk=webhook_id).first()
    if endpoint is None:
        raise NotFound(f"no webhook with id {webhook_id}", field="webhook_id")
    return endpoint


def _endpoint_out(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.pk,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": endpoint.events,
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
    _require_manager(request)
    endpoint, secret = webhooks.create_endpoint(
        payload.url, secret=payload.secret, events=payload.events, description=payload.description
    )
    return Status(201, {**_endpoint_out(endpoint), "secret": secret})


@router.delete("/webhooks/{webhook_id}", response={204: None}, summary="Remove an endpoint")
def delete_webhook(request: HttpRequest, webhook_id: int):
    _require_manager(request)
    _endpoint(webhook_id).delete()
    return Status(204, None)


@router.post(
    "/webhooks/{webhook_id}/rotate",
    response=WebhookRotatedOut,
    summary="Rotate the secret; the previous one keeps signing for a while",
)
def rotate_webhook_secret(request: HttpRequest, webhook_id: int, payload: RotateIn | None = None):
    _require_manager(request)
    payload = payload or RotateIn.model_validate({})
    endpoint = _endpoint(webhook_id)
    secret = webhooks.rotate_secret(
        endpoint, new_secret=payload.secret, previous_valid_hours=payload.previous_valid_hours
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
    _require_identity(request)
    delivery = webhooks.redeliver(delivery_id)
    return Status(
        202,
        {
            "id": delivery.pk,
            "event_id": delivery.event.event_id,
            "status": delivery.status,
            "next_attempt_at": delivery.next_attempt_at,
        },
    )

"""Alerts: service, host and restart-policy news become webhook events.

The engine sends `service_health_changed`, `host_online_changed` and `restart_gave_up`
(arbiter.events) inside the transaction that records the change; these receivers write
the events into the outbox in that same transaction, so an event exists exactly when
its change does.

What is worth a person's attention:
- `service_down`: a service probed up is now down. Not when Arbiter did it (a swap is
  working on its host, or the broker unloaded it to free memory), and not for a service
  never seen up (unknown → down: a host with nothing loaded yet, or every service while
  a fresh install starts; its tile says so). Health is kept across Arbiter restarts, so
  a restart does not re-announce anything; a service that went down while Arbiter was
  stopped is announced by the first probe after the restart (it was last seen up). A
  disabled service is not probed, so it never alerts; re-enabled, its first probe is
  compared with the health it had when it was disabled.
- `service_recovered`: a service is up again after a `service_down` was sent for it
  (the latest alert of the service in the outbox says which was last, so no new field
  is needed; events are pruned after ARBITER_WEBHOOK_DELIVERY_RETENTION_DAYS, and a
  service down for longer recovers silently); coming back from a swap or an unload is
  not news.
- `host_offline` / `host_online`: the host crossed ARBITER_OFFLINE_AFTER_MISSES missed
  samples, and its first good sample after that.
- `restart_gave_up`: the restart policy stopped trying (arbiter.engine.supervisor).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from arbiter.models import Host, Service, Swap, SwapHost
from coordination.models import WebhookEvent
from coordination.webhooks.outbox import emit_event

SERVICE_EVENTS = ("service_down", "service_recovered")


def service_payload(service: Service, detail: str) -> dict[str, Any]:
    return {
        "service": service.name,
        "host": service.host.name,
        "health": service.health,
        "since": service.health_since,
        "detail": detail,
        "base_url": service.base_url,
        "loaded_model": service.loaded_model,
    }


def _swapping(service: Service) -> bool:
    """A swap is working on the service's host (it stops and starts the service)."""
    return SwapHost.objects.filter(
        host_id=service.host_id, active=True, swap__state__in=Swap.ACTIVE_STATES
    ).exists()


def _last_alert(service_name: str) -> str | None:
    return (
        WebhookEvent.objects.filter(event_type__in=SERVICE_EVENTS, payload__service=service_name)
        .order_by("-created_at", "-pk")
        .values_list("event_type", flat=True)
        .first()
    )


def on_service_health_changed(
    sender: Any, *, service_id: int, previous: str, health: str, detail: str, **kwargs: Any
) -> None:
    service = Service.objects.select_related("host").get(pk=service_id)
    if previous == "up" and health == "down":
        if _swapping(service) or service.unloaded_at is not None:
            return
        emit_event("service_down", service_payload(service, detail))
    elif previous == "down" and health == "up":
        if _last_alert(service.name) == "service_down":
            emit_event("service_recovered", service_payload(service, ""))


def on_host_online_changed(sender: Any, *, host_id: int, online: bool, **kwargs: Any) -> None:
    # The row, written in this transaction, is read rather than the signal's `error`:
    # it also carries the miss count and the last good sample's time.
    host = Host.objects.get(pk=host_id)
    emit_event(
        "host_online" if online else "host_offline",
        {
            "host": host.name,
            "address": host.address,
            "state": host.state,
            "missed_samples": host.missed_samples,
            "offline_after_misses": settings.ARBITER_OFFLINE_AFTER_MISSES,
            "last_sample_at": host.last_sample_at,
            "last_error": host.last_error,  # why the samples failed ("" once back)
        },
    )


def on_restart_gave_up(
    sender: Any,
    *,
    service_id: int,
    swap_id: int | None,
    model_key: str,
    host_id: int,
    reason: str,
    **kwargs: Any,
) -> None:
    service = Service.objects.select_related("host").get(pk=service_id)
    emit_event(
        "restart_gave_up",
        {
            "service": service.name,
            "host": service.host.name,
            "model": model_key,
            "swap_id": swap_id,
            "reason": reason,
            "failed_at": service.failed_at,
        },
    )

"""Data that grows with time is pruned: swap logs of old swaps, finished webhook
deliveries (bounded data, issue 17). Pending work and recent history are kept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from arbiter.engine.swaps.store import prune_logs
from arbiter.models import Host, Swap, SwapLogLine
from coordination.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from coordination.webhooks import prune_finished

pytestmark = pytest.mark.django_db


def swap_with_lines(host: Host, finished_days_ago: float | None) -> Swap:
    finished = (
        None if finished_days_ago is None else timezone.now() - timedelta(days=finished_days_ago)
    )
    swap = Swap.objects.create(
        model_key="m",
        host=host,
        state=Swap.ACTIVE_STATES[1] if finished is None else Swap.COMPLETE,
        finished_at=finished,
    )
    SwapLogLine.objects.bulk_create(
        SwapLogLine(swap=swap, seq=seq, text=f"line {seq}") for seq in (1, 2, 3)
    )
    return swap


def test_it_drops_the_log_lines_of_old_swaps_and_keeps_their_row(settings):
    settings.ARBITER_SWAP_LOG_RETENTION_DAYS = 30
    host = Host.objects.create(name="h", address="127.0.0.1")
    old = swap_with_lines(host, finished_days_ago=31)
    recent = swap_with_lines(host, finished_days_ago=29)
    running = swap_with_lines(host, finished_days_ago=None)
    assert prune_logs() == 3
    assert not SwapLogLine.objects.filter(swap=old).exists()
    assert SwapLogLine.objects.filter(swap=recent).count() == 3
    assert SwapLogLine.objects.filter(swap=running).count() == 3
    assert Swap.objects.filter(pk=old.pk).exists()


def test_it_keeps_every_log_with_a_retention_of_zero(settings):
    settings.ARBITER_SWAP_LOG_RETENTION_DAYS = 0
    old = swap_with_lines(Host.objects.create(name="h", address="127.0.0.1"), 5000)
    assert prune_logs() == 0 and SwapLogLine.objects.filter(swap=old).count() == 3


def delivery(endpoint: WebhookEndpoint, status: str, days_ago: float) -> WebhookDelivery:
    at = timezone.now() - timedelta(days=days_ago)
    event = WebhookEvent.objects.create(
        event_id=f"msg_{status}_{days_ago}", event_type="swap_complete", payload={}
    )
    WebhookEvent.objects.filter(pk=event.pk).update(created_at=at)
    row = WebhookDelivery.objects.create(event=event, endpoint=endpoint, status=status)
    WebhookDelivery.objects.filter(pk=row.pk).update(created_at=at)
    DeliveryAttempt.objects.create(delivery=row, status_code=200)
    return row


def test_it_deletes_finished_deliveries_past_the_retention_with_their_attempts_and_events(settings):
    settings.ARBITER_WEBHOOK_DELIVERY_RETENTION_DAYS = 7
    endpoint = WebhookEndpoint.objects.create(url="https://example.org/hook", secret_encrypted="x")
    old_delivered = delivery(endpoint, WebhookDelivery.DELIVERED, 8)
    old_failed = delivery(endpoint, WebhookDelivery.FAILED, 8)
    old_pending = delivery(endpoint, WebhookDelivery.PENDING, 8)  # still being retried
    recent = delivery(endpoint, WebhookDelivery.DELIVERED, 6)
    assert prune_finished() == 2
    left = set(WebhookDelivery.objects.values_list("pk", flat=True))
    assert left == {old_pending.pk, recent.pk}
    assert not DeliveryAttempt.objects.filter(
        delivery_id__in=[old_delivered.pk, old_failed.pk]
    ).exists()
    assert not WebhookEvent.objects.filter(
        pk__in=[old_delivered.event_id, old_failed.event_id]
    ).exists()
    assert WebhookEvent.objects.filter(pk=old_pending.event_id).exists()


def test_it_keeps_every_delivery_with_a_retention_of_zero(settings):
    settings.ARBITER_WEBHOOK_DELIVERY_RETENTION_DAYS = 0
    endpoint = WebhookEndpoint.objects.create(url="https://example.org/hook", secret_encrypted="x")
    delivery(endpoint, WebhookDelivery.DELIVERED, 5000)
    assert prune_finished() == 0 and WebhookDelivery.objects.count() == 1

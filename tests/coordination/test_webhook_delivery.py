"""Delivery: retries, Retry-After, 410, redirects, claims, hanging receivers, the outbox.

Time is driven by passing `now` to `attempt_delivery` (the schedule) while the signed
`webhook-timestamp` stays the real clock, as receivers verify it.
"""

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from django.db import connections, transaction
from django.utils import timezone
from standardwebhooks import Webhook

from coordination import webhooks
from coordination.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from coordination.tasks import drain_webhook_outbox, senders
from tests.coordination.test_webhook_receiver import Receiver, Reply, make_endpoint

SWAP_PAYLOAD = {
    "swap_id": 42,
    "model": "qwen3-small",
    "host": "sim-a",
    "state": "complete",
    "error": "",
    "started_at": "2026-01-01T10:00:00Z",
    "finished_at": "2026-01-01T10:01:30Z",
    "lock_generation": 7,
}


@pytest.fixture
def huey_immediate():
    """huey runs tasks inline (STACK-NOTES: override_settings has no effect on djhuey)."""
    from huey.contrib.djhuey import HUEY

    HUEY.immediate = True
    try:
        yield HUEY
    finally:
        assert senders.wait_idle(15), "webhook sender threads still busy"
        HUEY.immediate = False


def emit(event_type="swap_complete", payload=None) -> WebhookEvent:
    with transaction.atomic():
        return webhooks.emit_event(event_type, payload or SWAP_PAYLOAD)


def outbox_row(endpoint: WebhookEndpoint, payload=None) -> WebhookDelivery:
    """An event and its delivery as committed by a transaction whose wake-up was lost."""
    event = WebhookEvent.objects.create(
        event_id=webhooks.new_event_id(), event_type="swap_complete", payload=payload or {}
    )
    return WebhookDelivery.objects.create(event=event, endpoint=endpoint)


def wait_until(predicate, timeout: float) -> float:
    """Seconds it took for `predicate()` to hold; fails after `timeout`."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.01)
    return time.monotonic() - started


def next_second() -> None:
    """Sleep into the next unix second, so the next attempt's timestamp differs."""
    time.sleep(1.02 - time.time() % 1)


@pytest.mark.django_db
def test_it_retries_503_three_times_then_delivers_with_the_same_id():
    busy = Reply(503, body=b"busy, try later")
    with Receiver(busy, busy, busy, 200) as receiver:
        _endpoint, secret = make_endpoint(receiver.url)
        event = emit()
        delivery = WebhookDelivery.objects.get(event=event)
        now = timezone.now()
        seen_delays = []
        for attempt in range(4):
            if attempt:
                delivery.refresh_from_db()
                due = delivery.next_attempt_at
                seen_delays.append(due - now)
                # Not due a moment before its time: nothing is sent.
                assert (
                    webhooks.attempt_delivery(delivery.pk, now=due - timedelta(seconds=1)) is None
                )
                assert len(receiver.requests) == attempt
                now = due
                next_second()
            result = webhooks.attempt_delivery(delivery.pk, now=now)
            assert result is not None

    assert result.status == WebhookDelivery.DELIVERED
    assert seen_delays == [timedelta(seconds=5), timedelta(minutes=5), timedelta(minutes=30)]
    requests = receiver.requests
    assert len(requests) == 4
    assert {r.headers["webhook-id"] for r in requests} == {event.event_id}
    timestamps = [int(r.headers["webhook-timestamp"]) for r in requests]
    assert timestamps == sorted(set(timestamps)), "a fresh timestamp for every attempt"
    assert {r.body for r in requests} == {webhooks.event_body(event)}
    for request in requests:
        assert Webhook(secret).verify(request.body, request.headers)["data"] == SWAP_PAYLOAD

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 4, 200)
    log = list(delivery.attempt_log.all())
    assert [a.status_code for a in log] == [503, 503, 503, 200]
    assert [a.response_excerpt for a in log] == ["busy, try later"] * 3 + ["ok"]
    assert all(a.latency_ms is not None and a.latency_ms >= 0 for a in log)
    assert log[-1].at == now


@pytest.mark.django_db
def test_it_follows_the_whole_schedule_then_gives_up():
    with Receiver(default=500) as receiver:
        make_endpoint(receiver.url)
        delivery = WebhookDelivery.objects.get(event=emit())
        now = timezone.now()
        delays = []
        while True:
            result = webhooks.attempt_delivery(delivery.pk, now=now)
            if result.next_attempt_at is None:
                break
            delays.append(result.next_attempt_at - now)
            now = result.next_attempt_at
    assert delays == list(webhooks.RETRY_DELAYS)
    assert [d.total_seconds() for d in delays] == [5, 300, 1800, 7200, 18000, 36000, 36000]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 8)
    assert len(receiver.requests) == 8
    # Failed for good: not due at any later time.
    assert webhooks.attempt_delivery(delivery.pk, now=now + timedelta(days=30)) is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", timedelta(seconds=120)),
        ("0", timedelta(0)),
        ("9999999999", timedelta(hours=24)),  # bounded
        ("soon", timedelta(seconds=5)),  # unreadable: the schedule applies
        # Not plain ASCII digits (str.isdigit() takes "²", int() refuses it), a sign, an
        # exponent, a date past datetime's range: unreadable, never an error.
        ("\u00b2", timedelta(seconds=5)),
        ("-5", timedelta(seconds=5)),
        ("1e3", timedelta(seconds=5)),
        ("Mon, 01 Jan 99999 00:00:00 GMT", timedelta(seconds=5)),
    ],
)
def test_it_honours_retry_after_seconds(header, expected):
    with Receiver(Reply(503, headers={"Retry-After": header})) as receiver:
        make_endpoint(receiver.url)
        delivery = WebhookDelivery.objects.get(event=emit())
        now = timezone.now()
        result = webhooks.attempt_delivery(delivery.pk, now=now)
    assert result.status == "pending"
    assert result.next_attempt_at - now == expected


@pytest.mark.django_db
def test_it_honours_retry_after_as_an_http_date():
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    reply = Reply(429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    with Receiver(reply) as receiver:
        make_endpoint(receiver.url)
        delivery = WebhookDelivery.objects.get(event=emit())
        now = timezone.now()
        result = webhooks.attempt_delivery(delivery.pk, now=now)
    delay = result.next_attempt_at - now
    assert timedelta(minutes=9, seconds=55) <= delay <= timedelta(minutes=10)
    assert webhooks.attempt_delivery(delivery.pk, now=now + timedelta(minutes=5)) is None


@pytest.mark.django_db
def test_it_disables_the_endpoint_and_fails_its_deliveries_on_a_410():
    with Receiver(Reply(410, body=b"gone for good")) as receiver:
        endpoint, _secret = make_endpoint(receiver.url)
        first = WebhookDelivery.objects.get(event=emit())
        second = WebhookDelivery.objects.get(event=emit("swap_failed"))
        now = timezone.now()
        result = webhooks.attempt_delivery(first.pk, now=now)
        assert (result.status, result.status_code) == ("failed", 410)
        endpoint.refresh_from_db()
        assert endpoint.enabled is False
        assert "410" in endpoint.disabled_reason
        # The other delivery is closed without a request; new events get no delivery.
        later = webhooks.attempt_delivery(second.pk, now=now)
        assert later.status == "failed"
        assert not WebhookDelivery.objects.filter(event=emit()).exists()
    assert len(receiver.requests) == 1
    second.refresh_from_db()
    assert "endpoint disabled" in second.attempt_log.get().error


@pytest.mark.django_db
def test_it_does_not_follow_redirects():
    with Receiver() as target, Receiver(Reply(302, headers={"Location": target.url})) as hook:
        make_endpoint(hook.url)
        delivery = WebhookDelivery.objects.get(event=emit())
        result = webhooks.attempt_delivery(delivery.pk)
        time.sleep(0.1)
    assert (result.status, result.status_code) == ("pending", 302)
    assert len(hook.requests) == 1
    assert target.requests == []
    attempt = delivery.attempt_log.get()
    assert attempt.status_code == 302
    assert "redirect not followed" in attempt.error


@pytest.mark.django_db
def test_it_logs_a_connection_error_and_retries():
    with Receiver() as receiver:
        url = receiver.url  # closed when the block ends: nothing listens there any more
    make_endpoint(url)
    delivery = WebhookDelivery.objects.get(event=emit())
    now = timezone.now()
    result = webhooks.attempt_delivery(delivery.pk, now=now)
    assert result.status == "pending"
    assert result.next_attempt_at == now + timedelta(seconds=5)
    attempt = delivery.attempt_log.get()
    assert attempt.status_code is None
    assert attempt.error.startswith("ConnectError")


@pytest.mark.django_db
def test_it_keeps_the_first_500_characters_of_the_response():
    with Receiver(Reply(500, body=("é" * 2000).encode())) as receiver:
        make_endpoint(receiver.url)
        delivery = WebhookDelivery.objects.get(event=emit())
        webhooks.attempt_delivery(delivery.pk)
    assert delivery.attempt_log.get().response_excerpt == "é" * 500


@pytest.mark.django_db
def test_it_creates_deliveries_only_for_endpoints_that_want_the_event():
    everything, _ = make_endpoint("http://127.0.0.1:9/all")
    failures, _ = make_endpoint("http://127.0.0.1:9/failures", events=["swap_failed"])
    locks, _ = make_endpoint("http://127.0.0.1:9/locks", events=["lock.force_released"])
    disabled, _ = make_endpoint("http://127.0.0.1:9/off")
    WebhookEndpoint.objects.filter(pk=disabled.pk).update(enabled=False)

    def targets(event):
        return {d.endpoint_id for d in event.deliveries.all()}

    assert targets(emit("swap_complete")) == {everything.pk}
    assert targets(emit("swap_failed")) == {everything.pk, failures.pk}
    assert targets(emit("lock.force_released", {"old_holder": "cron"})) == {
        everything.pk,
        locks.pk,
    }


@pytest.mark.django_db
def test_it_rejects_unknown_event_types_and_non_json_payloads():
    with pytest.raises(ValueError, match="unknown webhook event type"):
        emit("swap_started")
    with pytest.raises(ValueError):
        emit("swap_complete", {"ratio": float("nan")})
    assert not WebhookEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_refuses_to_emit_outside_a_transaction():
    with pytest.raises(RuntimeError, match="inside the transaction"):
        webhooks.emit_event("swap_complete", SWAP_PAYLOAD)
    assert not WebhookEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_never_lets_two_workers_send_the_same_attempt():
    with Receiver() as receiver:
        endpoint, _ = make_endpoint(receiver.url)
        delivery = outbox_row(endpoint)
        start = threading.Barrier(8)
        results = []

        def worker():
            try:
                start.wait()
                results.append(webhooks.attempt_delivery(delivery.pk))
            finally:
                connections.close_all()

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        time.sleep(0.1)
    assert len(results) == 8
    assert sum(r is not None for r in results) == 1
    assert len(receiver.requests) == 1
    assert DeliveryAttempt.objects.filter(delivery=delivery).count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_lets_a_hanging_receiver_delay_neither_the_caller_nor_other_endpoints(huey_immediate):
    with Receiver(Reply(hang=True)) as hanging, Receiver() as healthy:
        make_endpoint(hanging.url, description="never answers")
        make_endpoint(healthy.url)
        started = time.monotonic()
        with transaction.atomic():  # the swap's final-state transaction
            before_emit = time.monotonic()
            event = webhooks.emit_event("swap_complete", SWAP_PAYLOAD)
            emit_seconds = time.monotonic() - before_emit
        committed_seconds = time.monotonic() - started

        delivered_after = wait_until(
            lambda: WebhookDelivery.objects.filter(
                event=event, endpoint__url=healthy.url, status="delivered"
            ).exists(),
            timeout=1.0,
        )
        assert emit_seconds < 0.05
        assert committed_seconds < 0.25
        assert delivered_after < 1.0
        assert len(healthy.requests) == 1
        # The hanging one was sent and is still waiting, claimed by its sender thread.
        hanging.wait_for(1, timeout=1.0)
        stuck = WebhookDelivery.objects.get(event=event, endpoint__url=hanging.url)
        assert stuck.status == "pending" and stuck.locked_until is not None
        assert not stuck.attempt_log.exists()
    # Stopping the receiver drops the connection: that attempt fails and is retried later.
    assert senders.wait_idle(5)
    stuck.refresh_from_db()
    assert stuck.status == "pending" and stuck.attempts == 1 and stuck.locked_until is None
    assert stuck.attempt_log.get().status_code is None


@pytest.mark.django_db(transaction=True)
def test_it_never_delivers_an_event_from_a_rolled_back_transaction(huey_immediate):
    with Receiver() as receiver:
        make_endpoint(receiver.url)
        with pytest.raises(RuntimeError, match="swap write failed"):
            with transaction.atomic():
                webhooks.emit_event("swap_failed", SWAP_PAYLOAD)
                raise RuntimeError("swap write failed")
        drain_webhook_outbox.call_local()
        assert senders.wait_idle(5)
        time.sleep(0.2)
    assert receiver.requests == []
    assert not WebhookEvent.objects.exists()
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_delivers_through_huey_after_commit_and_schedules_the_retry(huey_immediate):
    with Receiver(503, 200) as receiver:
        make_endpoint(receiver.url)
        event = emit()
        receiver.wait_for(1, timeout=2.0)
        assert senders.wait_idle(5)
        delivery = WebhookDelivery.objects.get(event=event)
        assert (delivery.status, delivery.attempts) == ("pending", 1)
        # A wake-up is scheduled for when the retry falls due (5 s).
        wakeups = [t for t in huey_immediate.scheduled() if t.name.endswith("deliver_pending")]
        assert wakeups
        assert (
            abs((wakeups[-1].eta - datetime.now(UTC).replace(tzinfo=None)).total_seconds() - 5) < 2
        )

        # Drive time: the retry is due now; the periodic drain sends it.
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        drain_webhook_outbox.call_local()
        assert senders.wait_idle(5)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 2)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [event.event_id] * 2


@pytest.mark.django_db(transaction=True)
def test_it_delivers_what_a_restart_left_in_the_outbox_with_the_periodic_drain():
    with Receiver() as receiver:
        endpoint, secret = make_endpoint(receiver.url)
        delivery = outbox_row(endpoint, {"swap_id": 9})  # committed, never woken up
        drain_webhook_outbox.call_local()
        assert senders.wait_idle(5)
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    request = receiver.requests[0]
    assert Webhook(secret).verify(request.body, request.headers)["data"] == {"swap_id": 9}

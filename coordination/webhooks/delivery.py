"""Delivery: claiming due deliveries, one signed attempt, the retry schedule, redelivery."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpcore
import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from arbiter import events
from arbiter.errors import Conflict, NotFound
from coordination.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from coordination.webhooks.addresses import AddressRefused, PinnedTransport
from coordination.webhooks.chat import chat_body
from coordination.webhooks.outbox import new_event_id, wake_workers
from coordination.webhooks.secrets_box import SecretUnreadable
from coordination.webhooks.signing import event_body, signature_headers, signing_secrets

logger = logging.getLogger(__name__)

# Delay before attempt n+1 after attempt n failed (attempt 1 is immediate); then failed.
RETRY_DELAYS = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
MAX_RETRY_AFTER = timedelta(hours=24)
# connect 5 s, then 10 s for each of write and read; EXCERPT_DEADLINE bounds slow bodies;
# ARBITER_WEBHOOK_DELIVERY_DEADLINE bounds the whole attempt (every connect, read, write).
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
EXCERPT_DEADLINE = 5.0
EXCERPT_CHARS = 500
# A claim outlives any attempt (timeouts above plus DNS); a crashed worker's claim expires.
CLAIM_DURATION = timedelta(minutes=2)
USER_AGENT = "Arbiter-Webhooks/1"


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt did: the delivery's new status and when it is due again."""

    delivery_id: int
    status: str
    status_code: int | None
    next_attempt_at: datetime | None


@dataclass
class _Response:
    status_code: int | None = None
    retry_after: str | None = None
    location: str | None = None
    excerpt: str = ""
    error: str = ""
    latency_ms: float | None = None


def _available(now: datetime) -> Q:
    return Q(locked_until__isnull=True) | Q(locked_until__lte=now)


def due_delivery_ids(now: datetime | None = None, limit: int = 100) -> list[int]:
    now = now or timezone.now()
    due = WebhookDelivery.objects.filter(
        _available(now), status=WebhookDelivery.PENDING, next_attempt_at__lte=now
    )
    return list(due.order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:limit])


def claim_delivery(delivery_id: int, now: datetime) -> datetime | None:
    """Claim a due delivery for one attempt: the claim's expiry, or None if not ours.

    One conditional UPDATE and its row count: two workers never send the same attempt.
    """
    until = now + CLAIM_DURATION
    claimed = WebhookDelivery.objects.filter(
        _available(now), pk=delivery_id, status=WebhookDelivery.PENDING, next_attempt_at__lte=now
    ).update(locked_until=until)
    return until if claimed else None


def retry_after_delay(value: str | None) -> timedelta | None:
    """A `Retry-After` header (seconds or an HTTP date) as a delay within 0..24 h."""
    if not value:
        return None
    value = value.strip()
    # delay-seconds is 1*DIGIT, ASCII digits only (RFC 9110 §10.2.3); str.isdigit() would
    # also take "²", which int() refuses.
    if value.isascii() and value.isdigit():
        seconds = int(value) if len(value) <= 9 else int(MAX_RETRY_AFTER.total_seconds())
        delay = timedelta(seconds=seconds)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None  # not a date either: the regular backoff applies
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when - datetime.now(UTC)
    return min(max(delay, timedelta(0)), MAX_RETRY_AFTER)


def _post(url: str, body: bytes, headers: dict[str, str]) -> _Response:
    result = _Response()
    started = time.monotonic()
    deadline_seconds = float(settings.ARBITER_WEBHOOK_DELIVERY_DEADLINE)
    deadline = started + deadline_seconds
    headers = {**headers, "Content-Type": "application/json", "User-Agent": USER_AGENT}
    try:
        # PinnedTransport resolves the host once, refuses internal addresses and connects
        # to the address it checked (no DNS rebinding), within `deadline`.
        with (
            httpx.Client(
                transport=PinnedTransport(deadline),
                timeout=HTTP_TIMEOUT,
                follow_redirects=False,
                trust_env=False,
            ) as client,
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            result.latency_ms = (time.monotonic() - started) * 1000
            result.status_code = response.status_code
            result.retry_after = response.headers.get("retry-after")
            result.location = response.headers.get("location")
            chunks, size = [], 0
            excerpt_until = min(started + EXCERPT_DEADLINE, deadline)
            try:
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= EXCERPT_CHARS * 4 or time.monotonic() > excerpt_until:
                        break
            except (httpx.TimeoutException, httpcore.TimeoutException):
                pass  # the answer (status) came; a body slower than the deadline is cut
            raw = b"".join(chunks)[: EXCERPT_CHARS * 4]
            try:
                text = raw.decode(response.charset_encoding or "utf-8", errors="replace")
            except LookupError:  # a charset Python does not know
                text = raw.decode("utf-8", errors="replace")
            result.excerpt = text[:EXCERPT_CHARS]
    except AddressRefused as exc:
        result.error = f"not sent: {exc}"[:500]
    except Exception as exc:  # any failure is this attempt's outcome, logged as a row
        # httpx messages name the failure (refused, timed out), never our headers.
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if time.monotonic() >= deadline:
            message = f"{message} (delivery deadline of {deadline_seconds:g} s passed)"
        result.error = message[:500]
    if result.latency_ms is None:
        result.latency_ms = (time.monotonic() - started) * 1000
    return result


def _record(
    delivery: WebhookDelivery,
    claim: datetime,
    now: datetime,
    response: _Response,
    status: str,
    next_attempt_at: datetime | None,
    disable_reason: str = "",
) -> None:
    try:
        with transaction.atomic():
            DeliveryAttempt.objects.create(
                delivery_id=delivery.pk,
                at=now,
                status_code=response.status_code,
                latency_ms=response.latency_ms,
                error=response.error[:500],
                response_excerpt=response.excerpt[:EXCERPT_CHARS],
            )
            # Conditional on our claim: a redelivery or a newer claim wins over us.
            WebhookDelivery.objects.filter(pk=delivery.pk, locked_until=claim).update(
                status=status,
                attempts=delivery.attempts + 1,
                next_attempt_at=next_attempt_at or now,
                locked_until=None,
                last_status_code=response.status_code,
            )
            if disable_reason:
                WebhookEndpoint.objects.filter(pk=delivery.endpoint_id).update(
                    enabled=False, disabled_reason=disable_reason
                )
            events.send_on_commit(events.webhooks_changed)
    except IntegrityError:
        # The endpoint (and with it the delivery) was deleted during the attempt.
        logger.info("webhook delivery %s vanished during its attempt", delivery.pk)


def delivery_body(endpoint: WebhookEndpoint, event: WebhookEvent) -> bytes:
    """What the endpoint receives: the Standard Webhooks document, or a chat message."""
    if endpoint.format == WebhookEndpoint.FORMAT_CHAT:
        return chat_body(event)
    return event_body(event)


def attempt_delivery(delivery_id: int, *, now: datetime | None = None) -> AttemptResult | None:
    """Claim a due delivery and make one attempt; None when it is not due or not ours.

    `now` drives the schedule (tests move it forward); `webhook-timestamp` is always the
    real clock, since receivers check it against theirs.
    """
    now = now or timezone.now()
    claim = claim_delivery(delivery_id, now)
    if claim is None:
        return None
    delivery = (
        WebhookDelivery.objects.select_related("event", "endpoint").filter(pk=delivery_id).first()
    )
    if delivery is None:
        return None
    endpoint, event = delivery.endpoint, delivery.event
    if not endpoint.enabled:
        reason = f"not sent: endpoint disabled ({endpoint.disabled_reason or 'by a user'})"
        _record(delivery, claim, now, _Response(error=reason), WebhookDelivery.FAILED, None)
        return AttemptResult(delivery_id, WebhookDelivery.FAILED, None, None)

    body = delivery_body(endpoint, event)
    try:
        secrets_ = signing_secrets(endpoint, now)
    except SecretUnreadable as exc:
        response = _Response(error=str(exc))
    else:
        headers = signature_headers(event.event_id, body, secrets_, timestamp=int(time.time()))
        response = _post(endpoint.url, body, headers)

    attempts = delivery.attempts + 1
    code = response.status_code
    disable_reason = ""
    next_at: datetime | None = None
    if code is not None and 200 <= code < 300:
        status = WebhookDelivery.DELIVERED
    elif code == 410:
        status = WebhookDelivery.FAILED
        disable_reason = f"the receiver answered 410 Gone at {now:%Y-%m-%d %H:%M:%S} UTC"
    elif attempts >= MAX_ATTEMPTS:
        status = WebhookDelivery.FAILED
    else:
        status = WebhookDelivery.PENDING
        delay = retry_after_delay(response.retry_after)
        next_at = now + (delay if delay is not None else RETRY_DELAYS[attempts - 1])
    if code is not None and 300 <= code < 400 and not response.error:
        response.error = f"redirect not followed (Location: {response.location or '-'})"[:500]
    _record(delivery, claim, now, response, status, next_at, disable_reason)

    logger.info(
        "webhook %s %s to endpoint %s, attempt %s: %s → %s",
        event.event_type,
        event.event_id,
        endpoint.pk,
        attempts,
        code if code is not None else (response.error.split(":")[0] or "error"),
        status,
    )
    if disable_reason:
        logger.warning("webhook endpoint %s disabled: %s", endpoint.pk, disable_reason)
        # Its other pending deliveries become due now, to be closed as "not sent".
        WebhookDelivery.objects.filter(
            endpoint_id=endpoint.pk, status=WebhookDelivery.PENDING
        ).update(next_attempt_at=now)
    return AttemptResult(delivery_id, status, code, next_at)


TEST_EVENT_TYPE = "webhook.test"


@dataclass(frozen=True)
class SendTestResult:
    """What a test send did (the API answers with it; the dashboard shows it inline)."""

    ok: bool
    status_code: int | None
    error: str
    duration_ms: float
    response_excerpt: str
    event_id: str
    delivery_id: int | None


def send_test(endpoint: WebhookEndpoint, *, now: datetime | None = None) -> SendTestResult:
    """Send one signed `webhook.test` event to `endpoint` now, in the caller's thread.

    The same body, signing and `_post` as every delivery (so the SSRF check at connect
    time and the total deadline apply), but exactly one attempt: a test is never retried
    and never disables the endpoint (a 410 here is reported, not acted on). It is also
    sent to a disabled endpoint, so a fixed receiver can be checked before re-enabling it.
    The event, its delivery (delivered or failed, never pending, so no worker picks it
    up) and the attempt are logged like any other, after the attempt: the caller's
    transaction is never held open across the HTTP request.
    """
    now = now or timezone.now()
    event = WebhookEvent(
        event_id=new_event_id(),
        event_type=TEST_EVENT_TYPE,
        payload={
            "webhook_id": endpoint.pk,
            "url": endpoint.url,
            "message": "A test event sent from Arbiter; no action is needed.",
        },
        created_at=now,
    )
    body = delivery_body(endpoint, event)
    try:
        secrets_ = signing_secrets(endpoint, now)
    except SecretUnreadable as exc:
        response = _Response(error=str(exc), latency_ms=0.0)
    else:
        headers = signature_headers(event.event_id, body, secrets_, timestamp=int(time.time()))
        response = _post(endpoint.url, body, headers)
    code = response.status_code
    ok = code is not None and 200 <= code < 300
    if code is not None and 300 <= code < 400 and not response.error:
        response.error = f"redirect not followed (Location: {response.location or '-'})"[:500]
    delivery_id: int | None = None
    try:
        with transaction.atomic():
            event.save()
            delivery = WebhookDelivery.objects.create(
                event=event,
                endpoint_id=endpoint.pk,
                status=WebhookDelivery.DELIVERED if ok else WebhookDelivery.FAILED,
                attempts=1,
                next_attempt_at=now,
                last_status_code=code,
                created_at=now,
            )
            DeliveryAttempt.objects.create(
                delivery=delivery,
                at=now,
                status_code=code,
                latency_ms=response.latency_ms,
                error=response.error[:500],
                response_excerpt=response.excerpt[:EXCERPT_CHARS],
            )
            delivery_id = delivery.pk
            events.send_on_commit(events.webhooks_changed)
    except IntegrityError:
        logger.info("webhook endpoint %s vanished during its test send", endpoint.pk)
    logger.info(
        "webhook test %s to endpoint %s: %s",
        event.event_id,
        endpoint.pk,
        code if code is not None else (response.error.split(":")[0] or "error"),
    )
    return SendTestResult(
        ok=ok,
        status_code=code,
        error=response.error,
        duration_ms=round(response.latency_ms or 0.0, 1),
        response_excerpt=response.excerpt[:EXCERPT_CHARS],
        event_id=event.event_id,
        delivery_id=delivery_id,
    )


def redeliver(delivery_id: int, *, now: datetime | None = None) -> WebhookDelivery:
    """Send a delivery's event again with the same `webhook-id` and a fresh retry budget.

    The attempt log keeps every earlier attempt; `attempts` restarts at 0.
    """
    now = now or timezone.now()
    delivery = (
        WebhookDelivery.objects.select_related("endpoint", "event").filter(pk=delivery_id).first()
    )
    if delivery is None:
        raise NotFound(f"no webhook delivery with id {delivery_id}", field="delivery_id")
    if not delivery.endpoint.enabled:
        raise Conflict(
            f"endpoint {delivery.endpoint_id} is disabled "
            f"({delivery.endpoint.disabled_reason or 'by a user'}); re-enable it to deliver again",
            field="delivery_id",
        )
    with transaction.atomic():
        updated = WebhookDelivery.objects.filter(_available(now), pk=delivery_id).update(
            status=WebhookDelivery.PENDING, attempts=0, next_attempt_at=now, locked_until=None
        )
        if not updated:
            raise Conflict(
                f"delivery {delivery_id} is being attempted right now; try again shortly",
                field="delivery_id",
            )
        transaction.on_commit(wake_workers, robust=True)
    delivery.refresh_from_db()
    return delivery

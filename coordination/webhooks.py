"""Signed durable webhooks: the outbox, signing, one delivery attempt, the retry schedule.

Flow: `emit_event` writes a `WebhookEvent` and one `WebhookDelivery` per endpoint that
wants it, inside the caller's transaction (the outbox), and asks huey to deliver once
that transaction commits. Workers (`coordination.tasks`) find due deliveries, claim each
with a conditional UPDATE, and make one attempt (`attempt_delivery`): every attempt is a
`DeliveryAttempt` row; the delivery is then delivered, failed or due again later.

Signing (Standard Webhooks):
    webhook-id         the event's id (`msg_…`), the same on every attempt and redelivery
    webhook-timestamp  unix seconds at the moment of this attempt
    webhook-signature  `v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>` for the
                       current secret and, while a rotation is in progress, also for the
                       previous one (space-separated); key = the base64-decoded part of
                       the `whsec_<base64>` secret
    X-Spark-Signature  `sha256=<hex HMAC-SHA256(key, body)>` for simple receivers, where
                       key = the UTF-8 bytes of the whole current secret string exactly as
                       shown, `whsec_` prefix included (GitHub style; current secret only)
Body: `{"type": …, "timestamp": <event time, ISO 8601 UTC>, "data": <payload>}` as compact
UTF-8 JSON with the payload's keys sorted, built from the stored row, so every attempt
and every redelivery sends the same bytes.
"""

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from arbiter.errors import Conflict, InvalidInput, NotFound
from coordination.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from coordination.secrets_box import (
    SecretUnreadable,
    decrypt_secret,
    encrypt_secret,
    generate_secret,
    secret_format_problem,
    secret_key_bytes,
)

logger = logging.getLogger(__name__)

EVENT_TYPES = WebhookEndpoint.EVENT_TYPES
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
DEFAULT_PREVIOUS_SECRET_HOURS = 24
# connect 5 s, then 10 s for each of write and read; EXCERPT_DEADLINE bounds slow bodies.
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
EXCERPT_DEADLINE = 5.0
EXCERPT_CHARS = 500
# A claim outlives any attempt (timeouts above plus DNS); a crashed worker's claim expires.
CLAIM_DURATION = timedelta(minutes=2)
USER_AGENT = "Arbiter-Webhooks/1"


# --- endpoints ------------------------------------------------------------------------


def clean_url(url: str) -> str:
    url = url.strip()
    if not url or len(url) > 1000 or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidInput("url: must be an http(s) URL of at most 1000 characters", field="url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InvalidInput("url: not a valid URL", field="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("url: must be an http:// or https:// URL with a host", field="url")
    return url


def clean_events(events: list[str] | None) -> list[str]:
    """Known event types, deduplicated in order; an empty list means every event."""
    cleaned: list[str] = []
    for event_type in events or []:
        if event_type not in EVENT_TYPES:
            raise InvalidInput(
                f"events: unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}",
                field="events",
            )
        if event_type not in cleaned:
            cleaned.append(event_type)
    return cleaned


def clean_secret(secret: str | None, field: str = "secret") -> str:
    """The given secret if well-formed, else a 422; a generated one when none is given."""
    if secret is None:
        return generate_secret()
    problem = secret_format_problem(secret)
    if problem:
        raise InvalidInput(f"{field}: {problem}", field=field)
    return secret


def create_endpoint(
    url: str, *, secret: str | None = None, events: list[str] | None = None, description: str = ""
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its plaintext secret (the only time it is returned)."""
    if len(description) > 200:
        raise InvalidInput("description: at most 200 characters", field="description")
    plaintext = clean_secret(secret)
    endpoint = WebhookEndpoint.objects.create(
        url=clean_url(url),
        events=clean_events(events),
        description=description.strip(),
        secret_encrypted=encrypt_secret(plaintext),
    )
    logger.info("webhook endpoint %s created for host %s", endpoint.pk, urlsplit(url).hostname)
    return endpoint, plaintext


def rotate_secret(
    endpoint: WebhookEndpoint,
    *,
    new_secret: str | None = None,
    previous_valid_hours: float = DEFAULT_PREVIOUS_SECRET_HOURS,
    now: datetime | None = None,
) -> str:
    """Install a new secret; the current one keeps signing for `previous_valid_hours`.

    Only two secrets exist at a time: rotating again during a rotation drops the older.
    """
    now = now or timezone.now()
    plaintext = clean_secret(new_secret)
    if not 0 <= previous_valid_hours <= 24 * 30:
        raise InvalidInput(
            "previous_valid_hours: must be between 0 and 720", field="previous_valid_hours"
        )
    keep = previous_valid_hours > 0
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted if keep else ""
    endpoint.previous_secret_expires_at = (
        now + timedelta(hours=previous_valid_hours) if keep else None
    )
    endpoint.secret_encrypted = encrypt_secret(plaintext)
    fields = ["secret_encrypted", "previous_secret_encrypted", "previous_secret_expires_at"]
    endpoint.save(update_fields=fields)
    logger.info("webhook endpoint %s: secret rotated", endpoint.pk)
    return plaintext


def signing_secrets(endpoint: WebhookEndpoint, now: datetime | None = None) -> list[str]:
    """Plaintext secrets to sign with: the current one, then the previous while valid."""
    now = now or timezone.now()
    found = [decrypt_secret(endpoint.secret_encrypted)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret_encrypted and expires is not None and expires > now:
        found.append(decrypt_secret(endpoint.previous_secret_encrypted))
    return found


# --- events and signing ---------------------------------------------------------------


def new_event_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def _sorted_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_json(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_json(item) for item in value]
    return value


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


def wake_workers(delay: float = 0) -> None:
    """Ask huey to look for due deliveries now (or after `delay` seconds)."""
    from coordination.tasks import deliver_pending  # the tasks module imports this one

    if delay > 0:
        deliver_pending.schedule(delay=delay)
    else:
        deliver_pending()


def event_body(event: WebhookEvent) -> bytes:
    """The exact bytes POSTed for `event`: the same for every attempt and redelivery."""
    stamp = event.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    document = {"type": event.event_type, "timestamp": stamp, "data": _sorted_json(event.payload)}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def signature_headers(
    event_id: str, body: bytes, secrets_: list[str], *, timestamp: int
) -> dict[str, str]:
    """The signing headers for one attempt; `secrets_[0]` is the current secret."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    signatures = [
        "v1,"
        + base64.b64encode(hmac.new(secret_key_bytes(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets_
    ]
    simple = hmac.new(secrets_[0].encode(), body, hashlib.sha256).hexdigest()
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
        "X-Spark-Signature": f"sha256={simple}",
    }


# --- delivery -------------------------------------------------------------------------


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
    if value.isdigit():
        seconds = int(value) if len(value) <= 9 else int(MAX_RETRY_AFTER.total_seconds())
        delay = timedelta(seconds=seconds)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when - datetime.now(UTC)
    return min(max(delay, timedelta(0)), MAX_RETRY_AFTER)


def _post(url: str, body: bytes, headers: dict[str, str]) -> _Response:
    result = _Response()
    started = time.monotonic()
    headers = {**headers, "Content-Type": "application/json", "User-Agent": USER_AGENT}
    try:
        with (
            httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False, trust_env=False) as client,
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            result.latency_ms = (time.monotonic() - started) * 1000
            result.status_code = response.status_code
            result.retry_after = response.headers.get("retry-after")
            result.location = response.headers.get("location")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= EXCERPT_CHARS * 4 or time.monotonic() - started > EXCERPT_DEADLINE:
                    break
            raw = b"".join(chunks)
            try:
                text = raw.decode(response.charset_encoding or "utf-8", errors="replace")
            except LookupError:  # a charset Python does not know
                text = raw.decode("utf-8", errors="replace")
            result.excerpt = text[:EXCERPT_CHARS]
    except Exception as exc:  # any failure is this attempt's outcome, logged as a row
        # httpx messages name the failure (refused, timed out), never our headers.
        result.error = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:500]
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
            # Imported here: the dashboard imports coordination. The push never fails this.
            from dashboard.coordination import webhooks_changed

            transaction.on_commit(webhooks_changed, robust=True)
    except IntegrityError:
        # The endpoint (and with it the delivery) was deleted during the attempt.
        logger.info("webhook delivery %s vanished during its attempt", delivery.pk)


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

    body = event_body(event)
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
            f"({delivery.endpoint.disabled_reason or 'by a user'}); re-create it to deliver again",
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

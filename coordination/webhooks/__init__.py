"""Signed durable webhooks: the outbox, signing, one delivery attempt, the retry schedule.

Modules: `endpoints` (validation, secrets, rotation, edits), `outbox` (`emit_event`),
`signing` (body and headers), `delivery` (claims, attempts, retries, redelivery, one
synchronous test send: `send_test`),
`addresses` (no SSRF: internal addresses refused at registration and at every connect).

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

from coordination.webhooks.delivery import (
    RETRY_DELAYS,
    TEST_EVENT_TYPE,
    SendTestResult,
    attempt_delivery,
    claim_delivery,
    due_delivery_ids,
    redeliver,
    send_test,
)
from coordination.webhooks.endpoints import (
    EVENT_TYPES,
    clean_url,
    create_endpoint,
    rotate_secret,
    update_endpoint,
)
from coordination.webhooks.outbox import (
    emit_event,
    new_event_id,
    prune_finished,
    set_waker,
    wake_workers,
)
from coordination.webhooks.signing import event_body, signature_headers, signing_secrets

__all__ = [
    "EVENT_TYPES",
    "RETRY_DELAYS",
    "TEST_EVENT_TYPE",
    "SendTestResult",
    "attempt_delivery",
    "claim_delivery",
    "clean_url",
    "create_endpoint",
    "due_delivery_ids",
    "emit_event",
    "prune_finished",
    "event_body",
    "new_event_id",
    "redeliver",
    "rotate_secret",
    "send_test",
    "signature_headers",
    "signing_secrets",
    "update_endpoint",
    "set_waker",
    "wake_workers",
]

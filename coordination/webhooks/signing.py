"""Signing: the exact body of an event and the headers that sign it (see the package's
docstring for the scheme)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

from coordination.models import WebhookEndpoint, WebhookEvent
from coordination.webhooks.secrets_box import decrypt_secret, secret_key_bytes


def signing_secrets(endpoint: WebhookEndpoint, now: datetime | None = None) -> list[str]:
    """Plaintext secrets to sign with: the current one, then the previous while valid."""
    now = now or timezone.now()
    found = [decrypt_secret(endpoint.secret_encrypted)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret_encrypted and expires is not None and expires > now:
        found.append(decrypt_secret(endpoint.previous_secret_encrypted))
    return found


def _sorted_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_json(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_json(item) for item in value]
    return value


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

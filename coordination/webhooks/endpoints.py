"""Webhook endpoints: validated URL, event filter and secret; secret rotation."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.utils import timezone

from arbiter.errors import InvalidInput
from coordination.models import WebhookEndpoint
from coordination.webhooks.addresses import url_refusal
from coordination.webhooks.secrets_box import encrypt_secret, generate_secret, secret_format_problem

logger = logging.getLogger(__name__)

EVENT_TYPES = WebhookEndpoint.EVENT_TYPES
DEFAULT_PREVIOUS_SECRET_HOURS = 24


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
    # SSRF: no internal receivers unless allowed (checked again at every delivery).
    problem = url_refusal(url)
    if problem:
        raise InvalidInput(f"url: {problem}", field="url")
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


def clean_format(value: str) -> str:
    formats = [choice for choice, _label in WebhookEndpoint.FORMAT_CHOICES]
    if value not in formats:
        raise InvalidInput(
            f"format: must be one of {', '.join(formats)}, got {value!r}", field="format"
        )
    return value


def create_endpoint(
    url: str,
    *,
    secret: str | None = None,
    events: list[str] | None = None,
    description: str = "",
    format: str = WebhookEndpoint.FORMAT_STANDARD,  # noqa: A002 (the field's name)
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its plaintext secret (the only time it is returned)."""
    plaintext = clean_secret(secret)
    endpoint = WebhookEndpoint.objects.create(
        url=clean_url(url),
        events=clean_events(events),
        description=clean_description(description),
        format=clean_format(format),
        secret_encrypted=encrypt_secret(plaintext),
    )
    logger.info("webhook endpoint %s created for host %s", endpoint.pk, urlsplit(url).hostname)
    return endpoint, plaintext


def clean_description(description: str) -> str:
    if len(description) > 200:
        raise InvalidInput("description: at most 200 characters", field="description")
    return description.strip()


# What `update_endpoint` may change, in the order its audit entries list them.
EDITABLE_FIELDS = ("url", "description", "events", "format", "enabled")


def update_endpoint(
    endpoint: WebhookEndpoint, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply `changes` (url, description, events, format, enabled) with the checks of
    `create_endpoint`; returns (before, after) of the fields that really changed.

    Every field is validated before anything is written, so a bad one leaves the row as
    it was. Re-enabling clears `disabled_reason` (it explained the old state only).
    """
    unknown = [name for name in changes if name not in EDITABLE_FIELDS]
    if unknown:
        raise InvalidInput(f"{unknown[0]}: not an editable field", field=unknown[0])
    for name, value in changes.items():
        if value is None:
            raise InvalidInput(f"{name}: must not be null (leave it out to keep it)", field=name)
    cleaned: dict[str, Any] = {}
    if "url" in changes:
        cleaned["url"] = clean_url(changes["url"])
    if "description" in changes:
        cleaned["description"] = clean_description(changes["description"])
    if "events" in changes:
        cleaned["events"] = clean_events(changes["events"])
    if "format" in changes:
        cleaned["format"] = clean_format(changes["format"])
    if "enabled" in changes:
        if not isinstance(changes["enabled"], bool):
            raise InvalidInput("enabled: must be true or false", field="enabled")
        cleaned["enabled"] = changes["enabled"]
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for name in EDITABLE_FIELDS:
        if name in cleaned and getattr(endpoint, name) != cleaned[name]:
            before[name] = getattr(endpoint, name)
            after[name] = cleaned[name]
    if after.get("enabled") is True and endpoint.disabled_reason:
        before["disabled_reason"] = endpoint.disabled_reason
        after["disabled_reason"] = ""
    if after:
        for name, value in after.items():
            setattr(endpoint, name, value)
        endpoint.save(update_fields=list(after))
        logger.info("webhook endpoint %s updated: %s", endpoint.pk, ", ".join(after))
    return before, after


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

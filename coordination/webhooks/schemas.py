"""Webhook API schemas. Secrets appear only in the `…CreatedOut` / `…RotatedOut` answers."""

from datetime import datetime

from ninja import Field, Schema
from pydantic import ConfigDict


class WebhookIn(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(..., max_length=1000, description="http(s) URL of the receiver")
    secret: str | None = Field(
        None, max_length=200, description="`whsec_<base64>`; generated when left out"
    )
    events: list[str] = Field(
        default_factory=list,
        description="Event types (GET /api/webhooks/event-types has them all); empty = all",
    )
    description: str = Field("", max_length=200)
    format: str = Field(
        "standard",
        description='"standard" (Standard Webhooks JSON) or "chat" ({"text": ...} for '
        "Slack, Mattermost or Discord's /slack incoming webhooks)",
    )


class WebhookPatchIn(Schema):
    """Only the fields given change; each is checked as on create (null is refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str | None = Field(None, max_length=1000, description="http(s) URL of the receiver")
    description: str | None = Field(None, max_length=200)
    events: list[str] | None = Field(None, description="empty = all")
    format: str | None = Field(None, description='"standard" or "chat"')
    enabled: bool | None = Field(None, description="true also clears `disabled_reason`")


class WebhookTestOut(Schema):
    """What one test send did; `ok` is a 2xx answer. It is also logged as a delivery."""

    ok: bool
    status_code: int | None
    error: str  # empty when an answer came; "not sent: …" when the SSRF check refused
    duration_ms: float
    response_excerpt: str  # at most 500 characters
    event_id: str  # the `webhook-id` header sent
    delivery_id: int | None  # the logged delivery (None if the endpoint vanished meanwhile)


class RotateIn(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)

    secret: str | None = Field(None, max_length=200, description="Generated when left out")
    previous_valid_hours: float = Field(
        24, ge=0, le=720, description="How long the old secret keeps signing too (0 = not)"
    )


class WebhookOut(Schema):
    id: int
    url: str
    description: str
    events: list[str]
    format: str
    enabled: bool
    disabled_reason: str
    created_at: datetime
    # Set while a rotation is in progress: the previous secret signs too until then.
    previous_secret_expires_at: datetime | None


class WebhookCreatedOut(WebhookOut):
    secret: str  # shown once


class WebhookRotatedOut(Schema):
    id: int
    secret: str  # shown once
    previous_secret_expires_at: datetime | None


class AttemptOut(Schema):
    at: datetime
    status_code: int | None
    latency_ms: float | None
    error: str
    response_excerpt: str


class DeliveryOut(Schema):
    id: int
    event_id: str  # the `webhook-id` header
    event_type: str
    status: str
    attempts: int  # in the current round (a redelivery restarts it); `attempt_log` has all
    next_attempt_at: datetime | None
    last_status_code: int | None
    created_at: datetime
    attempt_log: list[AttemptOut]


class RedeliveryOut(Schema):
    id: int
    event_id: str
    status: str
    next_attempt_at: datetime

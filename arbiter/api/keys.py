"""API key management: admin people create and revoke keys; keys are shown once.

Who may call each route is in `arbiter.route_policy` (creating and revoking: a logged-in
person with the admin role, never a key; listing: the admin role).
"""

from datetime import datetime, timedelta
from typing import Literal

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, Router, Schema, Status
from pydantic import StrictInt, field_validator

from arbiter import audit
from arbiter.broker.quotas import current_usage
from arbiter.errors import InvalidInput, NotFound
from arbiter.models import ApiKey

router = Router(tags=["api keys"])

MAX_EXPIRES_IN_DAYS = 3650
# The largest values the columns hold (PositiveIntegerField, PositiveBigIntegerField).
MAX_REQUESTS_PER_MINUTE = 2**31 - 1
MAX_TOKENS_PER_DAY = 2**63 - 1


class ApiKeyIn(Schema):
    name: str = Field(..., min_length=1, max_length=100)
    role: Literal["inference", "operator", "admin"] = ApiKey.ROLE_OPERATOR
    # Catalog keys or served names an inference key may use; empty or absent: all.
    models: list[str] = Field(default_factory=list)
    expires_in_days: int | None = Field(None, ge=1, le=MAX_EXPIRES_IN_DAYS)
    # Broker quotas (arbiter.broker.quotas); absent or null: no limit.
    requests_per_minute: StrictInt | None = Field(None, ge=1, le=MAX_REQUESTS_PER_MINUTE)
    tokens_per_day: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS_PER_DAY)
    # The broker's priority class for the key's waiting requests (docs/BROKER.md).
    priority: Literal["interactive", "default", "batch"] = ApiKey.PRIORITY_DEFAULT

    @field_validator("name")
    @classmethod
    def name_is_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("models")
    @classmethod
    def models_are_names(cls, value: list[str]) -> list[str]:
        names = [name.strip() for name in value]
        if any(not name for name in names):
            raise ValueError("model names must not be blank")
        return list(dict.fromkeys(names))


class KeyUsageOut(Schema):
    requests_this_minute: int
    tokens_today: int


class ApiKeyOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    role: str
    models: list[str]
    expires_at: datetime | None
    requests_per_minute: int | None
    tokens_per_day: int | None
    priority: str
    # What the key used against its limits (null for a key without limits).
    usage: KeyUsageOut | None


class ApiKeyCreatedOut(ApiKeyOut):
    key: str  # the raw key, returned by the create call only


def key_audit_values(key: ApiKey) -> dict:
    """What the audit trail keeps of a new key: never the key or its hash."""
    return {
        "name": key.name,
        "prefix": key.visible_prefix,
        "role": key.role,
        "models": list(key.allowed_models or []),
        "expires_at": key.expires_at,
        "requests_per_minute": key.requests_per_minute,
        "tokens_per_day": key.tokens_per_day,
        "priority": key.priority,
    }


def _key_out(key: ApiKey, usage: tuple[int, int] = (0, 0)) -> dict:
    limited = key.requests_per_minute is not None or key.tokens_per_day is not None
    return {
        "id": key.pk,
        "name": key.name,
        "prefix": key.visible_prefix,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
        "role": key.role,
        "models": list(key.allowed_models or []),
        "expires_at": key.expires_at,
        "requests_per_minute": key.requests_per_minute,
        "tokens_per_day": key.tokens_per_day,
        "priority": key.priority,
        "usage": (
            {"requests_this_minute": usage[0], "tokens_today": usage[1]} if limited else None
        ),
    }


@router.get("/keys", response=list[ApiKeyOut], summary="List API keys (never the keys)")
def list_keys(request: HttpRequest):
    keys = list(ApiKey.objects.order_by("-created_at"))
    usage = current_usage([k.pk for k in keys])
    return [_key_out(k, usage[k.pk]) for k in keys]


def issue_key(request: HttpRequest, payload: ApiKeyIn) -> tuple[ApiKey, str]:
    """Create a key and its audit row (never the key or its hash); the raw key is returned
    once. The one way in for the API route and the keys page (dashboard/actions.py)."""
    if payload.models and payload.role != ApiKey.ROLE_INFERENCE:
        raise InvalidInput(
            f"models: only an inference key is limited to models (this one is {payload.role})",
            field="models",
        )
    expires_at = (
        timezone.now() + timedelta(days=payload.expires_in_days)
        if payload.expires_in_days is not None
        else None
    )
    with transaction.atomic():  # the key and its audit row commit together
        key, raw_key = ApiKey.objects.create_key(
            name=payload.name,
            user=audit.principal_of(request),
            role=payload.role,
            allowed_models=payload.models,
            expires_at=expires_at,
            requests_per_minute=payload.requests_per_minute,
            tokens_per_day=payload.tokens_per_day,
            priority=payload.priority,
        )
        audit.record(request, "key.create", "api_key", key.pk, after=key_audit_values(key))
    return key, raw_key


def revoke(request: HttpRequest, key_id: int) -> None:
    """Revoke a key (NotFound when there is none); revoking a revoked key changes nothing
    and leaves no audit row. Shared by the API route and the keys page."""
    now = timezone.now()
    with transaction.atomic():
        updated = ApiKey.objects.filter(pk=key_id, revoked_at__isnull=True).update(revoked_at=now)
        if updated:
            name = ApiKey.objects.filter(pk=key_id).values_list("name", flat=True).first()
            audit.record(
                request,
                "key.revoke",
                "api_key",
                key_id,
                before={"name": name, "revoked_at": None},
                after={"name": name, "revoked_at": now},
            )
    if not updated and not ApiKey.objects.filter(pk=key_id).exists():
        raise NotFound(f"no API key with id {key_id}", field="key_id")


@router.post("/keys", response={201: ApiKeyCreatedOut}, summary="Create an API key")
def create_key(request: HttpRequest, payload: ApiKeyIn):
    key, raw_key = issue_key(request, payload)
    return Status(201, {**_key_out(key), "key": raw_key})


@router.delete("/keys/{key_id}", response={204: None}, summary="Revoke an API key")
def revoke_key(request: HttpRequest, key_id: int):
    revoke(request, key_id)
    return Status(204, None)

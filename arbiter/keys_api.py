"""API key management: staff users create and revoke keys; keys are shown once."""

from datetime import datetime

from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, Router, Schema, Status
from pydantic import field_validator

from arbiter.errors import ArbiterError, NotFound
from arbiter.models import ApiKey

router = Router(tags=["api keys"])


class StaffRequired(ArbiterError):
    status = 403
    error_type = "forbidden"


class ApiKeyIn(Schema):
    name: str = Field(..., min_length=1, max_length=100)

    @field_validator("name")
    @classmethod
    def name_is_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class ApiKeyOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreatedOut(ApiKeyOut):
    key: str  # the raw key, returned by the create call only


def _key_out(key: ApiKey) -> dict:
    return {
        "id": key.pk,
        "name": key.name,
        "prefix": key.visible_prefix,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    }


def _require_staff_session(request: HttpRequest) -> None:
    # Managing credentials is a person's act: a logged-in staff user, never a key.
    user = request.auth
    if isinstance(user, ApiKey) or not getattr(user, "is_staff", False):
        raise StaffRequired("managing API keys needs a logged-in staff user")


@router.get("/keys", response=list[ApiKeyOut], summary="List API keys (never the keys)")
def list_keys(request: HttpRequest):
    return [_key_out(k) for k in ApiKey.objects.order_by("-created_at")]


@router.post("/keys", response={201: ApiKeyCreatedOut}, summary="Create an API key")
def create_key(request: HttpRequest, payload: ApiKeyIn):
    _require_staff_session(request)
    key, raw_key = ApiKey.objects.create_key(name=payload.name, user=request.auth)
    return Status(201, {**_key_out(key), "key": raw_key})


@router.delete("/keys/{key_id}", response={204: None}, summary="Revoke an API key")
def revoke_key(request: HttpRequest, key_id: int):
    _require_staff_session(request)
    updated = ApiKey.objects.filter(pk=key_id, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if not updated and not ApiKey.objects.filter(pk=key_id).exists():
        raise NotFound(f"no API key with id {key_id}", field="key_id")
    return Status(204, None)

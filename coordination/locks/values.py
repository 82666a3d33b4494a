"""The lock's values: limits, token hashing, times as the API shows them, input cleaners."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder

from arbiter.errors import InvalidInput
from coordination.models import SwapLock

GLOBAL = SwapLock.GLOBAL
TOKEN_HEADER = "X-Swap-Lock-Token"  # noqa: S105 - a header name, not a secret
HOLDER_MAX = 200
PURPOSE_MAX = 500
REASON_MAX = 500
FORCE_RELEASED_EVENT = "lock.force_released"

# Control characters are refused in names and free text: PostgreSQL cannot store NUL,
# and the holder is shown in the dashboard and in log lines.
_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}
_TEXT_WHITESPACE = {"\t", "\n", "\r"}


def hash_token(token: str) -> str:
    """sha256 hex of a lock token: the only form stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def iso(moment: datetime | None) -> str | None:
    """A time as the API renders it everywhere (ISO 8601, milliseconds, `Z`)."""
    return None if moment is None else DjangoJSONEncoder().default(moment)


def seconds_until(moment: datetime, now: datetime) -> int:
    """Whole seconds until `moment`, rounded up and at least 1 (for `Retry-After`)."""
    return max(1, math.ceil((moment - now).total_seconds()))


def max_ttl() -> int:
    return int(settings.ARBITER_LOCK_MAX_TTL)


def _whole_seconds(value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer number of seconds")
    if value < minimum:
        raise ValueError("must be greater than 0" if minimum == 1 else f"must be {minimum} or more")
    if value > max_ttl():
        raise ValueError(f"must be at most {max_ttl()} (ARBITER_LOCK_MAX_TTL)")
    return value


def clean_ttl(value: Any) -> int:
    """A TTL in whole seconds, 1..ARBITER_LOCK_MAX_TTL; raises ValueError otherwise."""
    return _whole_seconds(value, 1)


def clean_lock_delay(value: Any) -> int:
    """Seconds nobody may acquire after a force release: 0..ARBITER_LOCK_MAX_TTL."""
    return _whole_seconds(value, 0)


def clean_holder(value: Any) -> str:
    """Who holds the lock: 1-200 characters after trimming, no control characters."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    if len(value) > HOLDER_MAX:
        raise ValueError(f"must be at most {HOLDER_MAX} characters")
    if any(char in _CONTROL for char in value):
        raise ValueError("must not contain control characters")
    return value


def clean_text(value: Any, max_length: int) -> str:
    """Free text (purpose, reason): at most `max_length` characters, no NUL or controls."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters")
    if any(char in _CONTROL and char not in _TEXT_WHITESPACE for char in value):
        raise ValueError("must not contain control characters")
    return value


def checked(field: str, clean, *args: Any) -> Any:
    """Run a cleaner; turn its ValueError into the API's 422 naming the field."""
    try:
        return clean(*args)
    except ValueError as exc:
        message = f"{field}: {exc}"
        raise InvalidInput(
            message, field=field, errors=[{"field": field, "message": str(exc)}]
        ) from None

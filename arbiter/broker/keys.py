"""API keys for the broker: `Authorization: Bearer arb_<prefix>_<secret>`, as for the API.

Checking a key is a database read, and `last_used_at` a write; at inference rates both
would queue behind the engine's ORM work, so a verified key is remembered for a few
seconds (`ARBITER_BROKER_KEY_CACHE_SECONDS`, default 10: a revoked key stops working
in the broker within that time, and a changed quota applies within it) and
`last_used_at` is written at most once a minute.
A key's expiry is kept with it and checked on every cached hit, so an expired key stops
at its `expires_at`, not up to a cache lifetime later. Only the SHA-256 of a raw key is
kept in memory, never the key.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from arbiter.broker.background import spawn
from arbiter.models import ApiKey

DEFAULT_CACHE_SECONDS = 10.0
LAST_USED_EVERY = ApiKey.LAST_USED_EVERY.total_seconds()
MAX_CACHED = 1000


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the API key's id, name, role and limits."""

    key_id: int
    name: str
    role: str = ApiKey.ROLE_OPERATOR
    # Catalog keys or served names this key may use; empty: every model.
    allowed_models: tuple[str, ...] = ()
    expires_at: datetime | None = None
    # Quotas (`quotas`); None: no limit, and then no quota work at all on the request.
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None
    # The priority class of the key's requests while they wait (`queue`).
    priority: str = ApiKey.PRIORITY_DEFAULT

    @property
    def has_quota(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_day is not None

    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


def bearer_token(authorization: str) -> str:
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@sync_to_async
def _verify(raw_key: str) -> Caller | None:
    key = ApiKey.objects.verify(raw_key)
    if key is None:
        return None
    return Caller(
        key.pk,
        key.name,
        role=key.role,
        allowed_models=tuple(key.allowed_models or ()),
        expires_at=key.expires_at,
        requests_per_minute=key.requests_per_minute,
        tokens_per_day=key.tokens_per_day,
        priority=key.priority,
    )


@sync_to_async
def _touch(key_id: int) -> None:
    ApiKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())


class KeyCache:
    """Verified keys by hash, for a few seconds; misses are not cached."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Caller, float]] = {}
        self.touched: dict[int, float] = {}

    def _ttl(self) -> float:
        return float(getattr(settings, "ARBITER_BROKER_KEY_CACHE_SECONDS", DEFAULT_CACHE_SECONDS))

    async def authenticate(self, authorization: str) -> Caller | None:
        raw = bearer_token(authorization)
        if not raw:
            return None
        digest = hashlib.sha256(raw.encode()).hexdigest()
        now = time.monotonic()
        cached = self.entries.get(digest)
        if cached is not None and now - cached[1] < self._ttl():
            if cached[0].expired():
                self.entries.pop(digest, None)
                return None
            return cached[0]
        touch = True
        if cached is not None:
            touch = now - self.touched.get(cached[0].key_id, 0.0) >= LAST_USED_EVERY
        caller = await _verify(raw)
        if caller is None:
            self.entries.pop(digest, None)
            return None
        if touch:
            # A write: off the request's path, so it never waits for the write lock.
            self.touched[caller.key_id] = now
            spawn(_touch(caller.key_id))
        if len(self.entries) >= MAX_CACHED:
            self.entries.clear()
        self.entries[digest] = (caller, now)
        return caller

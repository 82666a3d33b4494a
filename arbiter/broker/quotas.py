"""Quotas per API key: requests per minute and tokens per UTC day (`ApiKey` fields).

Several broker processes serve one deployment, so the counts live in the database
(`KeyUsage`, one row per key and minute or day), never in a process:

- A request is counted before it is forwarded, by one conditional UPDATE
  (`requests < limit` → `requests + 1`). The database applies it atomically: on
  PostgreSQL a second UPDATE of the row waits for the first and checks the condition
  again on the row as the first left it, so N concurrent requests against a limit L let
  exactly L through. The first request of a minute creates the row; two processes
  creating it at once meet the unique constraint and the loser updates instead.
  A refused request is not counted and not forwarded.
- Tokens are counted after the answer (a refused request has none): the answer's
  `usage.total_tokens`, or for a stream its last `usage` chunk when the backend sends
  one (OpenAI's `stream_options.include_usage`), else one token per content chunk: an
  approximation (a backend may put several tokens in a chunk, and prompt tokens are
  not counted then). A request is refused once the day's tokens have reached the limit;
  the request that crosses it is served whole, so a day may end a little over.

A key without limits never reaches this module: the broker checks `Caller`'s limits,
which came with the key (cached in `keys.KeyCache`), so the lean path stays as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from arbiter.broker.errors import TooManyRequests
from arbiter.broker.keys import Caller
from arbiter.models import ApiKey, KeyUsage

# Minute rows older than this are deleted when a key's next minute starts; day rows
# are kept for the history (and deleted after a year, the same way).
KEEP_MINUTES = timedelta(hours=1)
KEEP_DAYS = timedelta(days=366)
# The most of an unstreamed answer kept to read its `usage` from.
MAX_JSON_BODY = 4 * 1024 * 1024


def minute_start(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _seconds_until(moment: datetime, now: datetime) -> float:
    return max(1.0, (moment - now).total_seconds())


class QuotaExceeded(TooManyRequests):
    """429 naming the key's limit (in `param` too), with Retry-After to the next period."""

    def __init__(self, limit_name: str, limit: int, used: int, key_name: str, resets_at: datetime):
        now = timezone.now()
        super().__init__(
            f"{limit_name} limit of {limit} reached for key {key_name!r}; it resets at "
            f"{resets_at.isoformat(timespec='seconds')}.",
            code="rate_limit_exceeded",
            param=limit_name,
            retry_after=_seconds_until(resets_at, now),
            limit=limit,
            used=used,
            resets_at=resets_at.isoformat(timespec="seconds"),
        )


# -- counting (sync: the ORM) ---------------------------------------------------------------
def take_request(key_id: int, limit: int, now: datetime | None = None) -> bool:
    """Count one request in the key's current minute if that stays within `limit`.

    True: counted, the request may go. False: the minute's limit is reached (nothing
    was written). Exact under concurrency (see the module docstring).
    """
    if limit <= 0:
        return False
    starts_at = minute_start(now or timezone.now())
    row = KeyUsage.objects.filter(key_id=key_id, period=KeyUsage.MINUTE, starts_at=starts_at)
    if row.filter(requests__lt=limit).update(requests=F("requests") + 1):
        return True
    if row.exists():
        return False
    try:
        with transaction.atomic():
            KeyUsage.objects.create(
                key_id=key_id, period=KeyUsage.MINUTE, starts_at=starts_at, requests=1
            )
    except IntegrityError:
        # Another process created the minute's row first: count against it as usual.
        return bool(row.filter(requests__lt=limit).update(requests=F("requests") + 1))
    # The first request of a new minute for this key: drop its old minute rows.
    KeyUsage.objects.filter(
        key_id=key_id, period=KeyUsage.MINUTE, starts_at__lt=starts_at - KEEP_MINUTES
    ).delete()
    return True


def tokens_today(key_id: int, now: datetime | None = None) -> int:
    starts_at = day_start(now or timezone.now())
    tokens = (
        KeyUsage.objects.filter(key_id=key_id, period=KeyUsage.DAY, starts_at=starts_at)
        .values_list("tokens", flat=True)
        .first()
    )
    return tokens or 0


def add_tokens(key_id: int, tokens: int, now: datetime | None = None) -> None:
    """Add one answered request and its tokens to the key's current UTC day."""
    with _counting():
        _add_tokens(key_id, tokens, now)


def _add_tokens(key_id: int, tokens: int, now: datetime | None) -> None:
    starts_at = day_start(now or timezone.now())
    row = KeyUsage.objects.filter(key_id=key_id, period=KeyUsage.DAY, starts_at=starts_at)
    bump = {"requests": F("requests") + 1, "tokens": F("tokens") + tokens}
    if row.update(**bump):
        return
    try:
        with transaction.atomic():
            KeyUsage.objects.create(
                key_id=key_id, period=KeyUsage.DAY, starts_at=starts_at, requests=1, tokens=tokens
            )
    except IntegrityError:
        row.update(**bump)
        return
    KeyUsage.objects.filter(
        key_id=key_id, period=KeyUsage.DAY, starts_at__lt=starts_at - KEEP_DAYS
    ).delete()


@contextmanager
def _counting() -> Iterator[None]:
    """On PostgreSQL, one transaction whose commit returns before its WAL reaches disk.

    The count is as exact as ever (row locks, not durability, decide who wins); a crash
    may forget the last fraction of a second's counts, which costs a rate limit nothing,
    while waiting for the disk on every request costs the request a flush. SQLite runs
    each statement on its own, as before: a deferred transaction there that reads and
    then writes can fail with "database is locked" when another thread wrote between."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield


def check(caller: Caller) -> None:
    """Raise `QuotaExceeded` when the request may not go; else count it (requests)."""
    with _counting():
        _check(caller)


def _check(caller: Caller) -> None:
    now = timezone.now()
    if caller.tokens_per_day is not None:
        used = tokens_today(caller.key_id, now)
        if used >= caller.tokens_per_day:
            resets = day_start(now) + timedelta(days=1)
            raise QuotaExceeded("tokens_per_day", caller.tokens_per_day, used, caller.name, resets)
    if caller.requests_per_minute is not None:
        if not take_request(caller.key_id, caller.requests_per_minute, now):
            resets = minute_start(now) + timedelta(minutes=1)
            limit = caller.requests_per_minute
            raise QuotaExceeded("requests_per_minute", limit, limit, caller.name, resets)


check_async = sync_to_async(check)
add_tokens_async = sync_to_async(add_tokens)


# -- what the dashboard and the API show ------------------------------------------------------
@dataclass(frozen=True)
class KeyQuota:
    """A key's limits and what it used of them: this minute's requests, today's tokens."""

    key_id: int
    name: str
    requests_per_minute: int | None
    tokens_per_day: int | None
    requests_this_minute: int
    tokens_today: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_day": self.tokens_per_day,
            "requests_this_minute": self.requests_this_minute,
            "tokens_today": self.tokens_today,
        }


def current_usage(key_ids: list[int], now: datetime | None = None) -> dict[int, tuple[int, int]]:
    """{key id: (requests this minute, tokens today)}, one query for all the keys."""
    now = now or timezone.now()
    usage = {key_id: (0, 0) for key_id in key_ids}
    rows = KeyUsage.objects.filter(key_id__in=key_ids).filter(
        Q(period=KeyUsage.MINUTE, starts_at=minute_start(now))
        | Q(period=KeyUsage.DAY, starts_at=day_start(now))
    )
    for key_id, period, requests, tokens in rows.values_list(
        "key_id", "period", "requests", "tokens"
    ):
        minute, day = usage[key_id]
        usage[key_id] = (requests, day) if period == KeyUsage.MINUTE else (minute, tokens)
    return usage


def key_quotas() -> list[KeyQuota]:
    """Every usable key with a limit, and its usage against it (clients panel, status)."""
    keys = list(
        ApiKey.objects.filter(revoked_at__isnull=True)
        .filter(Q(requests_per_minute__isnull=False) | Q(tokens_per_day__isnull=False))
        .order_by("name", "pk")
    )
    usage = current_usage([k.pk for k in keys])
    return [
        KeyQuota(k.pk, k.name, k.requests_per_minute, k.tokens_per_day, *usage.get(k.pk, (0, 0)))
        for k in keys
        if not k.is_expired()
    ]


# -- reading tokens from an answer -----------------------------------------------------------
class TokenCounter:
    """Reads the tokens of one answer as it is relayed (see the module docstring).

    `feed` takes the raw chunks in order; `total()` after the last. An SSE stream is
    read line by line; anything else is read whole (up to `MAX_JSON_BODY`) as JSON.
    """

    def __init__(self) -> None:
        self.partial = b""
        self.body = bytearray()
        self.body_too_large = False
        self.events = 0
        self.content_chunks = 0
        self.usage_tokens: int | None = None

    def feed(self, chunk: bytes) -> None:
        if not self.body_too_large:
            if len(self.body) + len(chunk) > MAX_JSON_BODY:
                self.body_too_large = True
                self.body.clear()
            else:
                self.body += chunk
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if not line.startswith(b"data:"):
            return
        self.events += 1
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        usage_total = _usage_total(event)
        if usage_total is not None:
            self.usage_tokens = usage_total
        if any(_has_content(choice) for choice in event.get("choices") or () if choice):
            self.content_chunks += 1

    def total(self) -> int:
        if self.partial:
            self._line(self.partial)
            self.partial = b""
        if self.events:
            return self.usage_tokens if self.usage_tokens is not None else self.content_chunks
        if self.body_too_large or not self.body:
            return 0
        try:
            answer = json.loads(bytes(self.body))
        except ValueError:
            return 0
        return (_usage_total(answer) or 0) if isinstance(answer, dict) else 0


def _usage_total(event: dict[str, Any]) -> int | None:
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    return total if type(total) is int and total >= 0 else None


def _has_content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content") or delta.get("reasoning_content"))
    return bool(choice.get("text"))

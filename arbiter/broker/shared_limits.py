"""The per-model concurrency limit across broker processes, through Redis.

With REDIS_URL set, every `serve` process counts its requests in flight in one sorted
set per model: a member per request, scored with the time its slot expires. Taking a
slot is one Lua script (drop expired slots, count, add when under the limit), so two
processes can never both take the last one; giving it back is one ZREM, sent off the
request's path. A process that dies holding slots does not leak them for long: each
expires after ARBITER_BROKER_SLOT_TTL seconds (a request still running past that stops
counting). The script reads the time from Redis, so the processes' clocks need not
agree.

If Redis cannot be reached the broker keeps serving and bounds this process alone (the
single-process limiter), logging the failure once a minute.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

import redis.asyncio as aioredis
from django.conf import settings
from django.db import connection
from redis.exceptions import RedisError

from arbiter.broker.background import spawn
from arbiter.broker.errors import TooManyRequests
from arbiter.broker.limits import ConcurrencyLimits, max_concurrency

log = logging.getLogger(__name__)

DEFAULT_SLOT_TTL = 900.0
REDIS_TIMEOUT = 2.0  # seconds; past it the request is bounded by this process alone
WARN_EVERY = 60.0  # seconds between two warnings that Redis is unreachable
LOCAL = ""  # the slot id of a request counted by the local fallback

# KEYS[1]: the model's set; ARGV: limit, slot TTL (s), slot id.
# Returns -1 when the slot was taken, else how many are in flight (the refusal).
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local current = redis.call('ZCARD', KEYS[1])
if current >= tonumber(ARGV[1]) then
  return current
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return -1
"""

_slot_ids = itertools.count()


def slot_ttl() -> float:
    return float(getattr(settings, "ARBITER_BROKER_SLOT_TTL", DEFAULT_SLOT_TTL))


def namespace() -> str:
    """Keys are named after the database too: deployments (and test databases) that
    share one Redis do not count each other's requests."""
    return f"arbiter:{connection.settings_dict['NAME']}:broker:in_flight:"


class SharedLimits:
    """`acquire(model)` → a slot id (429 past the limit, all processes together);
    `release(model, slot)` gives it back."""

    def __init__(self, url: str, prefix: str | None = None) -> None:
        # Bounded: a Redis that stops answering must not hold requests up for long.
        self.redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
        )
        self.script = self.redis.register_script(ACQUIRE)
        self.prefix = namespace() if prefix is None else prefix
        self.local = ConcurrencyLimits()  # only while Redis cannot be reached
        self.warned_at = 0.0

    def key(self, model: str) -> str:
        return self.prefix + model

    async def acquire(self, model: str, limit: int | None = None) -> str:
        limit = max_concurrency() if limit is None else limit
        slot = f"{os.getpid()}:{next(_slot_ids)}"
        call = asyncio.ensure_future(
            self.script(keys=[self.key(model)], args=[limit, slot_ttl(), slot])
        )
        try:
            current = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The client left mid-call: a slot the script took anyway is given back, not
            # left to expire.
            call.add_done_callback(lambda done: self._give_back(model, slot, done))
            raise
        except RedisError as exc:
            self._warn(exc)
            self.local.acquire(model, limit)
            return LOCAL
        if int(current) >= 0:
            raise TooManyRequests(
                f"{current} requests for {model} are in flight, the broker's limit is {limit}.",
                code="concurrency_limit",
                retry_after=1,
                limit=limit,
            )
        return slot

    def release(self, model: str, slot: str) -> None:
        """Give the slot back (the ZREM runs off the request's path)."""
        if slot == LOCAL:
            self.local.release(model)
        else:
            spawn(self._release(model, slot))

    def _give_back(self, model: str, slot: str, call: asyncio.Future[int]) -> None:
        if not call.cancelled() and call.exception() is None and int(call.result()) < 0:
            self.release(model, slot)

    async def _release(self, model: str, slot: str) -> None:
        try:
            await self.redis.zrem(self.key(model), slot)
        except RedisError as exc:
            self._warn(exc)  # the slot expires on its own

    async def in_flight(self, model: str) -> int:
        """Unexpired slots of the model, all processes together."""
        key = self.key(model)
        now, micros = await self.redis.time()
        return int(await self.redis.zcount(key, now + micros / 1e6, "+inf"))

    def _warn(self, exc: Exception) -> None:
        if time.monotonic() - self.warned_at >= WARN_EVERY:
            self.warned_at = time.monotonic()
            log.warning(
                "broker: Redis unreachable (%s); the concurrency limit holds per process",
                exc,
            )

    async def aclose(self) -> None:
        await self.redis.aclose()

"""What every broker process must see of the others, through Redis (with REDIS_URL).

One Redis client per event loop (`SharedLimits`, owned by the broker's state) carries:

- the per-model concurrency limit: a sorted set per model (`in_flight:<model>`), a member
  per request, scored with the time its slot expires;
- the requests being forwarded, every model together (`requests`): the same members,
  `<process>:<n> US <service> US <client>`, with the same scores. The eviction planner
  and the idle unloader count a service's requests in flight from it (a service busy in
  another process is never evicted), `/api/status` its clients';
- when each service's last request finished (`finished`, a hash: service → epoch s);
- per-client counters (`clients`, names scored by when last seen; `client:<name>`, a
  hash of requests, errors, bytes_out and `model:<name>` counts).

Per request: taking the slot is one Lua script (drop expired slots, count, add the member
to both sets when under the limit, so two processes can never both take the last slot),
awaited before the request is forwarded; giving it back is one more (remove the member
from both, stamp the service's finish time), sent off the request's path. Client counters
cost no round trip of their own: each process adds them up and sends them at most once
per FLUSH_SECONDS (one script), so `/api/status` in another process lags by that much and
a crash loses at most that much counting. A process that dies holding slots does not leak
them for long: each member expires after ARBITER_BROKER_SLOT_TTL seconds (a request still
running past that stops counting). The scripts read the time from Redis, so the
processes' clocks need not agree.

If Redis cannot be reached the broker keeps serving: the limit bounds this process alone
(the single-process limiter), the planner and `/api/status` use this process's own
figures, and the failure is logged once a minute. Nothing here raises a 5xx.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db import connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from arbiter.broker.background import spawn
from arbiter.broker.errors import TooManyRequests
from arbiter.broker.limits import ActivitySnapshot, ConcurrencyLimits, max_concurrency

log = logging.getLogger(__name__)

DEFAULT_SLOT_TTL = 900.0
REDIS_TIMEOUT = 2.0  # seconds; past it the request is bounded by this process alone
WARN_EVERY = 60.0  # seconds between two warnings that Redis is unreachable
LOCAL = ""  # the slot id of a request counted by the local fallback
FLUSH_SECONDS = 1.0  # client counters are sent at most this often per process
KEEP_SECONDS = 7 * 86400  # a client (or a service's finish time) unseen this long is forgotten
RELEASE_RETRIES = (1.0, 5.0)  # seconds before trying a failed release again
OTHER = "(other)"  # where clients past the cap are counted
SEP = "\x1f"  # between a member's slot id, service and client

# The process's mark on its members (pid alone may repeat across hosts).
OWNER = f"{secrets.token_hex(4)}.{os.getpid()}"

# KEYS[1]: the model's set, KEYS[2]: every request's set; ARGV: limit, slot TTL (s), member.
# Returns -1 when the slot was taken, else how many are in flight (the refusal).
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local current = redis.call('ZCARD', KEYS[1])
if current >= tonumber(ARGV[1]) then
  return current
end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
redis.call('EXPIRE', KEYS[2], math.ceil(ttl) + 1)
return -1
"""

# KEYS[1]: the model's set, KEYS[2]: every request's set, KEYS[3]: finish times;
# ARGV: member, service ('' for none), how long finish times are kept (s).
RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[3], ARGV[2], string.format('%d.%06d', tonumber(t[1]), tonumber(t[2])))
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return 1
"""

# KEYS[1]: the client index, KEYS[2]: the "(other)" hash, KEYS[2 + i]: client i's hash;
# ARGV: cap on names, how long an unseen client is kept (s), the "(other)" name, and a JSON
# list of [name, requests, errors, bytes_out, last_seen, {model: count}] (counts as strings).
FLUSH_CLIENTS = """
local index, cap, keep, other = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', index, '-inf', tonumber(t[1]) - keep)
for i, row in ipairs(cjson.decode(ARGV[4])) do
  local name, key = row[1], KEYS[i + 2]
  local seen = redis.call('ZSCORE', index, name)
  if not seen and name ~= other and redis.call('ZCARD', index) >= cap then
    name, key = other, KEYS[2]
    seen = redis.call('ZSCORE', index, name)
  end
  if not seen or tonumber(seen) < tonumber(row[5]) then
    redis.call('ZADD', index, row[5], name)
  end
  redis.call('HINCRBY', key, 'requests', row[2])
  redis.call('HINCRBY', key, 'errors', row[3])
  redis.call('HINCRBY', key, 'bytes_out', row[4])
  for model, count in pairs(row[6]) do
    redis.call('HINCRBY', key, 'model:' .. model, count)
  end
  redis.call('EXPIRE', key, keep)
end
redis.call('EXPIRE', index, keep)
return 1
"""

_slot_ids = itertools.count()


def slot_ttl() -> float:
    return float(getattr(settings, "ARBITER_BROKER_SLOT_TTL", DEFAULT_SLOT_TTL))


def namespace() -> str:
    """ARBITER_BROKER_REDIS_PREFIX, else named after the database: deployments (and test
    databases) that share one Redis do not count each other's requests."""
    prefix = getattr(settings, "ARBITER_BROKER_REDIS_PREFIX", "")
    return prefix or f"arbiter:{connection.settings_dict['NAME']}:broker:"


@dataclass
class ClientCounts:
    """Counters of one client (a process's increments, or the deployment's totals)."""

    requests: int = 0
    errors: int = 0
    bytes_out: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    last_seen: float = 0.0  # epoch seconds

    def copy(self) -> ClientCounts:
        return ClientCounts(
            self.requests, self.errors, self.bytes_out, dict(self.by_model), self.last_seen
        )

    def add(self, other: ClientCounts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.bytes_out += other.bytes_out
        for model, count in other.by_model.items():
            self.by_model[model] = self.by_model.get(model, 0) + count
        self.last_seen = max(self.last_seen, other.last_seen)


class CountSource(Protocol):
    """Where the client counters come from (`accounting.Accounting`)."""

    max_clients: int

    def take_pending(self) -> dict[str, ClientCounts]: ...

    def restore_pending(self, counts: dict[str, ClientCounts]) -> None: ...


def parse_member(member: str) -> tuple[str, str, str]:
    """(slot id, service, client) of a member of the request sets."""
    slot, service, client = (member.split(SEP, 2) + ["", ""])[:3]
    return slot, service, client


class Warner:
    """Logs that Redis is unreachable, at most once a minute."""

    def __init__(self) -> None:
        self.warned_at = -WARN_EVERY

    def __call__(self, exc: Exception, what: str) -> None:
        if time.monotonic() - self.warned_at >= WARN_EVERY:
            self.warned_at = time.monotonic()
            log.warning("broker: Redis unreachable (%s); %s", exc, what)


class SharedLimits:
    """`acquire(model, ...)` → a slot id (429 past the limit, all processes together);
    `release(model, slot)` gives it back. Also what the other processes have in flight
    (`others_activity`) and the client counters' flush (`flush_soon`)."""

    def __init__(self, url: str, prefix: str | None = None, owner: str = OWNER) -> None:
        # Bounded: a Redis that stops answering must not hold requests up for long.
        self.redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
        )
        self.script = self.redis.register_script(ACQUIRE)
        self.release_script = self.redis.register_script(RELEASE)
        self.flush_script = self.redis.register_script(FLUSH_CLIENTS)
        self.prefix = namespace() if prefix is None else prefix
        self.owner = owner
        self.local = ConcurrencyLimits()  # only while Redis cannot be reached
        self.warn = Warner()
        self._flush: asyncio.TimerHandle | None = None
        self._source: CountSource | None = None

    def key(self, model: str) -> str:
        return self.prefix + "in_flight:" + model

    async def acquire(
        self, model: str, limit: int | None = None, service: str = "", client: str = ""
    ) -> str:
        """Take a slot of `model` for a request to `service` from `client`."""
        limit = max_concurrency() if limit is None else limit
        slot = f"{self.owner}:{next(_slot_ids)}{SEP}{service}{SEP}{client}"
        call = asyncio.ensure_future(
            self.script(
                keys=[self.key(model), self.prefix + "requests"], args=[limit, slot_ttl(), slot]
            )
        )
        try:
            current = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The client left mid-call: a slot the script took anyway is given back, not
            # left to expire.
            call.add_done_callback(lambda done: self._give_back(model, slot, done))
            raise
        except RedisError as exc:
            self.warn(exc, "the concurrency limit holds per process")
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
        """Give the slot back (the script runs off the request's path)."""
        if slot == LOCAL:
            self.local.release(model)
        else:
            spawn(self._release(model, slot))

    def _give_back(self, model: str, slot: str, call: asyncio.Future[int]) -> None:
        if not call.cancelled() and call.exception() is None and int(call.result()) < 0:
            self.release(model, slot)

    async def _release(self, model: str, slot: str) -> None:
        keys = [self.key(model), self.prefix + "requests", self.prefix + "finished"]
        args: list[str | int] = [slot, parse_member(slot)[1], KEEP_SECONDS]
        for delay in (0.0, *RELEASE_RETRIES):
            if delay:
                await asyncio.sleep(delay)
            try:
                await self.release_script(keys=keys, args=args)
                return
            except RedisError as exc:
                # Tried again a little later; else the member expires on its own (and
                # this process's planner counts its own requests from memory anyway).
                self.warn(exc, "a finished request may count as in flight until its slot expires")

    async def in_flight(self, model: str) -> int:
        """Unexpired slots of the model, all processes together."""
        key = self.key(model)
        now, micros = await self.redis.time()
        return int(await self.redis.zcount(key, now + micros / 1e6, "+inf"))

    async def others_activity(self) -> ActivitySnapshot | None:
        """Requests in flight per service in the other processes, and every service's
        last finish (all processes); None when Redis cannot be reached. One round trip."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.zrange(self.prefix + "requests", 0, -1, withscores=True)
                pipe.hgetall(self.prefix + "finished")
                (seconds, micros), members, finished = await pipe.execute()
        except RedisError as exc:
            self.warn(exc, "eviction and idle unload see this process's requests only")
            return None
        in_flight, _ = count_in_flight(members, seconds + micros / 1e6, self.owner)
        return ActivitySnapshot(
            in_flight=in_flight,
            last_finished={k.decode(): float(v) for k, v in finished.items()},
        )

    # -- client counters ---------------------------------------------------------------
    def flush_soon(self, source: CountSource) -> None:
        """Send the source's new counts within FLUSH_SECONDS (one script for them all)."""
        self._source = source
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(FLUSH_SECONDS, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        if self._source is not None:
            spawn(self.flush_clients(self._source))

    async def flush_clients(self, source: CountSource) -> None:
        counts = source.take_pending()
        if not counts:
            return
        names = list(counts)
        rows = [
            [
                name,
                str(c.requests),
                str(c.errors),
                str(c.bytes_out),
                c.last_seen,
                {model: str(n) for model, n in c.by_model.items()},
            ]
            for name, c in ((name, counts[name]) for name in names)
        ]
        keys = [self.prefix + "clients", self.client_key(OTHER)]
        keys += [self.client_key(name) for name in names]
        args: list[str | int] = [source.max_clients, KEEP_SECONDS, OTHER, json.dumps(rows)]
        try:
            await self.flush_script(keys=keys, args=args)
        except RedisConnectionError as exc:
            # Not sent: keep them for the next flush.
            source.restore_pending(counts)
            self.warn(exc, "client counts are kept here until it answers")
        except RedisError as exc:
            # Perhaps applied (a timeout): not sent again, rather than counted twice.
            self.warn(exc, "some client counts may be lost")

    def client_key(self, name: str) -> str:
        return self.prefix + "client:" + name

    async def aclose(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
            if self._source is not None:
                await self.flush_clients(self._source)
        await self.redis.aclose()


def count_in_flight(
    members: list[tuple[bytes, float]], now: float, owner: str
) -> tuple[dict[str, int], dict[str, int]]:
    """({service: n}, {client: n}) of the unexpired members not owned by `owner`."""
    services: dict[str, int] = {}
    clients: dict[str, int] = {}
    mine = owner + ":"
    for raw, expires in members:
        member = raw.decode()
        if expires <= now or member.startswith(mine):
            continue
        _slot, service, client = parse_member(member)
        if service:
            services[service] = services.get(service, 0) + 1
        if client:
            clients[client] = clients.get(client, 0) + 1
    return services, clients


# -- reading the client counters from sync code (/api/status, the dashboard) -------------
_sync_clients: dict[str, redis.Redis] = {}
_sync_lock = threading.Lock()
_read_warn = Warner()


def sync_client(url: str) -> redis.Redis:
    """One thread-safe client per URL for this process's sync readers."""
    with _sync_lock:
        client = _sync_clients.get(url)
        if client is None:
            client = _sync_clients[url] = redis.Redis.from_url(
                url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
            )
        return client


def read_clients(
    url: str, prefix: str | None = None, owner: str = OWNER
) -> tuple[dict[str, ClientCounts], dict[str, int]] | None:
    """Every client's counters, and their requests in flight in the other processes;
    None when Redis cannot be reached. Two round trips."""
    prefix = namespace() if prefix is None else prefix
    client = sync_client(url)
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zrange(prefix + "clients", 0, -1, withscores=True)
            pipe.zrange(prefix + "requests", 0, -1, withscores=True)
            (seconds, micros), names, members = pipe.execute()
        with client.pipeline(transaction=False) as pipe:
            for name, _seen in names:
                pipe.hgetall(prefix + "client:" + name.decode())
            hashes = pipe.execute()
    except RedisError as exc:
        _read_warn(exc, "client counts are this process's own")
        return None
    counts = {}
    for (name, seen), values in zip(names, hashes, strict=True):
        fields = {k.decode(): int(v) for k, v in values.items()}
        counts[name.decode()] = ClientCounts(
            requests=fields.pop("requests", 0),
            errors=fields.pop("errors", 0),
            bytes_out=fields.pop("bytes_out", 0),
            by_model={k.removeprefix("model:"): v for k, v in fields.items()},
            last_seen=float(seen),
        )
    _services, in_flight = count_in_flight(members, seconds + micros / 1e6, owner)
    return counts, in_flight

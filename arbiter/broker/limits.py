"""Bounds: per-model concurrency (429), service activity; the wait queue is `queue`.

All counters live in one process and are touched only from its event loop, so plain
dicts need no lock. With REDIS_URL the per-model limit is shared by every process
instead (`shared_limits`); the wait queue (`queue`) stays per process.

`ServiceActivity` is what eviction decides on: requests in flight per service and when
the last one finished; with REDIS_URL, `current()` adds the other processes' figures.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from django.conf import settings

from arbiter.broker.errors import TooManyRequests

DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_QUEUE_SIZE = 100
DEFAULT_QUEUE_TIMEOUT = 600.0
# What a 503 from a full queue or a timed-out wait suggests: a swap takes a while.
QUEUE_RETRY_AFTER = 10


def max_concurrency() -> int:
    return int(getattr(settings, "ARBITER_BROKER_MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY))


def queue_size() -> int:
    return int(getattr(settings, "ARBITER_BROKER_QUEUE_SIZE", DEFAULT_QUEUE_SIZE))


def queue_timeout() -> float:
    return float(getattr(settings, "ARBITER_BROKER_QUEUE_TIMEOUT", DEFAULT_QUEUE_TIMEOUT))


class ConcurrencyLimits:
    """Requests in flight per model; one past the limit is refused with 429."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}

    def acquire(self, key: str, limit: int | None = None) -> None:
        limit = max_concurrency() if limit is None else limit
        current = self.in_flight.get(key, 0)
        if current >= limit:
            raise TooManyRequests(
                f"{current} requests for {key} are in flight, the broker's limit is {limit}.",
                code="concurrency_limit",
                retry_after=1,
                limit=limit,
            )
        self.in_flight[key] = current + 1

    def release(self, key: str) -> None:
        left = self.in_flight.get(key, 0) - 1
        if left > 0:
            self.in_flight[key] = left
        else:
            self.in_flight.pop(key, None)


@dataclass(frozen=True)
class ActivitySnapshot:
    """Plain copies of `ServiceActivity`, safe to hand to a thread (the planner)."""

    in_flight: dict[str, int] = field(default_factory=dict)
    last_finished: dict[str, float] = field(default_factory=dict)  # epoch seconds

    def plus(self, other: ActivitySnapshot) -> ActivitySnapshot:
        """Both together: requests in flight added up, the later finish of each service."""
        in_flight = dict(self.in_flight)
        for service, count in other.in_flight.items():
            in_flight[service] = in_flight.get(service, 0) + count
        last_finished = dict(self.last_finished)
        for service, when in other.last_finished.items():
            last_finished[service] = max(when, last_finished.get(service, 0.0))
        return ActivitySnapshot(in_flight, last_finished)


class ServiceActivity:
    """Requests in flight per service, and when each one's last request finished.

    Which services are unloaded is not kept here: every process reads it from the
    database (`residency`)."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.last_finished: dict[str, float] = {}
        # With REDIS_URL: the other processes' requests in flight and every process's
        # last finishes (`shared_limits`); None from it when Redis cannot be reached.
        self.others: Callable[[], Awaitable[ActivitySnapshot | None]] | None = None

    def started(self, service: str) -> None:
        self.in_flight[service] = self.in_flight.get(service, 0) + 1

    def finished(self, service: str) -> None:
        self.withdraw(service)
        self.last_finished[service] = time.time()

    def withdraw(self, service: str) -> None:
        """Uncount a request `started` that never reached the service (the limit refused
        it): no finish is recorded, so it does not count as the service's activity."""
        left = self.in_flight.get(service, 0) - 1
        if left > 0:
            self.in_flight[service] = left
        else:
            self.in_flight.pop(service, None)

    def snapshot(self) -> ActivitySnapshot:
        """This process's figures."""
        return ActivitySnapshot(dict(self.in_flight), dict(self.last_finished))

    async def current(self) -> ActivitySnapshot:
        """Every process's figures where they are shared, else this process's."""
        mine = self.snapshot()
        theirs = None if self.others is None else await self.others()
        return mine if theirs is None else mine.plus(theirs)

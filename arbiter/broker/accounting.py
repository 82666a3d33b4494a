"""Per-client accounting: who sends what through the broker, from `X-Client-Id`.

A client names itself with `X-Client-Id` (a short token: letters, digits, `._:-`, at
most 64 characters); without one it is counted under its API key's name. Counts are
kept in this process since it started; with REDIS_URL each process also sends its new
counts to Redis about once a second (`shared_limits`), and `client_usage()` (for
`/api/status` and the dashboard) shows the deployment's totals: Redis's, plus what this
process has not sent yet, with requests in flight in every process. Without Redis, or
while it cannot be reached, it shows this process's counts. Prometheus
`arbiter_broker_client_requests_total` is per process, for history. The number of
distinct clients is capped so a client inventing ids cannot grow memory without bound:
the rest are counted under "(other)".
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

from django.conf import settings

from arbiter.broker.shared_limits import OTHER, ClientCounts, read_clients

MAX_CLIENTS = 1000
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class ClientUsageOut(TypedDict):
    client: str
    requests: int
    errors: int
    in_flight: int
    bytes_out: int
    by_model: dict[str, int]
    last_seen: float  # epoch seconds


@dataclass
class _Usage:
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    bytes_out: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    last_seen: float = 0.0


def client_name(header: str | None, key_name: str) -> str:
    """The accounting name: a valid `X-Client-Id`, else `key:<API key name>`."""
    if header:
        header = header.strip()
        if CLIENT_ID.fullmatch(header):
            return header
        return "(invalid)"
    return f"key:{key_name}"[:80]


class Accounting:
    """Counters per client. Written from the event loop, read from any thread."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self.max_clients = max_clients
        self._usage: dict[str, _Usage] = {}
        self._lock = threading.Lock()
        # With REDIS_URL (set by the broker's state): counts not sent to Redis yet, and
        # what to call when there are some (it schedules the flush).
        self._pending: dict[str, ClientCounts] = {}
        self.on_pending: Callable[[], None] | None = None

    def _get(self, client: str) -> _Usage:
        usage = self._usage.get(client)
        if usage is None:
            if len(self._usage) >= self.max_clients:
                client = OTHER
            usage = self._usage.setdefault(client, _Usage())
        return usage

    def started(self, client: str) -> str:
        """Count a request in; returns the name it is counted under (pass it to finished)."""
        with self._lock:
            if client not in self._usage and len(self._usage) >= self.max_clients:
                client = OTHER
            usage = self._get(client)
            usage.requests += 1
            usage.in_flight += 1
            usage.last_seen = time.time()
            if counts_are_shared():
                pending = self._pending.setdefault(client, ClientCounts())
                pending.requests += 1
                pending.last_seen = usage.last_seen
        if self.on_pending is not None:
            self.on_pending()
        return client

    def finished(self, client: str, status: int, bytes_out: int = 0, model: str = "") -> None:
        """Count a request out; `model` only when the broker resolved it (bounded names)."""
        with self._lock:
            usage = self._get(client)
            usage.in_flight = max(0, usage.in_flight - 1)
            usage.bytes_out += bytes_out
            if status >= 400:
                usage.errors += 1
            if model:
                usage.by_model[model] = usage.by_model.get(model, 0) + 1
            usage.last_seen = time.time()
            if counts_are_shared():
                pending = self._pending.setdefault(client, ClientCounts())
                pending.errors += status >= 400
                pending.bytes_out += bytes_out
                if model:
                    pending.by_model[model] = pending.by_model.get(model, 0) + 1
                pending.last_seen = usage.last_seen
        if self.on_pending is not None:
            self.on_pending()

    def usage(self) -> list[ClientUsageOut]:
        """Every client's counts, busiest first."""
        with self._lock:
            rows = [
                ClientUsageOut(
                    client=name,
                    requests=u.requests,
                    errors=u.errors,
                    in_flight=u.in_flight,
                    bytes_out=u.bytes_out,
                    by_model=dict(u.by_model),
                    last_seen=u.last_seen,
                )
                for name, u in self._usage.items()
            ]
        return sorted(rows, key=lambda row: (-row["requests"], row["client"]))

    def take_pending(self) -> dict[str, ClientCounts]:
        """The counts not sent to Redis yet, now handed to the sender."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def restore_pending(self, counts: dict[str, ClientCounts]) -> None:
        """Counts the sender could not send, kept for its next try."""
        with self._lock:
            for client, extra in counts.items():
                self._pending.setdefault(client, ClientCounts()).add(extra)

    def shared_usage(
        self, shared: dict[str, ClientCounts], others_in_flight: dict[str, int]
    ) -> list[ClientUsageOut]:
        """The deployment's counts: Redis's totals plus what this process has not sent
        yet; in flight, this process's own plus the other processes' (from Redis)."""
        with self._lock:
            totals = {name: counts.copy() for name, counts in shared.items()}
            for name, pending in self._pending.items():
                totals.setdefault(name, ClientCounts()).add(pending)
            in_flight = dict(others_in_flight)
            for name, usage in self._usage.items():
                if usage.in_flight:
                    in_flight[name] = in_flight.get(name, 0) + usage.in_flight
                    totals.setdefault(name, ClientCounts(last_seen=usage.last_seen))
            for name in others_in_flight:
                totals.setdefault(name, ClientCounts())
        rows = [
            ClientUsageOut(
                client=name,
                requests=c.requests,
                errors=c.errors,
                in_flight=in_flight.get(name, 0),
                bytes_out=c.bytes_out,
                by_model=c.by_model,
                last_seen=c.last_seen,
            )
            for name, c in totals.items()
        ]
        return sorted(rows, key=lambda row: (-row["requests"], row["client"]))

    def reset(self) -> None:
        with self._lock:
            self._usage.clear()
            self._pending.clear()


def counts_are_shared() -> bool:
    """Counts are kept for Redis whenever REDIS_URL is set, whether or not this process
    has a broker loop to send them yet (`on_pending` only schedules the sending):
    `client_usage` adds what is not sent to Redis's totals."""
    return bool(getattr(settings, "REDIS_URL", ""))


accounting = Accounting()


def client_usage() -> list[ClientUsageOut]:
    """What `/api/status` and the dashboard show: per-client counts of every process with
    REDIS_URL (this process's while Redis cannot be reached), else of this process."""
    url = getattr(settings, "REDIS_URL", "")
    shared = read_clients(url) if url else None
    if shared is None:
        return accounting.usage()
    return accounting.shared_usage(*shared)

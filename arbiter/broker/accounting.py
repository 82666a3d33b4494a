"""Per-client accounting: who sends what through the broker, from `X-Client-Id`.

A client names itself with `X-Client-Id` (a short token: letters, digits, `._:-`, at
most 64 characters); without one it is counted under its API key's name. Counts are
kept in this process since it started (`client_usage()` for `/api/status` and the
dashboard; Prometheus `arbiter_broker_client_requests_total` for history). The number
of distinct clients is capped so a client inventing ids cannot grow memory without
bound: the rest are counted under "(other)".
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import TypedDict

MAX_CLIENTS = 1000
OTHER = "(other)"
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

    def reset(self) -> None:
        with self._lock:
            self._usage.clear()


accounting = Accounting()


def client_usage() -> list[ClientUsageOut]:
    """What `/api/status` and the dashboard show: per-client counts of this process."""
    return accounting.usage()

"""Prometheus metrics of this process: the broker's traffic, plus cluster state at scrape.

One registry of our own (not prometheus-client's global one, so a re-import in tests
does not register twice). Traffic counters count this process since it started; the
backend health, swap and lock gauges are read from the database when scraped, so every
process reports the same cluster state. Labels carry only names the broker resolved
(served models, services), never raw request input, to bound their number.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from arbiter.models import Service, Swap
from coordination.locks.gate import current_lock

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "arbiter_broker_requests",
    "Requests the broker answered, by route, model and status.",
    ["route", "model", "status"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "arbiter_broker_request_duration_seconds",
    "Time from a request's arrival to the end of its answer (streams included).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
FIRST_BYTE = Histogram(
    "arbiter_broker_upstream_headers_seconds",
    "Time from sending a request upstream to the backend's response headers.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "arbiter_broker_in_flight_requests",
    "Requests being answered by a backend now, by model.",
    ["model"],
    registry=REGISTRY,
)
FAILOVERS = Counter(
    "arbiter_broker_failovers",
    "Requests retried on another replica after the first failed before answering, by "
    "model and the service that failed.",
    ["model", "service"],
    registry=REGISTRY,
)
WAITING = Gauge(
    "arbiter_broker_waiting_requests",
    "Requests waiting for a swap (a load, or their backend being swapped).",
    registry=REGISTRY,
)
LOADS = Counter(
    "arbiter_broker_loads",
    "On-demand loads, by outcome (complete, failed, locked, busy, error).",
    ["outcome"],
    registry=REGISTRY,
)
UNLOADS = Counter(
    "arbiter_broker_unloads",
    "Services the broker unloaded through their unload_route, by reason (eviction, idle).",
    ["reason"],
    registry=REGISTRY,
)
RELOADS = Counter(
    "arbiter_broker_reloads",
    "Unloaded services reloaded through their load_route, by outcome (complete, failed).",
    ["outcome"],
    registry=REGISTRY,
)
CLIENT_REQUESTS = Counter(
    "arbiter_broker_client_requests",
    "Requests per client (X-Client-Id, else the API key's name).",
    ["client"],
    registry=REGISTRY,
)


class ClusterCollector(Collector):
    """Backend health, swaps and the swap lock, read from the database at scrape time."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "arbiter_backend_up",
            "1 when the service's last health probe succeeded, 0 when it failed.",
            labels=["service", "host"],
        )
        since = GaugeMetricFamily(
            "arbiter_backend_health_since_seconds",
            "Unix time the service entered its current health.",
            labels=["service", "host", "health"],
        )
        services = Service.objects.filter(in_inventory=True, disabled=False).values_list(
            "name", "host__name", "health", "health_since"
        )
        for name, host, health, health_since in services:
            if health in ("up", "down"):
                up.add_metric([name, host], 1.0 if health == "up" else 0.0)
            if health_since is not None:
                since.add_metric([name, host, health], health_since.timestamp())
        yield up
        yield since

        swaps = GaugeMetricFamily(
            "arbiter_swaps", "Swaps in the database, by state.", labels=["state"]
        )
        counts = dict(Swap.objects.values_list("state").annotate(n=Count("pk")))
        for state in (*Swap.PHASES, Swap.FAILED, Swap.CANCELLED):
            swaps.add_metric([state], float(counts.get(state, 0)))
        yield swaps

        lock = current_lock()
        yield GaugeMetricFamily(
            "arbiter_swap_lock_held", "1 while someone holds the swap lock.", value=float(lock.held)
        )
        yield GaugeMetricFamily(
            "arbiter_swap_lock_generation",
            "The lock's fencing generation (bumped on every grant and force release).",
            value=float(lock.generation),
        )
        seconds_left = 0.0
        if lock.held and lock.expires_at is not None:
            seconds_left = max(0.0, (lock.expires_at - timezone.now()).total_seconds())
        yield GaugeMetricFamily(
            "arbiter_swap_lock_seconds_left",
            "Seconds until the held swap lock expires (0 when free).",
            value=seconds_left,
        )
        holder = GaugeMetricFamily(
            "arbiter_swap_lock_holder", "The lock's holder while held.", labels=["holder"]
        )
        if lock.held:
            holder.add_metric([lock.holder or ""], 1.0)
        yield holder


REGISTRY.register(ClusterCollector())


def render() -> bytes:
    """The text exposition (synchronous: the cluster collector reads the database)."""
    return generate_latest(REGISTRY)


def count_client(client: str) -> None:
    CLIENT_REQUESTS.labels(client).inc()

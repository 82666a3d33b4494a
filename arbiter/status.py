"""The full current picture of the cluster, read from the database.

One builder serves `GET /api/status`, the dashboard page and its live fragments, so
all three always agree.
"""

from datetime import datetime, timedelta
from typing import TypedDict

from django.db.models import Max
from django.utils import timezone

from arbiter.models import GpuSample, Host, Service, Swap

HISTORY_WINDOW = timedelta(minutes=5)


class GpuHistory(TypedDict):
    utilization_pct: list[float | None]
    memory_pct: list[float | None]


class GpuStatus(TypedDict):
    index: int
    name: str
    uuid: str
    utilization_pct: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None
    temperature_c: float | None
    power_w: float | None
    unified_memory: bool
    taken_at: datetime


class HostStatus(TypedDict):
    name: str
    address: str
    sampling: str
    simulated: bool
    state: str
    last_sample_at: datetime | None
    missed_samples: int
    last_error: str
    mem_total_mib: int | None
    mem_available_mib: int | None
    gpus: list[GpuStatus]


class ServiceStatus(TypedDict):
    name: str
    host: str
    kind: str
    base_url: str
    capabilities: list[str]
    health: str
    health_since: datetime | None
    last_probe_at: datetime | None
    last_latency_ms: float | None
    loaded_model: str
    unloaded_at: datetime | None
    disabled: bool


def latest_gpu_samples(host: Host) -> list[GpuStatus]:
    """The GPUs of the host's most recent tick (all GPUs of one tick share its time)."""
    newest = host.gpu_samples.aggregate(newest=Max("taken_at"))["newest"]
    if newest is None:
        return []
    samples = GpuSample.objects.filter(host=host, taken_at=newest).order_by("index")
    return [
        GpuStatus(
            index=s.index,
            name=s.name,
            uuid=s.uuid,
            utilization_pct=s.utilization_pct,
            memory_used_mib=s.memory_used_mib,
            memory_total_mib=s.memory_total_mib,
            temperature_c=s.temperature_c,
            power_w=s.power_w,
            unified_memory=s.unified_memory,
            taken_at=s.taken_at,
        )
        for s in samples
    ]


def gpu_history(host: Host, window: timedelta = HISTORY_WINDOW) -> dict[int, GpuHistory]:
    """Per GPU, utilisation and memory use (percent) over the window, oldest first."""
    history: dict[int, GpuHistory] = {}
    rows = (
        GpuSample.objects.filter(host=host, taken_at__gte=timezone.now() - window)
        .order_by("taken_at")
        .values_list("index", "utilization_pct", "memory_used_mib", "memory_total_mib")
    )
    for index, util, used, total in rows:
        series = history.setdefault(index, GpuHistory(utilization_pct=[], memory_pct=[]))
        series["utilization_pct"].append(util)
        series["memory_pct"].append(100.0 * used / total if used is not None and total else None)
    return history


def host_status(host: Host) -> HostStatus:
    return HostStatus(
        name=host.name,
        address=host.address,
        sampling=host.sampling,
        simulated=host.simulated,
        state=host.state,
        last_sample_at=host.last_sample_at,
        missed_samples=host.missed_samples,
        last_error=host.last_error,
        mem_total_mib=host.mem_total_mib,
        mem_available_mib=host.mem_available_mib,
        gpus=latest_gpu_samples(host),
    )


def service_status(service: Service) -> ServiceStatus:
    return ServiceStatus(
        name=service.name,
        host=service.host.name,
        kind=service.kind,
        base_url=service.base_url,
        capabilities=list(service.capabilities),
        health=service.health if not service.disabled else "disabled",
        health_since=service.health_since,
        last_probe_at=service.last_probe_at,
        last_latency_ms=service.last_latency_ms,
        loaded_model=service.loaded_model,
        unloaded_at=service.unloaded_at,
        disabled=service.disabled,
    )


class SwapSummary(TypedDict):
    id: int
    model: str
    host: str
    state: str
    dry_run: bool
    created_at: datetime
    url: str


def active_swaps() -> list[SwapSummary]:
    """Swaps in flight (at most one per host)."""
    swaps = Swap.objects.filter(state__in=Swap.ACTIVE_STATES).select_related("host")
    return [
        SwapSummary(
            id=swap.pk,
            model=swap.model_key,
            host=swap.host.name,
            state=swap.state,
            dry_run=swap.dry_run,
            created_at=swap.created_at,
            url=f"/api/swap/{swap.pk}",
        )
        for swap in swaps.order_by("created_at")
    ]


def cluster_status() -> dict:
    hosts = Host.objects.filter(in_inventory=True)
    services = Service.objects.filter(in_inventory=True).select_related("host")
    from arbiter.broker.accounting import client_usage
    from coordination.locks import current_lock  # coordination builds on the core

    return {
        "hosts": [host_status(h) for h in hosts],
        "services": [service_status(s) for s in services if not s.disabled],
        "swaps": active_swaps(),
        "lock": current_lock(),
        # Broker traffic per client (X-Client-Id), counted by this process since start.
        "clients": client_usage(),
    }

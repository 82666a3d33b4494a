"""The full current picture of the cluster, read from the database.

One builder serves `GET /api/status`, the dashboard page and its live fragments, so
all three always agree.
"""

from datetime import datetime
from typing import Any, TypedDict

from django.db.models import Max

from arbiter.broker.accounting import client_usage
from arbiter.broker.quotas import key_quotas
from arbiter.engine.leader import current_leader
from arbiter.engine.swaps.multi_node import running_pair_on
from arbiter.models import GpuSample, Host, Service, Swap, SwapDict
from coordination.leases import held_leases
from coordination.locks.gate import current_lock


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


class PairStatus(TypedDict):
    """A multi-node model a host serves in, with the other hosts of its pair."""

    service: str  # the head host's service: where requests go
    model: str
    served_name: str
    hosts: list[str]  # rank order: the head first
    role: str  # "head" or "worker"
    swap_id: int


class HostStatus(TypedDict):
    name: str
    address: str
    cluster_address: str
    cluster_interface: str
    sampling: str
    simulated: bool
    state: str
    last_sample_at: datetime | None
    missed_samples: int
    last_error: str
    driver_error: str
    mem_total_mib: int | None
    mem_available_mib: int | None
    gpus: list[GpuStatus]
    # The multi-node model whose ranks run on this host's GPUs (None: none).
    pair: PairStatus | None
    # GPU memory a stop did not return, with the processes holding it (held_memory).
    memory_not_returned: dict[str, Any] | None
    # Containers labelled as Arbiter's that nothing accounts for (engine.orphans).
    orphans: list[dict[str, Any]]
    orphans_checked_at: datetime | None


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
    # The restart policy gave up on its model (why, and when); "" / None otherwise.
    failed_reason: str
    failed_at: datetime | None
    # Every host the served model runs on: [host], or a multi-node model's pair.
    hosts: list[str]


def latest_gpu_samples(host: Host) -> list[GpuStatus]:
    """The GPUs of the host's most recent tick (all GPUs of one tick share its time)."""
    newest = host.gpu_samples.aggregate(newest=Max("taken_at"))["newest"]
    if newest is None:
        return []
    samples = GpuSample.objects.filter(host=host, taken_at=newest).order_by("index")
    return [gpu_status(s) for s in samples]


def gpu_status(sample: GpuSample) -> GpuStatus:
    return GpuStatus(
        index=sample.index,
        name=sample.name,
        uuid=sample.uuid,
        utilization_pct=sample.utilization_pct,
        memory_used_mib=sample.memory_used_mib,
        memory_total_mib=sample.memory_total_mib,
        temperature_c=sample.temperature_c,
        power_w=sample.power_w,
        unified_memory=sample.unified_memory,
        taken_at=sample.taken_at,
    )


def host_status(host: Host, gpus: list[GpuStatus] | None = None) -> HostStatus:
    """One host; while its driver fails (`driver_error`) it has no GPU readings to show,
    not the last ones from before the fault. `gpus`: its latest tick, when the caller
    has it at hand (the sampler, which just wrote it)."""
    return HostStatus(
        name=host.name,
        address=host.address,
        cluster_address=host.cluster_address,
        cluster_interface=host.cluster_interface,
        sampling=host.sampling,
        simulated=host.simulated,
        state=host.state,
        last_sample_at=host.last_sample_at,
        missed_samples=host.missed_samples,
        last_error=host.last_error,
        driver_error=host.driver_error,
        mem_total_mib=host.mem_total_mib,
        mem_available_mib=host.mem_available_mib,
        gpus=[] if host.driver_error else gpus if gpus is not None else latest_gpu_samples(host),
        pair=pair_status(host),
        memory_not_returned=host.memory_not_returned,
        orphans=list(host.orphan_containers or []),
        orphans_checked_at=host.orphans_checked_at,
    )


def pair_status(host: Host) -> PairStatus | None:
    pair = running_pair_on(host)
    if pair is None:
        return None
    return PairStatus(
        service=pair.service_name,
        model=pair.model_key,
        served_name=pair.served_name,
        hosts=list(pair.hosts),
        role="head" if pair.hosts[0] == host.name else "worker",
        swap_id=pair.swap_id,
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
        failed_reason=service.failed_reason,
        failed_at=service.failed_at,
        hosts=service_hosts(service),
    )


def service_hosts(service: Service) -> list[str]:
    pair = running_pair_on(service.host)
    if pair is not None and pair.service_name == service.name:
        return list(pair.hosts)
    return [service.host.name]


def active_swaps() -> list[SwapDict]:
    """Swaps in flight (at most one per host); `GET /api/status` shows a few of its fields."""
    swaps = Swap.objects.in_flight().for_display().order_by("created_at")
    return [swap.as_dict() for swap in swaps]


def cluster_status() -> dict:
    hosts = Host.objects.in_inventory()
    services = Service.objects.in_inventory().select_related("host")

    return {
        "hosts": [host_status(h) for h in hosts],
        "services": [service_status(s) for s in services if not s.disabled],
        "swaps": active_swaps(),
        "lock": current_lock(),
        # Held leases (coordination.leases), soonest to expire first; never a token.
        "leases": held_leases(),
        # The serve process running the engine loops ("HOST:PID"; null: none right now).
        "engine": {"leader": current_leader()},
        # Broker traffic per client (X-Client-Id): every process's with REDIS_URL, else
        # this process's since start (arbiter.broker.accounting).
        "clients": client_usage(),
        # Keys with quotas and what they used of them (shared by every broker process).
        "key_quotas": [quota.as_dict() for quota in key_quotas()],
    }

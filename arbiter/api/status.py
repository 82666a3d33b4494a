"""Read-only API routes over the cluster: status and endpoints."""

from datetime import datetime

from django.http import HttpRequest
from ninja import Field, Router, Schema

from arbiter.api.snapshot import cluster_status
from arbiter.models import Service
from coordination.leases.schemas import LeaseOut
from coordination.locks.schemas import LockStateOut

router = Router(tags=["status"])


class GpuOut(Schema):
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


class PairOut(Schema):
    service: str = Field(..., description="The head host's service, where requests go")
    model: str
    served_name: str
    hosts: list[str] = Field(..., description="Every host of the pair, the head first")
    role: str = Field(..., description="head or worker: this host's part")
    swap_id: int


class HeldProcessOut(Schema):
    pid: int
    process_name: str
    used_mib: float | None = Field(..., description="null where the GPU does not say (GB10)")
    gpu_uuid: str


class HeldMemoryOut(Schema):
    since: datetime
    container: str = Field(..., description="What Arbiter had stopped")
    detail: str
    processes: list[HeldProcessOut]


class OrphanOut(Schema):
    name: str
    id: str = Field(..., description="docker's short id (12 hex digits)")
    image: str
    state: str = Field(..., description="docker's state: running, exited, created, ...")
    status: str = Field(..., description='docker\'s words, e.g. "Exited (137) 5 minutes ago"')
    created: str = Field(..., description="When docker created it (ISO 8601)")
    model: str = Field("", description="The arbiter.model label, if any")


class HostOut(Schema):
    name: str
    address: str
    cluster_address: str = Field(
        ..., description="The host's address on the multi-node interconnect; empty: none"
    )
    cluster_interface: str
    sampling: str
    simulated: bool
    state: str = Field(
        ...,
        description="live, stale, offline, unknown, or driver_error: SSH answers but "
        "nvidia-smi fails (its message in driver_error; no GPU readings meanwhile)",
    )
    last_sample_at: datetime | None
    missed_samples: int
    last_error: str
    driver_error: str = Field(
        ...,
        description="nvidia-smi's own message while it fails on a reachable host, else empty",
    )
    mem_total_mib: int | None
    mem_available_mib: int | None
    gpus: list[GpuOut]
    pair: PairOut | None = Field(
        None, description="The multi-node model whose ranks run on this host's GPUs"
    )
    memory_not_returned: HeldMemoryOut | None = Field(
        None,
        description="GPU memory still held after Arbiter stopped a container (the memory "
        "wait timed out), with the processes nvidia-smi lists; null once it came back",
    )
    orphans: list[OrphanOut] = Field(
        default_factory=list,
        description="Containers labelled arbiter.managed that no service or swap accounts for",
    )
    orphans_checked_at: datetime | None = None


class ServiceOut(Schema):
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
    unloaded_at: datetime | None = Field(
        None, description="Set while the broker has unloaded the service to free memory"
    )
    disabled: bool
    failed_reason: str = Field(
        "", description="Why the restart policy gave up on the service's model ('' if it did not)"
    )
    failed_at: datetime | None = Field(None, description="When the restart policy gave up")
    hosts: list[str] = Field(
        ..., description="Every host the served model runs on (a multi-node pair: all of them)"
    )


class SwapSummaryOut(Schema):
    id: int
    model: str
    host: str
    hosts: list[str] = Field(..., description="Every host the swap works on, the head first")
    state: str
    kind: str = Field(..., description="swap, or restart (the restart policy)")
    dry_run: bool
    created_at: datetime
    url: str


class ClientUsageOut(Schema):
    client: str
    requests: int
    errors: int
    in_flight: int
    bytes_out: int
    by_model: dict[str, int]
    last_seen: float  # epoch seconds


class EngineOut(Schema):
    leader: str | None  # "HOST:PID" of the serve process running the engine loops


class KeyQuotaOut(Schema):
    key_id: int
    name: str
    requests_per_minute: int | None
    tokens_per_day: int | None
    requests_this_minute: int
    tokens_today: int  # UTC day


class StatusOut(Schema):
    hosts: list[HostOut]
    services: list[ServiceOut]
    swaps: list[SwapSummaryOut]  # swaps in flight
    lock: LockStateOut
    leases: list[LeaseOut]  # held leases, soonest to expire first (never a token)
    engine: EngineOut
    clients: list[ClientUsageOut]  # broker traffic per X-Client-Id
    key_quotas: list[KeyQuotaOut]  # keys with quotas: this minute's requests, today's tokens


class EndpointOut(Schema):
    name: str
    host: str
    kind: str
    base_url: str
    health_path: str
    capabilities: list[str]
    request_paths: list[str]
    disabled: bool


@router.get("/status", response=StatusOut, summary="The full current picture of the cluster")
def get_status(request: HttpRequest):
    return cluster_status()


@router.get("/endpoints", response=list[EndpointOut], summary="Services, disabled ones flagged")
def list_endpoints(request: HttpRequest):
    services = Service.objects.in_inventory().select_related("host")
    return [
        EndpointOut(
            name=s.name,
            host=s.host.name,
            kind=s.kind,
            base_url=s.base_url,
            health_path=s.health_path,
            capabilities=s.capabilities,
            request_paths=s.request_paths,
            disabled=s.disabled,
        )
        for s in services
    ]

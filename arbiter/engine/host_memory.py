"""What a host's memory lets a vLLM launch ask for, and where vLLM's sleep mode is safe.

**gpu_memory_utilization.** vLLM sizes its whole claim (weights, activations, KV cache)
as `gpu_memory_utilization × total memory of the device` and refuses to start when the
device has less free ("Free memory on device cuda:0 (76.72/121.63 GiB) on startup is
less than desired GPU memory utilization (0.85, 103.38 GiB)": vllm/v1/worker/utils.py,
`request_memory`). On a discrete GPU the device is the card, and vLLM's own default 0.9
(EngineArgs.gpu_memory_utilization) is what we ask for. On a unified-memory GB10 (DGX
Spark) "the device" is the whole pool the OS, the page cache and every other process
share: the total is MemTotal (121.7 GiB on a Spark), so a fixed 0.9 asks for ~110 GiB,
often more than MemAvailable. NVIDIA's Spark playbook warns of memory issues "even when
within the memory capacity" on its UMA (NVIDIA/dgx-spark-playbooks nvidia/vllm/README.md,
Troubleshooting), vLLM's start-up profiling overshoots the fraction there
(vllm-project/vllm#46307: 0.70 of 119 GiB drove MemAvailable to ~7 GiB), and Spark
recipes run 0.8-0.85 (eugr/spark-vllm-docker; the MiaAI-Lab recipes: 0.85 leaves
headroom for "weights, KV cache, CUDA workspace, NCCL and the OS/page cache").

So a catalog model with no `gpu_memory_utilization` gets, on a unified-memory host,
    (MemAvailable + what the swap frees − margin) / MemTotal, at most 0.9,
where the margin is the host's `vram_margin_mib`, else 16 GiB (what an 0.85 recipe
leaves on a fresh Spark: 121.7 × 0.15 ≈ 18 GiB of pool, ~2 GiB of it the OS), and on a
discrete GPU 0.9. An explicit value is kept. The swap frees the memory of the vLLM
service it replaces: what its running container was launched with (the last completed
swap's `--gpu-memory-utilization` × MemTotal), else the catalog estimate of the model it
serves, else its `vram_resident_mib`.

**Sleep mode.** Level 1 (`POST /sleep`, vLLM's default) offloads the weights to CPU RAM
and discards the KV cache; level 2 discards both (docs.vllm.ai, "Sleep Mode";
vllm/entrypoints/serve/sleep/api_router.py reads `?level=`, default "1"). On unified
memory CPU RAM is the same pool, so a level-1 sleeper keeps holding its weights there,
and waking it is known to crash the engine or the whole host on GB10
(vllm-project/vllm#50011: "sleep level 1 works, wake kills the engine"; a wake-up that
thrashed a Spark until a power cycle) and elsewhere (vllm-project/vllm#36753: POST
/wake_up → 500 and a dead process). A model that sleeps (`--enable-sleep-mode` or an
idle TTL) is therefore refused on unified-memory hosts unless it opts in with
`sleep_on_unified_memory`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from django.db.models import OuterRef, Subquery

from arbiter.models import GpuSample, Host, Service, Swap
from catalog.models import CatalogModel

# vLLM's own default (EngineArgs.gpu_memory_utilization): asked for on discrete GPUs, and
# never exceeded by a derived value.
VLLM_DEFAULT_UTILIZATION = 0.9
DEFAULT_UNIFIED_MARGIN_MIB = 16 * 1024
MIN_UTILIZATION = 0.01  # vLLM refuses 0; a derived value this low fails its check anyway
SLEEP_MODE_FLAG = "--enable-sleep-mode"
UTILIZATION_FLAG = "--gpu-memory-utilization="


def unified_host_ids(host_ids: Iterable[int]) -> set[int]:
    """Those of `host_ids` whose latest GPU sample reports unified memory (nvidia-smi
    [N/A]); one query, an indexed lookup per host (the routing table reads it every TTL)."""
    latest = GpuSample.objects.filter(host=OuterRef("pk"), index=0).order_by("-taken_at")
    hosts = Host.objects.filter(pk__in=set(host_ids)).annotate(
        unified=Subquery(latest.values("unified_memory")[:1])
    )
    return set(hosts.filter(unified=True).values_list("pk", flat=True))


def latest_unified(host_id: int) -> bool:
    """Whether the host's latest sample reports unified memory (False before any sample)."""
    latest = (
        GpuSample.objects.filter(host_id=host_id, index=0)  # the (host, index, -taken_at) index
        .order_by("-taken_at")
        .values_list("unified_memory", flat=True)
        .first()
    )
    return bool(latest)


def sleep_level(kind: str, unload_route: str) -> int | None:
    """The vLLM sleep level an unload route asks for; None when it is not vLLM's /sleep."""
    if kind != Service.KIND_VLLM or not unload_route:
        return None
    parts = urlsplit(unload_route)
    if parts.path.rstrip("/") != "/sleep":
        return None
    level = parse_qs(parts.query).get("level", ["1"])[-1]
    return int(level) if level.isdigit() else 1


def model_sleeps(model: CatalogModel) -> bool:
    """The model is run so that it can be put to sleep (engine flag or an idle TTL)."""
    return SLEEP_MODE_FLAG in (model.extra_engine_flags or []) or bool(model.idle_unload_seconds)


def sleep_refusal(model: CatalogModel, unified: bool) -> str:
    """Why this model may not sleep on this host ("" when it may)."""
    if not unified or not model_sleeps(model) or model.sleep_on_unified_memory:
        return ""
    why = (
        f"{SLEEP_MODE_FLAG} in extra_engine_flags"
        if SLEEP_MODE_FLAG in (model.extra_engine_flags or [])
        else f"idle_unload_seconds {model.idle_unload_seconds}"
    )
    return (
        f"{model.key} sleeps ({why}) on a unified-memory host, where vLLM's level-1 sleep "
        "keeps the weights in the same pool and wake-ups are known to crash "
        "(vllm-project/vllm#50011); remove it, or set sleep_on_unified_memory: true to "
        "accept the risk"
    )


@dataclass(frozen=True)
class MemoryRequest:
    """The `--gpu-memory-utilization` a launch asks for, and what backs it up."""

    utilization: float
    source: str  # "catalog" (explicit), "derived" (unified memory) or "default" (vLLM's)
    unified: bool
    total_mib: int | None  # what the fraction multiplies: MemTotal, or one GPU's memory
    available_mib: int | None = None  # MemAvailable now + freed (unified only)
    freed_mib: int = 0
    margin_mib: int = 0
    estimated_vram_mib: int = 0

    @property
    def requested_mib(self) -> float | None:
        return None if self.total_mib is None else self.utilization * self.total_mib

    def verdict(self) -> tuple[bool, str]:
        """(ok, detail) of the pre-flight `memory` check."""
        gib = 1024.0
        origin = {
            "catalog": "set in the catalog",
            "derived": f"derived from MemAvailable − {self.margin_mib / gib:.1f} GiB margin",
            "default": "vLLM's default",
        }[self.source]
        if self.requested_mib is None or self.total_mib is None:
            return True, f"requests {self.utilization:g} ({origin}); memory not measured yet"
        ask = (
            f"requests {self.utilization:g} × {self.total_mib / gib:.1f} GiB = "
            f"{self.requested_mib / gib:.1f} GiB ({origin})"
        )
        if not self.unified or self.available_mib is None:
            scope = "per GPU" if not self.unified else "of unified memory"
            return True, f"{ask} {scope}"
        freed = (
            f", {self.freed_mib / gib:.1f} GiB of it freed by this swap" if self.freed_mib else ""
        )
        have = f"{self.available_mib / gib:.1f} GiB available{freed}"
        if self.requested_mib > self.available_mib:
            return False, (
                f"{ask}; only {have}: vLLM would refuse to start. Free memory on the host or "
                "set a lower gpu_memory_utilization"
            )
        if self.source == "derived" and self.requested_mib < self.estimated_vram_mib:
            return False, (
                f"{ask}; {have}, less than the model's estimated {self.estimated_vram_mib} MiB"
            )
        return True, f"{ask}; {have}"


def _launched_utilization(service: Service) -> float | None:
    """The `--gpu-memory-utilization` the service's running container was started with."""
    swap = (
        Swap.objects.filter(service=service, state=Swap.COMPLETE, dry_run=False)
        .order_by("-finished_at")
        .only("launch_argv")
        .first()
    )
    for arg in (swap.launch_argv if swap else None) or []:
        if isinstance(arg, str) and arg.startswith(UTILIZATION_FLAG):
            try:
                return float(arg[len(UTILIZATION_FLAG) :])
            except ValueError:
                return None
    return None


def claimed_mib(service: Service, total_mib: int | None) -> int | None:
    """What a vLLM service's running container claimed of `total_mib`, if Arbiter
    launched it (`--gpu-memory-utilization` × total: weights plus KV cache)."""
    if total_mib is None or service.kind != Service.KIND_VLLM:
        return None
    launched = _launched_utilization(service)
    return None if launched is None else int(launched * total_mib)


def freed_by_swap(service: Service | None, total_mib: int) -> int:
    """MiB the swap gives back by stopping `service`'s model (0 when nothing runs)."""
    if service is None or service.health == "down" or not service.loaded_model:
        return 0
    estimate = (
        CatalogModel.objects.filter(served_name=service.loaded_model)
        .values_list("estimated_vram_mib", flat=True)
        .first()
    )
    if service.unloaded_at is not None:  # asleep: only its weights are left in the pool
        return estimate or service.vram_resident_mib
    launched = _launched_utilization(service)
    if launched is not None:
        return int(launched * total_mib)
    return estimate or service.vram_resident_mib


def memory_request(model: CatalogModel, host: Host, service: Service | None) -> MemoryRequest:
    """What the launch of `model` on `host` (replacing `service`'s model) asks for."""
    unified = latest_unified(host.pk)
    estimate = model.estimated_vram_mib
    if unified:
        total = host.mem_total_mib
        available = host.mem_available_mib
        margin = host.vram_margin_mib or DEFAULT_UNIFIED_MARGIN_MIB
        if total is None or available is None:
            value = model.gpu_memory_utilization or VLLM_DEFAULT_UTILIZATION
            source = "catalog" if model.gpu_memory_utilization else "default"
            return MemoryRequest(value, source, True, total, None, 0, margin, estimate)
        freed = freed_by_swap(service, total)
        backed = available + freed
        if model.gpu_memory_utilization:
            return MemoryRequest(
                model.gpu_memory_utilization,
                "catalog",
                True,
                total,
                backed,
                freed,
                margin,
                estimate,
            )
        # Two decimals, rounded down: never ask for more than the measurement allows.
        derived = math.floor(max(0.0, backed - margin) / total * 100) / 100
        value = max(MIN_UTILIZATION, min(VLLM_DEFAULT_UTILIZATION, derived))
        return MemoryRequest(value, "derived", True, total, backed, freed, margin, estimate)
    latest = GpuSample.objects.filter(host=host).order_by("-taken_at").first()
    total_gpu = int(latest.memory_total_mib) if latest and latest.memory_total_mib else None
    if model.gpu_memory_utilization:
        return MemoryRequest(model.gpu_memory_utilization, "catalog", False, total_gpu)
    return MemoryRequest(VLLM_DEFAULT_UTILIZATION, "default", False, total_gpu)

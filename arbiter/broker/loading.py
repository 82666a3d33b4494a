"""On-demand loading: a request for a catalog model loaded nowhere starts ONE swap.

Concurrent requests for the same model await the same future (in this process); across
processes, the model's catalog row is locked while the swap is created, so a second
process finds the first one's swap and follows it (`start_swap`), and the database's
one-active-swap-per-host constraint still guards the host. The broker
swaps with `requested_by="broker"` and no lock token, so while someone else holds the
lock `create_swap` raises Locked and nothing starts; the lock is also checked before
anything is evicted.

One load:
1. plan (`plan_load`, in a thread): the lock, the host (the catalog's default host,
   else the best fitting host with an enabled vLLM service), and what must be evicted
   (`planner.plan_eviction`). A host already swapping is waited for; a swap already
   loading this model is joined.
2. evict: call each chosen service's `unload_route` (`residency`). The service the swap
   reloads needs nothing: the swap stops its container and waits for the memory itself.
   On hosts that measure their free memory, wait until the room is really there.
3. `create_swap(...)`, then wait for the swap to end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from arbiter import audit
from arbiter.broker import metrics
from arbiter.broker.background import spawn
from arbiter.broker.errors import (
    Busy,
    DoesNotFit,
    LoadFailed,
    LockHeld,
    ModelNotLoadable,
    from_arbiter_error,
)
from arbiter.broker.limits import ActivitySnapshot
from arbiter.broker.planner import EvictionPlan, HostMemory, Incoming, Resident, choose_host
from arbiter.broker.planner import plan_eviction as plan_host
from arbiter.broker.swapwait import SwapEnd, SwapWatcher
from arbiter.broker.table import json_bytes
from arbiter.engine.host_memory import claimed_mib, latest_unified, sleep_level
from arbiter.engine.swaps.multi_node import is_multi_node, pair_host_rows, running_pair_on
from arbiter.engine.swaps.store import active_swap_on, create_swap
from arbiter.errors import ArbiterError, Conflict
from arbiter.models import GpuSample, Host, Service, Swap
from catalog.models import CatalogModel
from coordination.leases.gate import blocking_lease_among
from coordination.leases.serving import served_keys
from coordination.leases.values import leased_error
from coordination.locks.gate import assert_may_change_gpu
from coordination.models import Lease

if TYPE_CHECKING:  # residency imports this module's lock gate
    from arbiter.broker.residency import Residency

log = logging.getLogger(__name__)

BLOCKED_RETRY_SECONDS = 1.0  # how often a load waiting for busy services re-plans
REQUESTED_BY = "broker"
# A swap of the model that completed this recently is taken as the load being asked
# for: longer than a probe tick and a route table's life, shorter than any real reuse.
JUST_LOADED_SECONDS = 30.0


@dataclass(frozen=True)
class Eviction:
    """A service to unload before the swap, and where to ask it."""

    service: str
    url: str
    method: str = "POST"
    body: bytes | None = None


@dataclass(frozen=True)
class LoadStep:
    """What a load does next: go (evict, then swap), join a swap, wait, or retry later."""

    action: str  # "go" | "join" | "wait" | "blocked"
    host: str = ""
    swap_id: int | None = None
    evict: tuple[Eviction, ...] = ()
    plan: EvictionPlan | None = None
    measured: bool = False


# -- planning (synchronous ORM, run in a thread) ----------------------------------------
def assert_lock_free() -> None:
    """Raise Locked (423) when another party holds the swap lock; the broker has no token.

    Loads, reloads, evictions and idle unloads all pass this one gate.
    """
    assert_may_change_gpu(None)


def service_lease(service: Service, incoming_key: str = "") -> Lease | None:
    """The lease that keeps the service's model where it is (the broker has no lease
    token), or None; a load of the leased model itself (`incoming_key`) replaces
    nothing."""
    return blocking_lease_among(served_keys(service) - {incoming_key}, service.host.name)


def service_leased(name: str) -> bool:
    """Is the named service's model leased? Evictions and idle unloads skip it."""
    service = Service.objects.select_related("host").filter(name=name).first()
    return service is not None and service_lease(service) is not None


def _measured_free(host: Host) -> int | None:
    """MemAvailable on unified-memory hosts (GB10), from the sampler's latest tick."""
    latest = GpuSample.objects.filter(host=host).order_by("-taken_at").first()
    if latest is None or not latest.unified_memory or host.state != "live":
        return None
    return host.mem_available_mib


def residents_of(
    host: Host,
    target: Service,
    activity: ActivitySnapshot,
    unified: bool = False,
    incoming_key: str = "",
) -> list[Resident]:
    """What each service on the host holds, what unloading it would keep, and whether a
    lease holds its model (planner)."""
    models = {
        served: (estimate, opted_in)
        for served, estimate, opted_in in CatalogModel.objects.values_list(
            "served_name", "estimated_vram_mib", "sleep_on_unified_memory"
        )
    }
    residents = []
    services = Service.objects.filter(host=host, in_inventory=True, disabled=False)
    for service in services.select_related("host"):
        in_flight = activity.in_flight.get(service.name, 0)
        estimate, opted_in = models.get(service.loaded_model, (0, False))
        held = estimate or service.vram_resident_mib
        if unified and service.loaded_model:
            # vLLM claims gpu_memory_utilization × MemTotal of the pool, not its estimate.
            held = claimed_mib(service, host.mem_total_mib) or held
        level = sleep_level(service.kind, service.unload_route)
        # vLLM's level-1 sleep keeps the weights (taken as the model's estimate: the
        # catalog has no separate figure); level 2 and other backends keep nothing.
        keeps = min(held, estimate or held) if level == 1 else 0
        if service.health == "down":
            vram = 0  # nothing running
        elif service.unloaded_at is not None and not in_flight:
            # Unloaded (by any broker process): on unified memory a vLLM sleeper's
            # weights are still in the pool; elsewhere they left the GPU.
            vram = keeps if unified else 0
        else:
            vram = held
        # vLLM's sleep on unified memory only for models that opt in (host_memory).
        sleeps_ok = not unified or level is None or opted_in
        residents.append(
            Resident(
                service=service.name,
                vram_mib=vram,
                in_flight=in_flight,
                last_finished=activity.last_finished.get(service.name),
                can_coexist_with=tuple(service.can_coexist_with or ()),
                evictable=bool(service.unload_route) and sleeps_ok,
                replaced=service.pk == target.pk,
                keeps_mib=keeps,
                leased=service_lease(service, incoming_key) is not None,
            )
        )
    return residents


def plan_load(model_key: str, activity: ActivitySnapshot) -> LoadStep:
    """Decide the next step of loading `model_key` (see the module docstring)."""
    assert_lock_free()
    model = CatalogModel.objects.by_key(model_key)
    if is_multi_node(model):
        # A multi-node model loads on its pair only, as one swap named by its head; the
        # swap itself frees every host of the pair (SwapRunner.step_stopping).
        hosts = pair_host_rows(model)[:1]
    elif model.default_host_id is not None:
        hosts = list(Host.objects.in_inventory().filter(pk=model.default_host_id))
    else:
        hosts = list(
            Host.objects.in_inventory()
            .filter(
                services__kind=Service.KIND_VLLM,
                services__in_inventory=True,
                services__disabled=False,
            )
            .distinct()
        )
    plans: list[tuple[EvictionPlan, Host, list[Resident], bool]] = []
    busy_swaps: list[int] = []
    for host in hosts:
        running = active_swap_on(host.pk)
        if running is not None:
            if running.model_key == model.key:
                return LoadStep("join", host.name, swap_id=running.pk)
            busy_swaps.append(running.pk)
            continue
        pair = running_pair_on(host)
        if pair is not None and pair.model_key != model.key and not is_multi_node(model):
            # The broker never evicts a pair: its hosts serve it as one unit until a
            # swap replaces the whole pair.
            continue
        service = Service.objects.vllm_on(host)
        if service is None:
            continue
        unified = latest_unified(host.pk)
        residents = residents_of(host, service, activity, unified, model.key)
        measured = _measured_free(host)
        ram_free = host.mem_available_mib if host.state == "live" and not unified else None
        memory = HostMemory(
            host.name, host.vram_budget_mib, host.vram_margin_mib, measured, unified, ram_free
        )
        incoming = Incoming(service.name, model.estimated_vram_mib, tuple(service.can_coexist_with))
        plans.append(
            (plan_host(memory, residents, incoming), host, residents, measured is not None)
        )
    best = choose_host(plan for plan, *_ in plans)
    if best is not None:
        _plan, host, _residents, measured = next(p for p in plans if p[0] is best)
        routes = {
            s.name: Eviction(
                s.name,
                s.base_url.rstrip("/") + "/" + s.unload_route.lstrip("/"),
                s.unload_method or "POST",
                json_bytes(s.unload_body),
            )
            for s in Service.objects.filter(host=host, name__in=best.evict)
        }
        evict = tuple(routes[name] for name in best.evict)
        return LoadStep("go", host.name, evict=evict, plan=best, measured=measured)
    if busy_swaps:
        return LoadStep("wait", swap_id=busy_swaps[0])
    blocked = [plan for plan, *_ in plans if plan.blocked]
    if blocked:
        return LoadStep("blocked", blocked[0].host, plan=blocked[0])
    leased = [plan for plan, *_ in plans if plan.leased_by]
    if leased:
        # Refuse, never break: 423 naming the lease (converted to the broker's shape).
        service = Service.objects.select_related("host").get(name=leased[0].leased_by[0])
        lease = service_lease(service, model.key)
        if lease is not None:
            raise leased_error(
                lease, timezone.now(), f"loading {model.key!r} would need its memory"
            )
    if plans:
        raise DoesNotFit(
            f"{model.key} does not fit: " + "; ".join(p.reason for p, *_ in plans),
            code="insufficient_vram",
            param="model",
        )
    raise ModelNotLoadable(
        f"No host can load {model.key}: none has an enabled vLLM service.",
        code="no_vllm_service",
        param="model",
    )


def room_now(host_name: str, needed: int) -> bool:
    """On a measuring host: is the room for `needed` MiB really there now?"""
    host = Host.objects.get(name=host_name)
    measured = _measured_free(host)
    return measured is None or measured - host.vram_margin_mib >= needed


def start_swap(
    model_key: str, host_name: str, on_behalf: audit.Actor | None = None
) -> tuple[int, bool]:
    """Create the swap, or find the one in the way: (swap id, whether it loads our model).

    Several broker processes may plan the same load at once (each has its own `Loads`).
    The catalog row's lock (SELECT ... FOR UPDATE on PostgreSQL; SQLite serialises
    writers anyway) makes them create the swap one at a time: whoever comes second finds
    the first one's swap for this model, active or just completed, and follows it, so a
    model is loaded exactly once however many processes asked for it.
    The swap is audited as broker.load: the engine, on behalf of the request's key.
    """
    try:
        with transaction.atomic():
            existing = _swap_loading(model_key)
            if existing is not None:
                return existing, True
            swap = create_swap(model_key, host_name, False, REQUESTED_BY)
            audit.record(
                on_behalf or audit.ENGINE,
                "broker.load",
                "catalog_model",
                model_key,
                after={"host": host_name, "swap_id": swap.pk},
            )
    except Conflict as conflict:
        swap_id = conflict.extra.get("swap_id")
        if swap_id is None:
            raise
        running = active_swap_on(Host.objects.get(name=host_name).pk)
        return int(swap_id), running is not None and running.model_key == model_key
    return swap.pk, True


def _swap_loading(model_key: str) -> int | None:
    """Under the model's row lock: the swap already loading it, or one that completed
    moments ago (another process's load, which this process's route table and the
    probes have not seen yet) whose host has not been swapped since."""
    model = CatalogModel.objects.select_for_update().filter(key=model_key).first()
    if model is None:
        return None  # create_swap names the missing model
    swaps = Swap.objects.filter(model_key=model_key, dry_run=False).order_by("-pk")
    running = swaps.in_flight().values_list("pk", flat=True).first()
    if running is not None:
        return running
    recent = timezone.now() - timedelta(seconds=JUST_LOADED_SECONDS)
    done = (
        swaps.filter(state=Swap.COMPLETE, finished_at__gte=recent).select_related("service").first()
    )
    if done is None or done.service is None or done.service.unloaded_at is not None:
        return None
    latest_on_host = (
        Swap.objects.filter(host_id=done.host_id, dry_run=False)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    return done.pk if latest_on_host == done.pk else None


# -- the shared load -------------------------------------------------------------------
def load_outcome(error: BaseException) -> str:
    """The `arbiter_broker_loads_total` outcome label of a failed load."""
    if isinstance(error, LockHeld):
        return "locked"
    if isinstance(error, Busy):
        return "busy"
    if isinstance(error, LoadFailed):
        return "failed"
    return "error"


class Loads:
    """One load per catalog model at a time; every request for it awaits the same one."""

    def __init__(
        self,
        watcher: SwapWatcher,
        residency: Residency,
    ) -> None:
        self.watcher = watcher
        self.residency = residency
        self.activity = residency.activity
        self.pending: dict[str, asyncio.Future[SwapEnd]] = {}

    async def load(
        self, model_key: str, timeout: float, on_behalf: audit.Actor | None = None
    ) -> SwapEnd:
        """Wait up to `timeout` for the model's load (starting it if nobody has).

        `on_behalf`: the engine acting for the request's key, which the audit rows of the
        load and its evictions name (the request that started the load, when several
        share it).
        """
        load = self.pending.get(model_key)
        if load is None:
            load = spawn(self._load(model_key, time.monotonic() + timeout, on_behalf))
            self.pending[model_key] = load
            load.add_done_callback(lambda done: self._forget(model_key, done))
        try:
            return await asyncio.wait_for(asyncio.shield(load), max(0.0, timeout))
        except TimeoutError:
            raise Busy(
                f"{model_key} is still loading; gave up waiting after {timeout:g} s.",
                code="load_timeout",
                retry_after=10,
            ) from None

    def _forget(self, model_key: str, done: asyncio.Future[SwapEnd]) -> None:
        if self.pending.get(model_key) is done:
            del self.pending[model_key]
        if done.cancelled():
            return
        error = done.exception()  # retrieved, so an unawaited failure is not logged as lost
        outcome = "complete" if error is None else load_outcome(error)
        metrics.LOADS.labels(outcome).inc()

    async def _load(
        self, model_key: str, deadline: float, on_behalf: audit.Actor | None = None
    ) -> SwapEnd:
        while True:
            try:
                # Every process's requests in flight with REDIS_URL: a service busy in
                # another process is not evicted (`limits.ServiceActivity.current`).
                activity = await self.activity.current()
                step = await sync_to_async(plan_load)(model_key, activity)
                if step.action == "go":
                    await self._evict(step, deadline, on_behalf)
                    swap_id, ours = await sync_to_async(start_swap)(model_key, step.host, on_behalf)
                    if ours:
                        log.info(
                            "broker: loading %s on %s (swap %s)", model_key, step.host, swap_id
                        )
                        return await self._finish(model_key, swap_id, deadline)
                    await self._wait(swap_id, deadline)  # someone else's swap got there first
                elif step.action == "join":
                    assert step.swap_id is not None
                    return await self._finish(model_key, step.swap_id, deadline)
                elif step.action == "wait":
                    assert step.swap_id is not None
                    await self._wait(step.swap_id, deadline)
                else:  # blocked by busy services: they finish, then plan again
                    if time.monotonic() + BLOCKED_RETRY_SECONDS > deadline:
                        reason = step.plan.reason if step.plan else "busy"
                        raise Busy(
                            f"{model_key} cannot be loaded yet: {reason}.",
                            code="vram_busy",
                            retry_after=10,
                        )
                    await asyncio.sleep(BLOCKED_RETRY_SECONDS)
            except ArbiterError as exc:
                raise from_arbiter_error(exc) from exc

    async def _wait(self, swap_id: int, deadline: float) -> SwapEnd:
        try:
            return await self.watcher.wait(swap_id, deadline - time.monotonic())
        except TimeoutError:
            raise Busy(
                f"swap {swap_id} is still running.", code="load_timeout", retry_after=10
            ) from None

    async def _finish(self, model_key: str, swap_id: int, deadline: float) -> SwapEnd:
        end = await self._wait(swap_id, deadline)
        if not end.complete:
            raise LoadFailed(
                f"Loading {model_key} failed: swap {swap_id} ended {end.state}"
                + (f": {end.error}" if end.error else "."),
                code=f"swap_{end.state}",
                retry_after=10,
                swap_id=swap_id,
            )
        return end

    async def _evict(
        self, step: LoadStep, deadline: float, on_behalf: audit.Actor | None = None
    ) -> None:
        if not step.evict:
            return
        for eviction in step.evict:
            log.info("broker: evicting %s on %s", eviction.service, step.host)
            try:
                await self.residency.unload(
                    eviction.service,
                    eviction.url,
                    "eviction",
                    eviction.method,
                    eviction.body,
                    on_behalf=on_behalf,
                )
            except httpx.HTTPError as exc:
                raise LoadFailed(
                    f"Could not unload {eviction.service} to make room: {type(exc).__name__}.",
                    code="unload_failed",
                    retry_after=10,
                    service=eviction.service,
                ) from exc
        if step.measured and step.plan is not None:
            await self._wait_for_room(step.host, step.plan.needed_mib, deadline)

    async def _wait_for_room(self, host: str, needed: int, deadline: float) -> None:
        timeout = float(getattr(settings, "ARBITER_SWAP_MEMORY_FREE_TIMEOUT", 120.0))
        until = min(deadline, time.monotonic() + timeout)
        while not await sync_to_async(room_now)(host, needed):
            if time.monotonic() >= until:
                raise LoadFailed(
                    f"The memory of the evicted services on {host} was not freed in time.",
                    code="memory_not_freed",
                    retry_after=10,
                )
            await asyncio.sleep(0.5)

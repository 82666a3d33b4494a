"""VRAM planning for an on-demand load: does the model fit, and what must go first.

Pure functions over plain values; `loading` gathers the inputs from the database and
the broker's own activity counters.

The rules (SPEC "Broker"):
- room = the host's budget minus its margin, minus what the resident services hold
  (their `vram_resident_mib`, or their loaded catalog model's estimate); where the host
  measures its free memory (MemAvailable on unified-memory hosts such as the GB10) the
  measurement minus the margin caps it, since estimates miss everything else running.
- The service the swap reloads gives its memory back as part of the swap; a swap
  must not cut off its requests, so while it has requests in flight the load waits.
- Otherwise evict, least recently *finished* idle service first (never used since
  start counts as oldest), among the services that cannot coexist with the new one
  (`can_coexist_with`, either side naming the other), until the model fits.
- Never evict a service with requests in flight: the load waits for it instead.
- Never evict while someone else holds the swap lock.
- If it cannot fit even with every evictable service gone: a clear error, no eviction.
- vLLM's level-1 sleep (its unload route `/sleep`) offloads the weights to CPU RAM and
  discards the KV cache (docs.vllm.ai "Sleep Mode"). On a unified-memory host CPU RAM
  is the same pool: an asleep vLLM still holds its weights there, and putting one to
  sleep frees only the rest. On discrete GPUs it frees the GPU memory but needs host RAM
  for the weights, so it is only evicted while the host's MemAvailable can take them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial


@dataclass(frozen=True)
class HostMemory:
    """What is known about one host's memory, in MiB."""

    name: str
    budget_mib: int | None
    margin_mib: int = 0
    # Measured free memory (MemAvailable on unified memory hosts), when reported.
    measured_free_mib: int | None = None
    # One pool for CPU and GPU (GB10): what a vLLM keeps asleep stays in it.
    unified: bool = False
    # Host RAM free for offloaded weights (MemAvailable on discrete-GPU hosts), if measured.
    ram_free_mib: int | None = None


@dataclass(frozen=True)
class Resident:
    """A service on the host that holds memory now."""

    service: str
    vram_mib: int
    in_flight: int = 0
    last_finished: float | None = None  # epoch seconds; None: no request since start
    can_coexist_with: tuple[str, ...] = ()
    # False when the broker has no way to stop it on its own (no unload route).
    evictable: bool = True
    # The service the swap itself reloads (its current model goes with the swap).
    replaced: bool = False
    # What unloading it keeps: the weights a vLLM's level-1 sleep offloads to CPU RAM
    # (still in the pool on unified memory; taken from host RAM on discrete GPUs).
    keeps_mib: int = 0
    # A lease holds its model (coordination.leases): never evicted.
    leased: bool = False


@dataclass(frozen=True)
class Incoming:
    """The model to load, and the service that will serve it."""

    service: str
    vram_mib: int
    can_coexist_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvictionPlan:
    """The verdict for one host. `fits` means: go now, after evicting `evict`."""

    host: str
    fits: bool
    evict: tuple[str, ...] = ()
    # Busy services standing in the way: the load waits for them to go idle.
    waiting_for: tuple[str, ...] = ()
    locked: bool = False
    # Leased services standing in the way (coordination.leases): the load is refused.
    leased_by: tuple[str, ...] = ()
    free_mib: int | None = None  # room before anything is stopped
    free_after_mib: int | None = None
    needed_mib: int = 0
    reason: str = ""

    @property
    def blocked(self) -> bool:
        """Cannot go now, but may later (busy services, or the lock)."""
        return not self.fits and (bool(self.waiting_for) or self.locked)


def coexists(resident: Resident, incoming: Incoming) -> bool:
    return (
        incoming.service in resident.can_coexist_with
        or resident.service in incoming.can_coexist_with
    )


def room(host: HostMemory, residents: Iterable[Resident]) -> int | None:
    """Free memory for a new model now, or None when nothing is known about the host."""
    held = sum(r.vram_mib for r in residents)
    estimates = None if host.budget_mib is None else host.budget_mib - host.margin_mib - held
    measured = None if host.measured_free_mib is None else host.measured_free_mib - host.margin_mib
    known = [value for value in (estimates, measured) if value is not None]
    return min(known) if known else None


def freed_by_unload(resident: Resident, host: HostMemory) -> int:
    """The memory unloading `resident` gives back to a new model."""
    kept = resident.keeps_mib if host.unified else 0
    return max(0, resident.vram_mib - kept)


def plan_eviction(
    host: HostMemory,
    residents: Iterable[Resident],
    incoming: Incoming,
    *,
    lock_held_by_other: bool = False,
) -> EvictionPlan:
    """Decide what to evict on `host` so that `incoming` fits."""
    residents = list(residents)
    needed = incoming.vram_mib
    free = room(host, residents)
    plan = partial(EvictionPlan, host=host.name, free_mib=free, needed_mib=needed)
    if lock_held_by_other:
        return plan(fits=False, locked=True, reason="the swap lock is held")
    replaced = [r for r in residents if r.replaced]
    leased_replaced = tuple(r.service for r in replaced if r.leased)
    if leased_replaced:
        return plan(
            fits=False,
            leased_by=leased_replaced,
            reason=f"{', '.join(leased_replaced)} serves a leased model and would be replaced",
        )
    busy_replaced = tuple(r.service for r in replaced if r.in_flight > 0)
    if busy_replaced:
        return plan(
            fits=False,
            waiting_for=busy_replaced,
            reason=f"{', '.join(busy_replaced)} has requests in flight and would be replaced",
        )
    if free is None:
        return plan(fits=True, reason="no budget or measurement: not checked")
    free += sum(r.vram_mib for r in replaced)
    if free >= needed:
        return plan(fits=True, free_after_mib=free, reason="fits")

    candidates = [
        r
        for r in residents
        if not r.replaced
        and freed_by_unload(r, host) > 0
        and r.evictable
        and not r.leased
        and not coexists(r, incoming)
    ]
    idle = sorted(
        (r for r in candidates if r.in_flight == 0),
        key=lambda r: (r.last_finished is not None, r.last_finished or 0.0, r.service),
    )
    evict: list[str] = []
    ram_left = None if host.unified or host.ram_free_mib is None else host.ram_free_mib
    for resident in idle:
        if free >= needed:
            break
        if ram_left is not None and resident.keeps_mib:
            if resident.keeps_mib > ram_left:
                continue  # its weights would not fit in host RAM: it cannot be put to sleep
            ram_left -= resident.keeps_mib
        evict.append(resident.service)
        free += freed_by_unload(resident, host)
    if free >= needed:
        return plan(
            fits=True,
            evict=tuple(evict),
            free_after_mib=free,
            reason=f"fits after evicting {', '.join(evict)}",
        )
    busy = [r for r in candidates if r.in_flight > 0]
    if free + sum(freed_by_unload(r, host) for r in busy) >= needed:
        # The busy ones are never evicted: wait until enough of them go idle.
        waiting = tuple(sorted(r.service for r in busy))
        return plan(
            fits=False,
            waiting_for=waiting,
            free_after_mib=free,
            reason=f"needs {', '.join(waiting)}, which has requests in flight",
        )
    leased = [
        r
        for r in residents
        if r.leased and not r.replaced and r.evictable and freed_by_unload(r, host) > 0
    ]
    if leased and free + sum(freed_by_unload(r, host) for r in busy + leased) >= needed:
        holders = tuple(sorted(r.service for r in leased))
        return plan(
            fits=False,
            leased_by=holders,
            free_after_mib=free,
            reason=f"needs the memory of {', '.join(holders)}, which serves a leased model",
        )
    return plan(
        fits=False,
        free_after_mib=free,
        reason=(
            f"needs {needed} MiB, at most {free} MiB can be freed on {host.name} "
            "without stopping services that must stay"
        ),
    )


def choose_host(plans: Iterable[EvictionPlan]) -> EvictionPlan | None:
    """The best host that fits now: fewest evictions, then the most room left.

    None when none fits now; the caller tells blocked (wait) from impossible (error).
    """
    fitting = [p for p in plans if p.fits]
    if not fitting:
        return None
    return min(
        fitting,
        key=lambda p: (len(p.evict), -(p.free_after_mib or 0), p.host),
    )

"""Warm-ups ahead of scheduled jobs: swap the job's model in, hold it, never run the job.

A job with a warm-up (`ScheduledJob.warm_up_host`) gets, for each run, one `WarmUp` row:
the claim (unique per job and run time, so several serve processes and restarts make
one warm-up per run). The loop walks each row through

    planned → swapping → held → done            (or → missed, with the reason)

- planned: claimed once the run is within `lead_seconds` + the expected load time (the
  median total launch time of the latest complete swaps of that model on that host,
  `DEFAULT_LOAD_SECONDS` without any). The swap goes through `create_swap`, the same gate
  as everybody's (requested by `warm-up:<job id>`); nothing is swapped when the model is
  served there already. A busy host (another swap) is retried until the run time.
- swapping → held: once the swap is complete, a system lease holds the model until
  `hold_seconds` after the run time (TTL counted from now), so nobody swaps it away
  between the warm-up and the end of the job's window.
- held → done: the window is over; the lease is released (by the process that took it,
  which keeps the token in memory only; after a restart it ends by its TTL).
- missed: the lock or someone else's lease on the host made it impossible (or the swap
  failed): the reason is kept, shown on the schedule panel, and a `warm_up_missed`
  webhook event is written in the same transaction.

Every step takes `now` so a test can step a clock; the loop itself never runs a job.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from statistics import median
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from arbiter import events
from arbiter.engine.swaps.store import create_swap
from arbiter.errors import ArbiterError, Conflict, Locked
from arbiter.models import Service, Swap
from catalog.models import CatalogModel
from coordination.leases.gate import leased_on
from coordination.leases.operations import acquire, extend, release
from coordination.models import Lease, ScheduledJob, WarmUp
from coordination.schedules.runs import next_runs
from coordination.webhooks.outbox import emit_event

log = logging.getLogger(__name__)
INTERVAL_SECONDS = 15.0
MISSED_EVENT = "warm_up_missed"
KEEP_MARGIN_SECONDS = 3600  # extend a hold's lease when it has less than this left


def default_load_seconds() -> float:
    return float(settings.ARBITER_WARM_UP_DEFAULT_LOAD_SECONDS)


def expected_load_seconds(model_key: str, host_name: str) -> float:
    """How long a swap of the model on the host takes: the median total of the launch
    phases of its latest complete swaps there (as `Swap.eta_seconds` reads them)."""
    history = (
        Swap.objects.filter(
            model_key=model_key, host__name=host_name, state=Swap.COMPLETE, dry_run=False
        )
        .order_by("-finished_at", "-pk")
        .values_list("phase_durations", flat=True)[: Swap.ETA_HISTORY]
    )
    totals = [
        sum(float(s) for s in durations.values() if isinstance(s, int | float))
        for durations in history
        if durations
    ]
    return median(totals) if totals else default_load_seconds()


def is_served(model: CatalogModel, host_name: str) -> bool:
    """Does the host's vLLM service serve the model now (the probe saw it, or the latest
    finished swap there brought it and nothing replaced it since)?"""
    service = (
        Service.objects.in_inventory().filter(host__name=host_name, kind=Service.KIND_VLLM).first()
    )
    if service is None:
        return False
    if service.loaded_model and service.loaded_model in {model.served_name, model.hub_repo}:
        return True
    latest = (
        Swap.objects.filter(service=service, dry_run=False, state__in=Swap.FINAL_STATES)
        .exclude(state=Swap.CANCELLED)
        .order_by("-finished_at", "-pk")
        .first()
    )
    return latest is not None and latest.state == Swap.COMPLETE and latest.model_key == model.key


def blocking_reason(warm_up: WarmUp) -> str:
    """Why someone else's lease makes the warm-up impossible, or "": a held lease on
    another model of the host (the swap would take that model away)."""
    for lease in leased_on(warm_up.host_name):
        if lease.model_key != warm_up.model_key:
            return (
                f"model {lease.model_key!r} on {warm_up.host_name} is leased by "
                f"{lease.holder!r} until {lease.expires_at:%Y-%m-%d %H:%M:%S} UTC"
                + (f" ({lease.purpose})" if lease.purpose else "")
            )
    return ""


def missed_payload(warm_up: WarmUp) -> dict[str, Any]:
    return {
        "job_id": warm_up.job.job_id,
        "run_at": warm_up.run_at,
        "model": warm_up.model_key,
        "host": warm_up.host_name,
        "reason": warm_up.reason,
        "swap_id": warm_up.swap_id,
    }


class WarmUpLoop:
    """The warm-up loop, started by `arbiter.loops`. `clock` is the time source."""

    def __init__(
        self,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], datetime] = timezone.now,
    ) -> None:
        self.interval = interval
        self.clock = clock
        # Lease tokens of the holds this process took (never stored: after a restart
        # the lease simply ends by its TTL, which is the window's end).
        self.tokens: dict[int, str] = {}

    async def run_forever(self) -> None:
        while True:
            await sync_to_async(self.step)()
            await asyncio.sleep(self.interval)

    def step(self, now: datetime | None = None) -> None:
        """One round: claim warm-ups that are due, move the open ones on."""
        now = now or self.clock()
        jobs = ScheduledJob.objects.select_related("target_model", "warm_up_host").filter(
            warm_up_host__isnull=False
        )
        for job in jobs:
            try:
                self.plan(job, now)
            except ArbiterError as error:  # a stored job that no longer validates
                log.warning("warm-up of %s not planned: %s", job.job_id, error)
        for warm_up_id in WarmUp.objects.filter(state__in=WarmUp.OPEN_STATES).values_list(
            "pk", flat=True
        ):
            self.advance(warm_up_id, now)

    def plan(self, job: ScheduledJob, now: datetime) -> WarmUp | None:
        """Claim the warm-up for the job's next run once it is due; None otherwise."""
        assert job.warm_up_host is not None
        upcoming = next_runs(job, 1, after=now)
        if not upcoming:
            return None
        run_at = upcoming[0]
        host_name = job.warm_up_host.name
        lead = job.warm_up_lead_seconds + expected_load_seconds(job.target_model.key, host_name)
        if run_at - now > timedelta(seconds=lead):
            return None
        try:
            with transaction.atomic():
                warm_up = WarmUp.objects.create(
                    job=job,
                    run_at=run_at,
                    host_name=host_name,
                    model_key=job.target_model.key,
                    hold_until=run_at + timedelta(seconds=job.warm_up_hold_seconds),
                    created_at=now,
                    updated_at=now,
                )
        except IntegrityError:
            return None  # claimed already: by an earlier round or another process
        events.send_on_commit(events.schedules_changed)
        self.start(warm_up, now)
        return warm_up

    def advance(self, warm_up_id: int, now: datetime) -> None:
        warm_up = WarmUp.objects.select_related("job").filter(pk=warm_up_id).first()
        if warm_up is None:
            return
        if warm_up.state == WarmUp.PLANNED:
            if now >= warm_up.run_at:
                self.miss(warm_up, warm_up.reason or "not started before the run time", now)
            else:
                self.start(warm_up, now)
        elif warm_up.state == WarmUp.SWAPPING:
            swap = Swap.objects.filter(pk=warm_up.swap_id).first()
            if swap is None or swap.state in (Swap.FAILED, Swap.CANCELLED):
                what = f"swap {warm_up.swap_id} {swap.state if swap else 'vanished'}"
                error = f": {swap.error}" if swap is not None and swap.error else ""
                self.miss(warm_up, f"{what}{error}", now)
            elif swap.state == Swap.COMPLETE:
                self.hold(warm_up, now)
        elif warm_up.state == WarmUp.HELD and now >= warm_up.hold_until:
            self.finish(warm_up, now)
        elif warm_up.state == WarmUp.HELD:
            self.keep(warm_up, now)

    def start(self, warm_up: WarmUp, now: datetime) -> None:
        """Swap the model in, unless it is there; a lease or the lock: missed."""
        reason = blocking_reason(warm_up)
        if reason:
            self.miss(warm_up, reason, now)
            return
        model = CatalogModel.objects.filter(key=warm_up.model_key).first()
        if model is None:
            self.miss(warm_up, f"model {warm_up.model_key!r} is no longer in the catalog", now)
            return
        if is_served(model, warm_up.host_name):
            self.hold(warm_up, now)
            return
        try:
            swap = create_swap(model.key, warm_up.host_name, False, f"warm-up:{warm_up.job.job_id}")
        except Locked as error:
            self.miss(warm_up, error.message, now)
            return
        except Conflict as error:
            # Another swap works on the host: try again next round, until the run time.
            WarmUp.objects.filter(pk=warm_up.pk, state=WarmUp.PLANNED).update(
                reason=error.message[:500], updated_at=now
            )
            return
        except ArbiterError as error:
            self.miss(warm_up, error.message, now)
            return
        self.move(warm_up, WarmUp.PLANNED, WarmUp.SWAPPING, now, swap_id=swap.pk, reason="")

    def hold(self, warm_up: WarmUp, now: datetime) -> None:
        """A system lease on the model until the end of the job's window."""
        # A lease lives at most ARBITER_LOCK_MAX_TTL; a longer hold is extended (`keep`).
        ttl = min(
            math.ceil((warm_up.hold_until - now).total_seconds()), settings.ARBITER_LOCK_MAX_TTL
        )
        if ttl <= 0:
            self.move(warm_up, warm_up.state, WarmUp.DONE, now)
            return
        try:
            grant = acquire(
                warm_up.model_key,
                warm_up.host_name,
                f"warm-up:{warm_up.job.job_id}",
                ttl,
                f"warm-up for the run at {warm_up.run_at:%Y-%m-%d %H:%M} UTC",
                system=True,
            )
        except ArbiterError as error:
            self.miss(warm_up, error.message, now)
            return
        if self.move(warm_up, warm_up.state, WarmUp.HELD, now, lease_id=grant.id):
            self.tokens[warm_up.pk] = grant.token
        else:  # another process moved it first: give the lease back
            release(grant.id, grant.token)

    def keep(self, warm_up: WarmUp, now: datetime) -> None:
        """Extend a hold whose lease would end before the window does (a hold longer
        than a lease's longest TTL); only the process holding the token can."""
        token = self.tokens.get(warm_up.pk)
        lease = Lease.objects.filter(pk=warm_up.lease_id).first()
        if token is None or lease is None or lease.expires_at >= warm_up.hold_until:
            return
        left = math.ceil((warm_up.hold_until - now).total_seconds())
        if (lease.expires_at - timezone.now()).total_seconds() < KEEP_MARGIN_SECONDS < left:
            try:
                extend(lease.pk, token, min(left, settings.ARBITER_LOCK_MAX_TTL))
            except ArbiterError as error:
                log.warning("warm-up %s: lease not extended: %s", warm_up.pk, error)

    def finish(self, warm_up: WarmUp, now: datetime) -> None:
        if not self.move(warm_up, WarmUp.HELD, WarmUp.DONE, now):
            return
        token = self.tokens.pop(warm_up.pk, None)
        if token is not None and warm_up.lease_id is not None:
            try:
                release(warm_up.lease_id, token)
            except ArbiterError as error:  # expired or force-released already
                log.info("warm-up %s: lease not released: %s", warm_up.pk, error)

    def miss(self, warm_up: WarmUp, reason: str, now: datetime) -> None:
        """Record the missed warm-up and write its webhook event, in one transaction."""
        with transaction.atomic():
            if not self.move(warm_up, warm_up.state, WarmUp.MISSED, now, reason=reason[:500]):
                return
            warm_up.refresh_from_db()
            emit_event(MISSED_EVENT, missed_payload(warm_up))
        log.warning("warm-up of %s for %s missed: %s", warm_up.model_key, warm_up.run_at, reason)

    def move(self, warm_up: WarmUp, old: str, new: str, now: datetime, **fields: Any) -> bool:
        """Conditional UPDATE from `old`: False when another process moved it first."""
        with transaction.atomic():
            moved = WarmUp.objects.filter(pk=warm_up.pk, state=old).update(
                state=new, updated_at=now, **fields
            )
            if moved:
                events.send_on_commit(events.schedules_changed)
        if moved:
            warm_up.state = new
            for name, value in fields.items():
                setattr(warm_up, name, value)
        return bool(moved)

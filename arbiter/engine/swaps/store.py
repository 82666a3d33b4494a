"""Swap rows: creating them, moving their state, storing their log, claiming them.

Synchronous ORM code only (the engine calls it through `sync_to_async`). Every state
change is one conditional UPDATE plus its `SwapTransition` row in one transaction, so
a swap is never in a state without the record of when it got there, and two workers
can never both move the same swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from arbiter import events
from arbiter.engine.swaps.multi_node import pair_conflict
from arbiter.engine.swaps.preflight import swap_hosts
from arbiter.engine.swaps.wakeup import announce_swap_created
from arbiter.errors import Conflict, InvalidInput
from arbiter.models import Host, Service, Swap, SwapHost, SwapLogLine, SwapTransition
from catalog.models import CatalogModel
from coordination.leases.gate import assert_none_leased
from coordination.leases.serving import served_keys
from coordination.locks.gate import assert_may_swap, current_lock

RUNNING_STATES = tuple(s for s in Swap.ACTIVE_STATES if s != Swap.PENDING)


def _conflict(running: Swap, host_name: str) -> Conflict:
    return Conflict(
        f"host {host_name} is busy: swap {running.pk} ({running.model_key}) is {running.state}",
        field="host",
        swap_id=running.pk,
    )


def active_swap_on(host_id: int) -> Swap | None:
    """The active swap working on the host: as its head, or as a worker of a pair."""
    claim = (
        SwapHost.objects.select_related("swap")
        .filter(host_id=host_id, active=True, swap__state__in=Swap.ACTIVE_STATES)
        .first()
    )
    return claim.swap if claim is not None else None


def _busy(hosts: list[Host]) -> Conflict | None:
    for host in hosts:
        running = active_swap_on(host.pk)
        if running is not None:
            return _conflict(running, host.name)
    return None


def create_swap(
    model_key: str,
    host_name: str | None,
    dry_run: bool,
    requested_by: str,
    lock_token: str | None = None,
    lease_token: str | None = None,
    *,
    kind: str = Swap.KIND_SWAP,
    not_before: datetime | None = None,
) -> Swap:
    """Create a pending swap, or raise Locked (423) / NotFound / InvalidInput / Conflict.

    The swap lock is checked first and in the same transaction as the insert, so no
    grant can slip in between; the swap records the lock generation it was accepted
    under (None when the lock was free). A dry run executes nothing, so it needs no lock.
    A swap holds every host it works on (the head, and a multi-node model's workers)
    through one active `SwapHost` row per host, which the database keeps unique: no
    two swaps touch one host at once, whichever host each names.

    Leases compose with the lock: a swap that would replace a model someone else leases
    on one of its hosts is refused (423 with `blocked_by`), even for the lock's holder;
    only the lease's holder passes, with `lease_token`. Loading the leased model itself
    replaces nothing and passes.

    A restart (`kind`, from the restart policy) obeys the same rules; it is not claimed
    before `not_before` (its backoff), and holds its hosts meanwhile.
    """
    with transaction.atomic():
        lock_generation = None if dry_run else assert_may_swap(lock_token)
        model = CatalogModel.objects.by_key(model_key)
        hosts = swap_hosts(model, host_name)
        head = hosts[0]
        service = Service.objects.vllm_on(head)
        if service is None:
            raise InvalidInput(
                f"host: {head.name} has no enabled vLLM service to serve models", field="host"
            )
        if not dry_run:
            # The hosts' rows, locked until commit (in one order): a lease being granted
            # on one of them waits, so it either sees this swap or is seen here.
            list(
                Host.objects.select_for_update().filter(pk__in=[h.pk for h in hosts]).order_by("pk")
            )
            _assert_replaces_no_lease(model, hosts, service, lease_token)
        conflict = _busy(hosts) or pair_conflict(model, hosts)
        if conflict is not None:
            raise conflict
        try:
            with transaction.atomic():  # a savepoint: the caller's transaction survives
                swap = Swap.objects.create(
                    model=model,
                    model_key=model.key,
                    host=head,
                    service=service,
                    dry_run=dry_run,
                    requested_by=requested_by[:150],
                    lock_generation=lock_generation,
                    kind=kind,
                    not_before=not_before,
                )
                SwapHost.objects.bulk_create(
                    SwapHost(swap=swap, host=host, node_rank=rank)
                    for rank, host in enumerate(hosts)
                )
                SwapTransition.objects.create(swap=swap, state=Swap.PENDING, at=swap.created_at)
                announce_swap_created()  # the engine picks it up at once, not at its poll
        except IntegrityError as error:
            # Another request claimed one of these hosts between our check and insert.
            conflict = _busy(hosts)
            if conflict is None:
                raise
            raise conflict from error
    return swap


def _assert_replaces_no_lease(
    model: CatalogModel, hosts: list[Host], head_service: Service, token: str | None
) -> None:
    """Locked (423, blocked_by) when the swap would take a leased model off a host."""
    for host in hosts:
        service = head_service if host.pk == head_service.host_id else Service.objects.vllm_on(host)
        if service is None:
            continue
        replaced = served_keys(service) - {model.key}
        assert_none_leased(
            replaced, host.name, token, action=f"a swap to {model.key!r} would replace it"
        )


def fencing_problem(swap_id: int) -> str:
    """Why the swap may no longer touch the GPU, or "" when it may.

    The lock generation is a fencing number: a swap accepted while the lock was free
    (or under an earlier grant) must not run once someone else holds the lock.
    """
    swap = Swap.objects.only("lock_generation", "dry_run").get(pk=swap_id)
    lock = current_lock()
    if swap.dry_run or not lock.held or lock.generation == swap.lock_generation:
        return ""
    accepted = (
        "while the lock was free"
        if swap.lock_generation is None
        else f"under lock generation {swap.lock_generation}"
    )
    return (
        f"the swap lock is now held by {lock.holder!r} (generation {lock.generation}); "
        f"this swap was accepted {accepted}"
    )


@dataclass(frozen=True)
class TransitionRecord:
    """A state a swap entered, as plain values for the event."""

    swap_id: int
    state: str
    at: datetime
    detail: str
    error: str

    @property
    def final(self) -> bool:
        return self.state in Swap.FINAL_STATES


def record_transition(
    swap_id: int,
    state: str,
    *,
    detail: str = "",
    error: str = "",
    from_states: tuple[str, ...] = Swap.ACTIVE_STATES,
    **fields: object,
) -> TransitionRecord | None:
    """Move an active swap to `state`; None when it is no longer in `from_states`."""
    with transaction.atomic():
        now = timezone.now()
        updates: dict[str, object] = {"state": state, "heartbeat_at": now, **fields}
        if error:
            updates["error"] = error
        final = state in Swap.FINAL_STATES
        if final:
            updates["finished_at"] = now
        if not Swap.objects.filter(pk=swap_id, state__in=from_states).update(**updates):
            return None
        SwapTransition.objects.create(swap_id=swap_id, state=state, at=now, detail=detail)
        if state == Swap.COMPLETE:
            # The swap started the service's container afresh: whatever the broker had
            # unloaded is loaded again, and a restart policy that gave up is moot.
            Service.objects.filter(swaps__pk=swap_id).update(
                unloaded_at=None, failed_reason="", failed_at=None
            )
        if final:
            # The hosts are free for the next swap the moment this one has ended.
            SwapHost.objects.filter(swap_id=swap_id, active=True).update(active=False)
            dry_run = Swap.objects.filter(pk=swap_id).values_list("dry_run", flat=True).get()
            events.swap_finished.send(Swap, swap_id=swap_id, state=state, dry_run=dry_run)
    return TransitionRecord(swap_id, state, now, detail, error)


def note_pending(swap_id: int, detail: str) -> None:
    """Say why a swap was queued (a restart's cause and backoff), on its pending row."""
    SwapTransition.objects.filter(swap_id=swap_id, state=Swap.PENDING).update(detail=detail)


def update_swap(swap_id: int, **fields: object) -> None:
    Swap.objects.filter(pk=swap_id).update(**fields)


def store_log_lines(
    swap_id: int, first_seq: int, lines: list[tuple[str, str]], node: str = ""
) -> list[SwapLogLine]:
    """Store lines in order; `node` names the host that printed them (multi-node swaps)."""
    now = timezone.now()
    rows = [
        SwapLogLine(swap_id=swap_id, seq=first_seq + i, at=now, stream=stream, text=text, node=node)
        for i, (stream, text) in enumerate(lines)
    ]
    return SwapLogLine.objects.bulk_create(rows)


@dataclass(frozen=True)
class LogPosition:
    """Where a swap's stored log ends: the last seq, and container lines per node and
    stream (node "" for a single-host swap)."""

    last_seq: int
    counts: dict[tuple[str, str], int]

    def count(self, node: str, stream: str) -> int:
        return self.counts.get((node, stream), 0)


def log_position(swap_id: int) -> LogPosition:
    lines = SwapLogLine.objects.filter(swap_id=swap_id)
    last = lines.aggregate(last=Max("seq"))["last"] or 0
    per_node = (
        lines.filter(stream__in=("stdout", "stderr"))
        .order_by()  # no default ordering in the GROUP BY
        .values_list("node", "stream")
        .annotate(lines=Count("pk"))
    )
    return LogPosition(last, {(node, stream): n for node, stream, n in per_node})


@dataclass(frozen=True)
class SwapSnapshot:
    """A swap as the engine needs it when it (re)starts running it."""

    id: int
    state: str
    dry_run: bool
    cancel_requested: bool
    model_key: str
    host_name: str
    launch_argv: tuple[str, ...]
    launching_at: datetime | None


def snapshot(swap_id: int) -> SwapSnapshot:
    swap = Swap.objects.select_related("host").get(pk=swap_id)
    launching_at = (
        SwapTransition.objects.filter(swap_id=swap_id, state=Swap.LAUNCHING)
        .order_by("at")
        .values_list("at", flat=True)
        .first()
    )
    return SwapSnapshot(
        id=swap.pk,
        state=swap.state,
        dry_run=swap.dry_run,
        cancel_requested=swap.cancel_requested,
        model_key=swap.model_key,
        host_name=swap.host.name,
        launch_argv=tuple(swap.launch_argv or ()),
        launching_at=launching_at,
    )


def heartbeat(swap_id: int) -> bool:
    """Mark the swap as alive; True when someone asked to cancel it."""
    Swap.objects.filter(pk=swap_id).update(heartbeat_at=timezone.now())
    return bool(Swap.objects.filter(pk=swap_id).values_list("cancel_requested", flat=True).first())


def cancel_requested(swap_id: int) -> bool:
    return bool(Swap.objects.filter(pk=swap_id).values_list("cancel_requested", flat=True).first())


# -- claiming (the dispatcher) ---------------------------------------------------------
def claim_pending(limit: int = 20) -> list[int]:
    """Move pending swaps to preflight, each with a conditional UPDATE; the ones we won."""
    claimed = []
    # A restart waiting out its backoff (`not_before`) is left for a later round.
    due = Q(not_before__isnull=True) | Q(not_before__lte=timezone.now())
    pending = Swap.objects.filter(due, state=Swap.PENDING).order_by("created_at", "pk")
    for swap_id in pending.values_list("pk", flat=True)[:limit]:
        if record_transition(
            swap_id, Swap.PREFLIGHT, from_states=(Swap.PENDING,), started_at=timezone.now()
        ):
            claimed.append(swap_id)
    return claimed


def claim_stale(stale_after: float, exclude: set[int]) -> list[int]:
    """Take over in-flight swaps nobody has touched for `stale_after` seconds."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=stale_after)
    candidates = (
        Swap.objects.filter(state__in=RUNNING_STATES)
        .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True))
        .exclude(pk__in=exclude)
        .values_list("pk", "state", "heartbeat_at")
    )
    claimed = []
    for swap_id, state, beat in candidates:
        # The heartbeat we saw is part of the condition: if another worker took the
        # swap over (or its owner came back) since, the row count is 0.
        if Swap.objects.filter(pk=swap_id, state=state, heartbeat_at=beat).update(heartbeat_at=now):
            claimed.append(swap_id)
    return claimed


# -- cancel (the API) ------------------------------------------------------------------
def request_cancel(swap_id: int) -> TransitionRecord | None:
    """Cancel a swap: at once while pending, else flag it for the engine (within ~1 s).

    Returns the transition when the swap was pending and is now cancelled (nothing else
    will announce it), None when the engine was asked to stop it.
    """
    swap = Swap.objects.by_id(swap_id)
    if swap.is_final:
        raise Conflict(f"swap {swap_id} is already {swap.state}", field="swap_id", state=swap.state)
    record = record_transition(
        swap_id,
        Swap.CANCELLED,
        from_states=(Swap.PENDING,),
        detail="cancelled before it started",
        cancel_requested=True,
    )
    if record is None:
        Swap.objects.filter(pk=swap_id, state__in=RUNNING_STATES).update(cancel_requested=True)
    return record


# -- launch phases and the ETA ---------------------------------------------------------
# The phases and how far a swap is through them are the swap's own (`Swap.LAUNCH_PHASES`,
# `Swap.launch_progress`); here the engine enters and leaves them.


def begin_phase(swap_id: int, phase: str) -> datetime:
    """Enter a launch phase; a swap resumed in the same phase keeps its start time."""
    with transaction.atomic():
        swap = Swap.objects.select_for_update().only("phase", "phase_started_at").get(pk=swap_id)
        if swap.phase == phase and swap.phase_started_at is not None:
            return swap.phase_started_at
        now = timezone.now()
        Swap.objects.filter(pk=swap_id).update(phase=phase, phase_started_at=now)
        return now


def end_phase(swap_id: int, phase: str, *, last: bool = False) -> float:
    """Record how long `phase` took (the ETA of later swaps); `last` leaves the launch."""
    with transaction.atomic():
        swap = Swap.objects.select_for_update().only("phase_started_at", "phase_durations")
        row = swap.get(pk=swap_id)
        started = row.phase_started_at or timezone.now()
        seconds = round(max(0.0, (timezone.now() - started).total_seconds()), 3)
        durations = dict(row.phase_durations or {})
        durations[phase] = seconds
        updates: dict[str, object] = {"phase_durations": durations}
        if last:
            updates.update(phase="", phase_started_at=None)
        Swap.objects.filter(pk=swap_id).update(**updates)
    return seconds


def phase_started_at(swap_id: int, phase: str) -> datetime | None:
    """When the swap entered `phase`, if that is its phase now."""
    row = Swap.objects.filter(pk=swap_id).values("phase", "phase_started_at").first()
    if row is None or row["phase"] != phase:
        return None
    return row["phase_started_at"]


def prune_logs(now: datetime | None = None) -> int:
    """Delete the log lines of swaps that ended more than ARBITER_SWAP_LOG_RETENTION_DAYS
    ago (0 keeps them); the swaps and their transitions stay. Returns the lines deleted."""
    days = settings.ARBITER_SWAP_LOG_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = SwapLogLine.objects.filter(swap__finished_at__lt=cutoff).delete()
    return deleted

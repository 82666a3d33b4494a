"""The dashboard's swap panel: each host's current swap, recent swaps, and pushing it.

Per host the panel shows the active swap (or the one that ended a moment ago): its
phases as a stepper, progress, elapsed time and the last lines of its log. Below it,
recent finished swaps, each opening its full log on demand (`swap_log`).

The panel (`#swap-panel`) is one fragment with three uses: included by the page,
returned by the poll view, pushed over the socket. Its two parts have stable ids of
their own, so the engine pushes only `#swap-current` for a log line or a phase change,
and the whole panel when a swap ends (the history changes only then).

The engine calls `swap_changed` for every swap event it publishes. Pushes are throttled
per swap (`PUSH_INTERVAL`): a chatty container log costs at most ~4 renders a second,
and the trailing push renders what the database says by then, so the last state is
never lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypedDict

from asgiref.sync import sync_to_async
from django.db.models import Q
from django.http import Http404
from django.template.loader import render_to_string
from django.utils import timezone

from arbiter.engine.events import publish_fragment
from arbiter.engine.swaps.store import phase_progress
from arbiter.models import Swap, SwapLogLine, SwapTransition

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 30
HISTORY_SIZE = 12
FULL_LOG_LINES = 5000  # the full-log fragment's cap; the API pages through any length
# A swap that ended stays on its host's card this long, so whoever watched it sees how
# it ended; afterwards it is only in the history.
RECENTLY_ENDED = timedelta(minutes=15)
PUSH_INTERVAL = 0.25  # seconds between two pushes caused by one swap

STEP_LABELS = {
    Swap.PENDING: "Pending",
    Swap.PREFLIGHT: "Pre-flight",
    Swap.STOPPING: "Stopping",
    Swap.LAUNCHING: "Launching",
    Swap.WAITING_HEALTHY: "Waiting healthy",
    Swap.COMPLETE: "Complete",
    Swap.FAILED: "Failed",
    Swap.CANCELLED: "Cancelled",
}
STREAM_LABELS = {"stdout": "out", "stderr": "err", "arbiter": "arb"}


class StepView(TypedDict):
    """One phase of the stepper."""

    phase: str
    label: str
    status: str  # done / current / todo / failed / cancelled / skipped
    offset: str  # "+1.2 s" after the request, "" when never reached


class LogLineView(TypedDict):
    seq: int
    at: datetime
    stream: str
    stream_label: str
    text: str


class SwapView(TypedDict):
    """A swap as the panel shows it."""

    id: int
    model: str
    host: str
    state: str
    state_label: str
    active: bool
    final: bool
    dry_run: bool
    cancel_requested: bool
    requested_by: str
    error: str
    created_at: datetime
    finished_at: datetime | None
    elapsed_seconds: float
    elapsed_label: str
    progress_pct: int
    steps: list[StepView]
    phase: str  # the launch phase (pull / weights / load), "" outside the launch
    phase_label: str
    phase_elapsed_seconds: float
    phase_elapsed_label: str
    eta_label: str  # "about 4 min left", "no estimate yet", "" without a phase


class SwapCardView(SwapView):
    """The current swap of a host, with its log tail."""

    tail: list[LogLineView]
    line_count: int


# -- rendering -------------------------------------------------------------------------
def format_seconds(seconds: float) -> str:
    """'7.4 s', '2 min 05 s' (static/js/dashboard.js formats the ticker the same way)."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    return f"{whole // 60} min {whole % 60:02d} s"


def eta_label(eta_seconds: float | None) -> str:
    """What the panel says about the time left of a launch."""
    if eta_seconds is None:
        return "no estimate yet"
    if eta_seconds < 60:
        return "less than a minute left"
    return f"about {math.ceil(eta_seconds / 60)} min left"


def _steps(swap: Swap, transitions: list[tuple[str, datetime]]) -> list[StepView]:
    first_at: dict[str, datetime] = {}
    for state, at in transitions:
        first_at.setdefault(state, at)
    reached = [state for state, _at in transitions if state in Swap.PHASES] or [Swap.PENDING]
    last = Swap.PHASES.index(reached[-1])
    ended_badly = swap.state in (Swap.FAILED, Swap.CANCELLED)
    steps: list[StepView] = []
    for index, phase in enumerate(Swap.PHASES):
        shown = phase
        if phase == Swap.COMPLETE and ended_badly:
            shown = swap.state  # the end it came to instead of "complete"
            status = swap.state
        elif swap.state == Swap.COMPLETE or index < last:
            status = "done"
        elif index == last:
            status = "current" if swap.is_active else f"stopped-{swap.state}"
        else:
            status = "skipped" if ended_badly else "todo"
        at = first_at.get(shown)
        offset = f"+{format_seconds((at - swap.created_at).total_seconds())}" if at else ""
        steps.append(StepView(phase=shown, label=STEP_LABELS[shown], status=status, offset=offset))
    return steps


def _progress_pct(swap: Swap, transitions: list[tuple[str, datetime]]) -> int:
    """How far along the successful path it got (as the API's `progress`, in percent)."""
    if swap.state == Swap.COMPLETE:
        return 100
    reached = [state for state, _at in transitions if state in Swap.PHASES] or [Swap.PENDING]
    return round(100 * Swap.PHASES.index(reached[-1]) / (len(Swap.PHASES) - 1))


def _swap_view(swap: Swap, transitions: list[tuple[str, datetime]], now: datetime) -> SwapView:
    # Elapsed counts from the request (not the engine's claim), so it never jumps back.
    elapsed = ((swap.finished_at or now) - swap.created_at).total_seconds()
    launch = phase_progress(swap, now)
    in_phase = launch.phase_elapsed_seconds or 0.0
    return SwapView(
        id=swap.pk,
        model=swap.model_key,
        host=swap.host.name,
        state=swap.state,
        state_label=STEP_LABELS.get(swap.state, swap.state),
        active=swap.is_active,
        final=swap.state in Swap.FINAL_STATES,
        dry_run=swap.dry_run,
        cancel_requested=swap.cancel_requested,
        requested_by=swap.requested_by,
        error=swap.error,
        created_at=swap.created_at,
        finished_at=swap.finished_at,
        elapsed_seconds=max(0.0, elapsed),
        elapsed_label=format_seconds(elapsed),
        progress_pct=_progress_pct(swap, transitions),
        steps=_steps(swap, transitions),
        phase=launch.phase or "",
        phase_label=launch.phase_label,
        phase_elapsed_seconds=in_phase,
        phase_elapsed_label=format_seconds(in_phase),
        eta_label=eta_label(launch.eta_seconds) if launch.phase and swap.is_active else "",
    )


def _transitions(swap_ids: list[int]) -> dict[int, list[tuple[str, datetime]]]:
    by_swap: dict[int, list[tuple[str, datetime]]] = {swap_id: [] for swap_id in swap_ids}
    rows = SwapTransition.objects.filter(swap_id__in=swap_ids).order_by("at", "pk")
    for swap_id, state, at in rows.values_list("swap_id", "state", "at"):
        by_swap[swap_id].append((state, at))
    return by_swap


def _line_view(seq: int, at: datetime, stream: str, text: str) -> LogLineView:
    return LogLineView(
        seq=seq, at=at, stream=stream, stream_label=STREAM_LABELS.get(stream, stream), text=text
    )


def _tail(swap_id: int) -> list[LogLineView]:
    rows = SwapLogLine.objects.filter(swap_id=swap_id).order_by("-seq")[:LOG_TAIL_LINES]
    lines = [_line_view(*row) for row in rows.values_list("seq", "at", "stream", "text")]
    return lines[::-1]


def current_swaps(now: datetime | None = None) -> list[SwapCardView]:
    """Per host: its active swap, else the one that ended within RECENTLY_ENDED."""
    now = now or timezone.now()
    candidates = Swap.objects.select_related("host").filter(
        Q(state__in=Swap.ACTIVE_STATES) | Q(finished_at__gte=now - RECENTLY_ENDED)
    )
    by_host: dict[int, Swap] = {}
    for swap in candidates.order_by("-created_at", "-pk")[:200]:
        held = by_host.get(swap.host_id)
        if held is None or (swap.is_active and not held.is_active):
            by_host[swap.host_id] = swap
    swaps = sorted(by_host.values(), key=lambda s: s.host.name)
    transitions = _transitions([s.pk for s in swaps])
    cards = []
    for swap in swaps:
        view = _swap_view(swap, transitions[swap.pk], now)
        cards.append(
            SwapCardView(
                **view,
                tail=_tail(swap.pk),
                line_count=SwapLogLine.objects.filter(swap_id=swap.pk).count(),
            )
        )
    return cards


def recent_swaps(now: datetime | None = None) -> list[SwapView]:
    """Finished swaps, newest first."""
    now = now or timezone.now()
    swaps = list(
        Swap.objects.select_related("host")
        .filter(state__in=Swap.FINAL_STATES)
        .order_by("-created_at", "-pk")[:HISTORY_SIZE]
    )
    transitions = _transitions([s.pk for s in swaps])
    return [_swap_view(swap, transitions[swap.pk], now) for swap in swaps]


def panel_context() -> dict[str, Any]:
    now = timezone.now()
    return {"swaps_current": current_swaps(now), "swaps_history": recent_swaps(now)}


def swap_panel(oob: bool = False) -> str:
    """The whole panel (`#swap-panel`)."""
    return render_to_string("dashboard/partials/swap_panel.html", {**panel_context(), "oob": oob})


def swap_current(oob: bool = False) -> str:
    """Only the hosts' current swaps (`#swap-current`), what a log line or phase changes."""
    context = {"swaps_current": current_swaps(), "oob": oob}
    return render_to_string("dashboard/partials/swap_current.html", context)


def swap_log(swap_id: int) -> str:
    """A swap's full log (its last FULL_LOG_LINES lines) and its error."""
    swap = Swap.objects.select_related("host").filter(pk=swap_id).first()
    if swap is None:
        raise Http404(f"no swap with id {swap_id}")
    rows = SwapLogLine.objects.filter(swap_id=swap_id).order_by("-seq")[:FULL_LOG_LINES]
    lines = [_line_view(*row) for row in rows.values_list("seq", "at", "stream", "text")][::-1]
    context = {
        "swap": _swap_view(swap, _transitions([swap_id])[swap_id], timezone.now()),
        "lines": lines,
        "line_count": SwapLogLine.objects.filter(swap_id=swap_id).count(),
    }
    return render_to_string("dashboard/partials/swap_log.html", context)


# -- pushing ---------------------------------------------------------------------------
@dataclass
class _PushState:
    """One swap's pushes: when the last went out, and whether another is owed."""

    last: float = float("-inf")
    dirty: bool = False
    whole_panel: bool = False
    ended: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class SwapPanelPusher:
    """Folds a swap's events into at most one push per PUSH_INTERVAL.

    The first event after a quiet spell is pushed at once; events during the interval
    (or while a push is rendering) make exactly one more push after it, rendered then.
    """

    def __init__(self, interval: float = PUSH_INTERVAL) -> None:
        self.interval = interval
        self.swaps: dict[int, _PushState] = {}

    def changed(self, swap_id: int, *, ended: bool) -> None:
        state = self.swaps.get(swap_id)
        if state is None:
            self._forget_idle()
            state = self.swaps[swap_id] = _PushState()
        state.dirty = True
        state.whole_panel = state.whole_panel or ended
        state.ended = state.ended or ended
        if state.task is None or state.task.done():
            state.task = asyncio.get_running_loop().create_task(
                self._drain(swap_id, state), name=f"swap-panel-push-{swap_id}"
            )

    async def _drain(self, swap_id: int, state: _PushState) -> None:
        try:
            while state.dirty:
                wait = state.last + self.interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                whole, state.whole_panel, state.dirty = state.whole_panel, False, False
                state.last = time.monotonic()
                try:
                    html = await sync_to_async(swap_panel if whole else swap_current)(oob=True)
                    await publish_fragment(html)
                except Exception:  # a dashboard push must never disturb the swap
                    log.warning("swap %s: pushing the swap panel failed", swap_id, exc_info=True)
        finally:
            if state.ended and not state.dirty and self.swaps.get(swap_id) is state:
                del self.swaps[swap_id]

    def _forget_idle(self) -> None:
        # Swaps whose engine stopped mid-way never send an ending event.
        cutoff = time.monotonic() - 600
        for swap_id, state in list(self.swaps.items()):
            if state.last < cutoff and (state.task is None or state.task.done()):
                del self.swaps[swap_id]


# One pusher per event loop: its tasks live on that loop (tests run one loop each).
_pushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SwapPanelPusher] = (
    weakref.WeakKeyDictionary()
)


def swap_changed(message: Mapping[str, Any]) -> None:
    """A swap event was published (`swap.line` / `swap.state`): push the panel soon.

    Called by the engine (arbiter.engine.swaps.journal) on its event loop; returns at once.
    """
    loop = asyncio.get_running_loop()
    pusher = _pushers.get(loop)
    if pusher is None:
        pusher = _pushers[loop] = SwapPanelPusher()
    ended = message.get("type") == "swap.state" and bool(message.get("final"))
    pusher.changed(int(message["swap_id"]), ended=ended)

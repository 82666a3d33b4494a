"""The dashboard's swap panel: each host's current swap, recent swaps, and pushing it.

Per host the panel shows the active swap (or the one that ended a moment ago): its
phases as a stepper, progress, elapsed time and the last lines of its log. Below it,
recent finished swaps, each opening its full log on demand (`swap_log`).

The panel (`#swap-panel`) is one fragment with three uses: included by the page,
returned by the poll view, pushed over the socket. Its two parts have stable ids of
their own, so a push sends only `#swap-current` for a log line or a phase change,
and the whole panel when a swap ends (the history changes only then).

Pushing it when a swap moves is `dashboard/live.py`'s job (throttled per swap).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.db.models import Q
from django.http import Http404
from django.template.loader import render_to_string
from django.utils import timezone

from arbiter.models import Swap, SwapDict, SwapLogLine

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 30
HISTORY_SIZE = 12
FULL_LOG_LINES = 5000  # the full-log fragment's cap; the API pages through any length
# A swap that ended stays on its host's card this long, so whoever watched it sees how
# it ended; afterwards it is only in the history.
RECENTLY_ENDED = timedelta(minutes=15)

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
    """A log line as the API pages it (`SwapLogLine.as_dict`), with its stream's label."""

    seq: int
    at: datetime
    stream: str
    text: str
    node: str
    stream_label: str


class SwapView(SwapDict):
    """A swap as the API shows it (`Swap.as_dict`), with what the panel adds to read it."""

    state_label: str
    active: bool
    cancel_requested: bool
    elapsed_label: str
    progress_pct: int
    steps: list[StepView]
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


def _steps(swap: Swap) -> list[StepView]:
    first_at: dict[str, datetime] = {}
    for transition in swap.transitions.all():
        first_at.setdefault(transition.state, transition.at)
    last = Swap.PHASES.index(swap.reached_phase)
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


def _swap_view(swap: Swap, now: datetime) -> SwapView:
    """`swap` as `Swap.objects.for_display()` reads it."""
    shown = swap.as_dict(now)
    in_phase = shown["phase_elapsed_seconds"] or 0.0
    return SwapView(
        **shown,
        state_label=STEP_LABELS.get(swap.state, swap.state),
        active=swap.is_active,
        cancel_requested=swap.cancel_requested,
        elapsed_label=format_seconds(shown["elapsed_seconds"]),
        progress_pct=round(100 * shown["progress"]),
        steps=_steps(swap),
        phase_elapsed_label=format_seconds(in_phase),
        eta_label=eta_label(shown["eta_seconds"]) if shown["phase"] and swap.is_active else "",
    )


def _line_view(line: SwapLogLine) -> LogLineView:
    return LogLineView(**line.as_dict(), stream_label=STREAM_LABELS.get(line.stream, line.stream))


def _last_lines(swap: Swap, count: int) -> list[LogLineView]:
    """The swap's last `count` log lines, oldest first."""
    return [_line_view(line) for line in swap.log_lines.order_by("-seq")[:count]][::-1]


def current_swaps(now: datetime | None = None) -> list[SwapCardView]:
    """Per host: its active swap, else the one that ended within RECENTLY_ENDED."""
    now = now or timezone.now()
    candidates = Swap.objects.filter(
        Q(state__in=Swap.ACTIVE_STATES) | Q(finished_at__gte=now - RECENTLY_ENDED)
    ).only("pk", "host_id", "state")
    by_host: dict[int, Swap] = {}
    for swap in candidates.newest_first()[:200]:
        held = by_host.get(swap.host_id)
        if held is None or (swap.is_active and not held.is_active):
            by_host[swap.host_id] = swap
    chosen = Swap.objects.for_display().filter(pk__in=[s.pk for s in by_host.values()])
    return [
        SwapCardView(
            **_swap_view(swap, now),
            tail=_last_lines(swap, LOG_TAIL_LINES),
            line_count=swap.log_lines.count(),
        )
        for swap in sorted(chosen, key=lambda s: s.host.name)
    ]


def recent_swaps(now: datetime | None = None) -> list[SwapView]:
    """Finished swaps, newest first."""
    now = now or timezone.now()
    swaps = Swap.objects.finished().for_display().newest_first()[:HISTORY_SIZE]
    return [_swap_view(swap, now) for swap in swaps]


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
    swap = Swap.objects.for_display().filter(pk=swap_id).first()
    if swap is None:
        raise Http404(f"no swap with id {swap_id}")
    context = {
        "swap": _swap_view(swap, timezone.now()),
        "lines": _last_lines(swap, FULL_LOG_LINES),
        "line_count": swap.log_lines.count(),
    }
    return render_to_string("dashboard/partials/swap_log.html", context)

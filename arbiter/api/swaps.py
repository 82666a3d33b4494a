"""Swap API: start, validate, watch (JSON and Server-Sent Events), list and cancel swaps.

    POST /api/swap                   {model, host?, dry_run?} -> 202 {id, state, url, ...}
    POST /api/swap/{key}/validate    {host?} -> {ok, checks: [{name, ok, detail}], command}
    GET  /api/swap/{id}              state, transitions with times, error, checks, command,
                                     launch phase, its elapsed time and the ETA
    GET  /api/swap/{id}/log          stored log lines (JSON), `after` / `limit` to page
    GET  /api/swap/{id}/stream       SSE: stored lines, then live ones, then a final state
    POST /api/swap/{id}/cancel       202; the engine stops what it launched within ~1 s
                                     (423 while someone else holds the swap lock)
    GET  /api/swaps                  recent swaps, newest first

The swaps themselves run in the engine (arbiter.engine.swaps.dispatch); these views only
read and write rows, so any process can serve them.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict

from arbiter import audit
from arbiter.engine.swaps.docker_argv import display
from arbiter.engine.swaps.journal import announce_cancelled_while_pending
from arbiter.engine.swaps.preflight import preflight, swap_hosts
from arbiter.engine.swaps.store import create_swap, request_cancel
from arbiter.models import ApiKey, Swap, SwapLogLine, SwapTransition
from catalog.models import CatalogModel
from coordination.leases import TOKEN_HEADER as LEASE_TOKEN_HEADER
from coordination.locks import TOKEN_HEADER as LOCK_TOKEN_HEADER
from coordination.locks import assert_may_change_gpu

router = Router(tags=["swaps"])

STREAM_POLL_SECONDS = 0.2
STREAM_BATCH = 500
KEEPALIVE_SECONDS = 15.0
PROGRESS_SECONDS = 5.0  # a launch phase's ETA, again this often while it lasts


# -- schemas ---------------------------------------------------------------------------
class SwapIn(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(..., min_length=1, max_length=63, description="Catalog key")
    host: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        description="Default: the model's default host. A multi-node model swaps on all of "
        "its tensor_parallel_hosts; naming one of them (or none) is the same swap",
    )
    dry_run: bool = Field(False, description="Pre-flight and the command only; nothing runs")


class ValidateIn(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)

    host: str | None = Field(None, min_length=1, max_length=63)


class SwapCreatedOut(Schema):
    id: int
    state: str
    dry_run: bool
    url: str
    stream_url: str
    log_url: str


class CheckOut(Schema):
    name: str
    ok: bool
    detail: str


class NodeCommandOut(Schema):
    host: str
    node_rank: int = Field(..., description="0: the head, which serves the API")
    command: str


class ValidateOut(Schema):
    ok: bool
    model: str
    host: str
    checks: list[CheckOut]
    command: str = Field(..., description="The head's (the only host's) launch command")
    argv: list[str]
    commands: list[NodeCommandOut] = Field(
        ..., description="Every host's launch command; a multi-node model has one per host"
    )


class TransitionOut(Schema):
    state: str
    at: datetime
    detail: str


class SwapSummaryOut(Schema):
    id: int
    model: str
    host: str = Field(..., description="The host it serves on (a multi-node model's head)")
    hosts: list[str] = Field(..., description="Every host the swap works on, the head first")
    service: str | None
    state: str
    kind: str = Field(
        ..., description="swap (asked for), or restart (the catalog model's restart policy)"
    )
    not_before: datetime | None = Field(
        ..., description="A restart waits until then (its backoff) before it starts"
    )
    final: bool
    dry_run: bool
    requested_by: str
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_seconds: float = Field(..., description="From the request to the end (or now)")
    progress: float = Field(..., description="0..1 through the successful path's phases")
    phase: str | None = Field(
        ..., description="The launch phase: pull / weights / load (null outside the launch)"
    )
    phase_label: str
    phase_elapsed_seconds: float | None = Field(..., description="Time in the current phase")
    eta_seconds: float | None = Field(
        ...,
        description="Time the launch will still take, from earlier swaps of the same model "
        "on the same host; null when there is no estimate yet",
    )
    phase_durations: dict[str, float] = Field(
        ..., description="Seconds each finished launch phase took"
    )
    url: str


class SwapOut(SwapSummaryOut):
    cancel_requested: bool
    lock_generation: int | None
    heartbeat_at: datetime | None
    checks: list[CheckOut]
    command: str
    argv: list[str]
    transitions: list[TransitionOut]
    log_lines: int
    stream_url: str
    log_url: str


class LogLineOut(Schema):
    seq: int
    at: datetime
    stream: str
    text: str
    node: str = Field(
        "", description="The host whose container printed it, in a multi-node swap ('' else)"
    )


class SwapLogOut(Schema):
    swap_id: int
    state: str
    final: bool
    lines: list[LogLineOut]


class SwapListQuery(Schema):
    limit: int = Field(20, ge=1, le=200)
    host: str | None = None
    state: str | None = None


class LogQuery(Schema):
    after: int = Field(0, ge=0, description="Only lines with a larger seq")
    limit: int = Field(1000, ge=1, le=10000)


# -- helpers ---------------------------------------------------------------------------
def _requested_by(request: HttpRequest) -> str:
    auth = getattr(request, "auth", None)
    if isinstance(auth, ApiKey):
        return f"key:{auth.name}"
    username = getattr(auth, "get_username", None)
    return username() if callable(username) else str(auth or "")


def swap_detail(swap_id: int) -> dict[str, Any]:
    swap = Swap.objects.for_display().by_id(swap_id)
    detail = swap.as_detail_dict()
    return {**detail, "command": display(detail["argv"]) if detail["argv"] else ""}


def begin_swap(
    request: HttpRequest, model: str, host: str | None, dry_run: bool, requested_by: str
) -> Swap:
    """Create a swap and its audit row, for the API and the catalog page's "Swap in"
    (the swap lock: the request's `X-Swap-Lock-Token`; a lease on the model it would
    replace: the request's `X-Arbiter-Lease-Token`)."""
    token = request.headers.get(LOCK_TOKEN_HEADER) or None
    lease_token = request.headers.get(LEASE_TOKEN_HEADER) or None
    with transaction.atomic():  # the swap and its audit row commit together
        swap = create_swap(
            model, host, dry_run, requested_by, lock_token=token, lease_token=lease_token
        )
        audit.record(
            request,
            "swap.start",
            "swap",
            swap.pk,
            after={"model": swap.model_key, "host": swap.host.name, "dry_run": swap.dry_run},
        )
    return swap


# -- routes ----------------------------------------------------------------------------
@router.post(
    "/swap",
    response={202: SwapCreatedOut},
    url_name="swap_create",
    summary="Start a swap (409 with the running swap's id while the host is busy)",
)
def start_swap(request: HttpRequest, payload: SwapIn):
    swap = begin_swap(request, payload.model, payload.host, payload.dry_run, _requested_by(request))
    return Status(202, swap)  # SwapCreatedOut reads the row: id, state, dry_run, urls


@router.post(
    "/swap/{key}/validate",
    response=ValidateOut,
    url_name="swap_validate",
    summary="Run the pre-flight checks and show the exact command, without executing it",
)
async def validate_swap(request: HttpRequest, key: str, payload: ValidateIn | None = None):
    host_name = payload.host if payload else None

    def resolve() -> str:
        return swap_hosts(CatalogModel.objects.by_key(key), host_name)[0].name  # a pair's head

    host = await sync_to_async(resolve)()
    result = await preflight(key, host)
    argv = list(result.plan.argv) if result.plan else []
    return {
        "ok": result.ok,
        "model": key,
        "host": host,
        "checks": result.as_dicts(),
        "command": display(argv) if argv else "",
        "argv": argv,
        # Every host's command, the head first (one entry for a single-host model).
        "commands": [
            {"host": node.host_name, "node_rank": node.node_rank, "command": node.command}
            for node in result.nodes
        ],
    }


@router.get("/swaps", response=list[SwapSummaryOut], url_name="swap_list", summary="Recent swaps")
def list_swaps(request: HttpRequest, filters: Query[SwapListQuery]):
    swaps = Swap.objects.for_display().newest_first()
    if filters.host:
        swaps = swaps.on_host(filters.host)
    if filters.state:
        swaps = swaps.filter(state=filters.state)
    return [swap.as_dict() for swap in swaps[: filters.limit]]


@router.get("/swap/{int:swap_id}", response=SwapOut, url_name="swap_detail", summary="One swap")
def get_swap_detail(request: HttpRequest, swap_id: int):
    return swap_detail(swap_id)


@router.get(
    "/swap/{int:swap_id}/log", response=SwapLogOut, url_name="swap_log", summary="A swap's log"
)
def get_swap_log(request: HttpRequest, swap_id: int, query: Query[LogQuery]):
    swap = Swap.objects.by_id(swap_id)
    lines = swap.log_lines.filter(seq__gt=query.after).order_by("seq")
    return {
        "swap_id": swap.pk,
        "state": swap.state,
        "final": swap.is_final,
        "lines": [line.as_dict() for line in lines[: query.limit]],
    }


@router.post(
    "/swap/{int:swap_id}/cancel",
    response={202: SwapSummaryOut},
    url_name="swap_cancel",
    summary="Cancel a swap: it stops and removes the container it launched",
)
def cancel_swap(request: HttpRequest, swap_id: int):
    return Status(202, cancel(request, swap_id).as_dict())


def cancel(request: HttpRequest, swap_id: int) -> Swap:
    """Ask the engine to stop a swap (a pending one ends at once), audited; NotFound when
    there is none. The one way in for the API route and the swap card's Cancel
    (dashboard/actions.py)."""
    # Stopping a swap changes what runs on the GPU: while the lock is held only its
    # holder's token may (423 otherwise, nothing flagged).
    with transaction.atomic():
        assert_may_change_gpu(request.headers.get(LOCK_TOKEN_HEADER) or None)
        state_before = Swap.objects.filter(pk=swap_id).values_list("state", flat=True).first()
        cancelled = request_cancel(swap_id)
        audit.record(
            request,
            "swap.cancel",
            "swap",
            swap_id,
            before={"state": state_before},
            after={"state": Swap.CANCELLED} if cancelled else {"cancel_requested": True},
        )
    if cancelled is not None:
        announce_cancelled_while_pending(cancelled)
    return Swap.objects.for_display().by_id(swap_id)


# -- Server-Sent Events ----------------------------------------------------------------
def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    """One event; JSON data keeps every payload on one `data:` line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def _stream_state(swap_id: int) -> tuple[dict[str, Any], str | None]:
    """The `state` event, and the launch phase (for `progress` events)."""
    swap = Swap.objects.filter(pk=swap_id).values("state", "error", "phase").first()
    if swap is None:  # deleted while someone watched: end the stream as "gone"
        swap = {"state": "deleted", "error": f"swap {swap_id} was deleted", "phase": ""}
    last = (
        SwapTransition.objects.filter(swap_id=swap_id)
        .order_by("-at", "-pk")
        .values("at", "detail")
        .first()
    ) or {"at": None, "detail": ""}
    return {
        "swap_id": swap_id,
        "state": swap["state"],
        "final": swap["state"] in (*Swap.FINAL_STATES, "deleted"),
        "error": swap["error"],
        "detail": last["detail"],
        "at": last["at"].isoformat() if last["at"] else None,
    }, swap["phase"] or None


def _stream_progress(swap_id: int) -> dict[str, Any] | None:
    """The launch's phase and ETA (`Swap.launch_progress`), for clients that wait."""
    swap = Swap.objects.filter(pk=swap_id).first()
    if swap is None or not swap.is_active or not swap.phase:
        return None
    launch = swap.launch_progress()
    return {
        "swap_id": swap_id,
        "phase": launch.phase,
        "phase_label": launch.phase_label,
        "phase_elapsed_seconds": launch.phase_elapsed_seconds,
        "eta_seconds": launch.eta_seconds,
    }


def _stream_lines(swap_id: int, after: int) -> list[dict[str, Any]]:
    lines = SwapLogLine.objects.filter(swap_id=swap_id, seq__gt=after).order_by("seq")
    return [
        {"swap_id": swap_id, "seq": seq, "at": at.isoformat(), "stream": stream, "text": text}
        for seq, at, stream, text in lines.values_list("seq", "at", "stream", "text")[:STREAM_BATCH]
    ]


async def swap_events(swap_id: int, after: int = 0) -> AsyncIterator[str]:
    """Stored lines, then live ones as the engine stores them, then the final state.

    It polls the database (every 0.2 s), so it works whichever process runs the swap.
    The state is read before the lines: once it is final, every line is already stored.
    During a launch phase a `progress` event (phase, ETA) comes when the phase changes and
    every PROGRESS_SECONDS; clients that do not know it skip it, as SSE says.
    """
    sent_state = None
    last_sent = time.monotonic()
    progress_phase, progress_at = None, 0.0
    while True:
        state, phase = await sync_to_async(_stream_state)(swap_id)
        lines = await sync_to_async(_stream_lines)(swap_id, after)
        for line in lines:
            after = line["seq"]
            yield sse("line", line, event_id=after)
        if len(lines) == STREAM_BATCH:
            continue  # more stored lines to send first
        if (state["state"], state["at"]) != sent_state:
            sent_state = (state["state"], state["at"])
            yield sse("state", state)
        if state["final"]:
            return
        if phase and (
            phase != progress_phase or time.monotonic() - progress_at >= PROGRESS_SECONDS
        ):
            progress_phase, progress_at = phase, time.monotonic()
            progress = await sync_to_async(_stream_progress)(swap_id)
            if progress is not None:
                yield sse("progress", progress)
        if lines:
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            last_sent = time.monotonic()
            yield ": keepalive\n\n"
        await asyncio.sleep(STREAM_POLL_SECONDS)


def _after(request: HttpRequest, after: int) -> int:
    # EventSource reconnects with Last-Event-ID (the last line's seq it saw).
    # ASCII digits only: str.isdigit() also accepts "²" (int() refuses it) and other
    # scripts' digits; a header longer than any seq would be is ignored too (int() of a
    # string of thousands of digits raises, Python's int_max_str_digits).
    header = request.headers.get("Last-Event-ID", "").strip()
    if header.isascii() and header.isdigit() and len(header) <= 18:
        return max(after, int(header))
    return after


@router.get(
    "/swap/{int:swap_id}/stream",
    response={200: None},
    url_name="swap_stream",
    summary="A swap's log as Server-Sent Events (`line` events, then a final `state` event)",
)
async def stream_swap(request: HttpRequest, swap_id: int, after: int = 0):
    await sync_to_async(Swap.objects.by_id)(swap_id)
    response = StreamingHttpResponse(
        swap_events(swap_id, _after(request, max(after, 0))), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # stream through nginx without buffering
    return response

"""The dashboard's coordination panels: the lock banner, scheduled jobs, webhook deliveries.

Each panel is one fragment with three uses: included by the page, returned by its poll
view, pushed over the socket. Its root element carries a stable id (`#lock-banner`,
`#schedule-panel`, `#webhook-panel`).

Pushes go to every dashboard, so a pushed fragment is the same for every viewer. The one
personal part - the force-release form, staff only - is therefore never pushed: a pushed
banner carries a slot that fetches it with the viewer's own session (`force_release_slot`).

Coordination code calls the `*_changed` hooks from `transaction.on_commit`; they never
raise into their caller. See "pushing" below for how a push from a worker thread reaches
the sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict
from zoneinfo import ZoneInfo

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db.models import Prefetch
from django.template.loader import render_to_string
from django.utils import timezone

from arbiter.engine.events import publish_fragment
from arbiter.errors import InvalidInput
from coordination import locks
from coordination.models import (
    DeliveryAttempt,
    LockAudit,
    ScheduledJob,
    WebhookDelivery,
    WebhookEndpoint,
)
from coordination.schedules import next_runs, schedule_warnings

log = logging.getLogger(__name__)

# The last force release stays on the banner this long (then the ticker hides it).
FORCE_RELEASE_SHOWN_FOR = timedelta(minutes=2)
NEXT_RUNS = 3
COLLISION_WINDOW = timedelta(minutes=10)
WARNING_HORIZON = timedelta(hours=24)
MAX_ENDPOINTS = 50
DELIVERIES_PER_ENDPOINT = 5


def format_countdown(seconds: float) -> str:
    """'9:58', '1:02:03' (static/js/dashboard.js formats the ticker the same way)."""
    whole = max(0, math.ceil(seconds))  # rounded up: 0:00 only when it is over
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _utc_label(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


# -- lock banner -----------------------------------------------------------------------


class ForceReleaseView(TypedDict):
    """The last force release, shown on the banner for FORCE_RELEASE_SHOWN_FOR."""

    actor: str
    at: datetime
    at_label: str
    reason: str
    old_holder: str
    old_generation: int
    new_generation: int
    lock_delay_seconds: int
    shown_until: datetime
    shown_seconds_left: float


class LockBannerView(TypedDict):
    """The swap lock as the banner shows it."""

    state: str  # held / blocked / free
    visible: bool
    holder: str
    purpose: str
    generation: int
    acquired_at: datetime | None
    expires_at: datetime | None
    expires_label: str
    seconds_left: float
    countdown: str
    blocked_until: datetime | None
    blocked_label: str
    blocked_seconds_left: float
    blocked_countdown: str
    last_force_release: ForceReleaseView | None


def _last_force_release(now: datetime) -> ForceReleaseView | None:
    audit = LockAudit.objects.filter(scope=locks.GLOBAL, at__gt=now - FORCE_RELEASE_SHOWN_FOR)
    row = audit.order_by("-at", "-pk").first()
    if row is None:
        return None
    return ForceReleaseView(
        actor=row.actor_name,
        at=row.at,
        at_label=_utc_label(row.at),
        reason=row.reason,
        old_holder=row.old_holder,
        old_generation=row.old_generation,
        new_generation=row.new_generation,
        lock_delay_seconds=row.lock_delay_seconds,
        shown_until=row.at + FORCE_RELEASE_SHOWN_FOR,
        shown_seconds_left=(row.at + FORCE_RELEASE_SHOWN_FOR - now).total_seconds(),
    )


def lock_banner_view(now: datetime | None = None) -> LockBannerView:
    now = now or timezone.now()
    lock = locks.current_lock()
    left = (lock.expires_at - now).total_seconds() if lock.held and lock.expires_at else 0.0
    blocked = lock.blocked_until
    blocked_left = (blocked - now).total_seconds() if blocked else 0.0
    notice = _last_force_release(now)
    state = "held" if lock.held else "blocked" if blocked else "free"
    return LockBannerView(
        state=state,
        visible=lock.held or blocked is not None or notice is not None,
        holder=lock.holder or "",
        purpose=lock.purpose or "",
        generation=lock.generation,
        acquired_at=lock.acquired_at,
        expires_at=lock.expires_at,
        expires_label=_utc_label(lock.expires_at) if lock.expires_at else "",
        seconds_left=max(0.0, left),
        countdown=format_countdown(left),
        blocked_until=blocked,
        blocked_label=_utc_label(blocked) if blocked else "",
        blocked_seconds_left=max(0.0, blocked_left),
        blocked_countdown=format_countdown(blocked_left),
        last_force_release=notice,
    )


def lock_banner(
    *, can_force_release: bool = False, personal: bool = False, oob: bool = False
) -> str:
    """`#lock-banner`. `personal`: rendered for one viewer (page, poll view), so the
    force-release form is inlined for staff; otherwise (pushes) a slot fetches it."""
    context = {
        "lock": lock_banner_view(),
        "can_force_release": can_force_release,
        "personal": personal,
        "oob": oob,
    }
    return render_to_string("dashboard/partials/lock_banner.html", context)


def force_release_slot(*, can_force_release: bool) -> str:
    """`#lock-force-release`: the form for staff while the lock is held, else empty."""
    context = {"lock": lock_banner_view(), "can_force_release": can_force_release}
    return render_to_string("dashboard/partials/lock_force_release.html", context)


# -- scheduled jobs --------------------------------------------------------------------


class RunView(TypedDict):
    utc: datetime
    utc_label: str
    local_label: str


class JobView(TypedDict):
    """A registered job as the panel shows it."""

    job_id: str
    name: str
    owner: str
    cron: str
    timezone: str
    target_model: str
    description: str
    next_runs: list[RunView]
    error: str
    warned: bool


class WarningView(TypedDict):
    kind: str  # lock_held / collision
    job_ids: list[str]
    message: str


def _run_view(run: datetime, zone: ZoneInfo) -> RunView:
    local = run.astimezone(zone)
    return RunView(
        utc=run,
        utc_label=f"{run.astimezone(UTC):%a %Y-%m-%d %H:%M} UTC",
        local_label=f"{local:%a %Y-%m-%d %H:%M} {local.tzname()}",
    )


def schedule_context(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    jobs = list(ScheduledJob.objects.select_related("target_model"))
    lock = locks.current_lock()
    held_until = lock.expires_at if lock.held else None
    warnings = [
        WarningView(kind=w.kind, job_ids=list(w.job_ids), message=w.message)
        for w in schedule_warnings(jobs, held_until, COLLISION_WINDOW, WARNING_HORIZON, now=now)
    ]
    warned = {job_id for warning in warnings for job_id in warning["job_ids"]}
    views: list[JobView] = []
    for job in jobs:
        runs: list[RunView] = []
        error = ""
        try:
            zone = ZoneInfo(job.timezone)
            runs = [_run_view(run, zone) for run in next_runs(job, NEXT_RUNS, after=now)]
        except (InvalidInput, LookupError, ValueError) as exc:
            # A stored row that no longer validates (a zone dropped from tzdata): say so.
            error = getattr(exc, "message", str(exc))
        views.append(
            JobView(
                job_id=job.job_id,
                name=job.name,
                owner=job.owner,
                cron=job.cron,
                timezone=job.timezone,
                target_model=job.target_model.key,
                description=job.description,
                next_runs=runs,
                error=error,
                warned=job.job_id in warned,
            )
        )
    first = min((view["next_runs"][0]["utc"] for view in views if view["next_runs"]), default=None)
    next_run = {"at": first, "seconds_left": (first - now).total_seconds()} if first else None
    return {"jobs": views, "schedule_warnings": warnings, "next_run": next_run}


def schedule_panel(*, oob: bool = False) -> str:
    """`#schedule-panel`."""
    context = {**schedule_context(), "oob": oob}
    return render_to_string("dashboard/partials/schedule_panel.html", context)


# -- webhooks --------------------------------------------------------------------------


class AttemptView(TypedDict):
    at: datetime
    at_label: str
    status_code: int | None
    latency_ms: float | None
    error: str
    excerpt: str


class DeliveryView(TypedDict):
    """One event for one endpoint, with its attempt log."""

    id: int
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    created_at: datetime
    created_label: str
    next_attempt_label: str
    excerpt: str  # the last attempt's response excerpt, or its error
    attempt_log: list[AttemptView]
    can_redeliver: bool


class EndpointView(TypedDict):
    id: int
    url: str
    description: str
    events: list[str]
    enabled: bool
    disabled_reason: str
    deliveries: list[DeliveryView]
    delivery_count: int


def _attempt_view(attempt: DeliveryAttempt) -> AttemptView:
    return AttemptView(
        at=attempt.at,
        at_label=_utc_label(attempt.at),
        status_code=attempt.status_code,
        latency_ms=attempt.latency_ms,
        error=attempt.error,
        excerpt=attempt.response_excerpt,
    )


def _delivery_view(delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> DeliveryView:
    log_rows = [_attempt_view(a) for a in delivery.attempt_log.all()]
    last = log_rows[-1] if log_rows else None
    pending = delivery.status == WebhookDelivery.PENDING
    return DeliveryView(
        id=delivery.pk,
        event_id=delivery.event.event_id,
        event_type=delivery.event.event_type,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        created_at=delivery.created_at,
        created_label=_utc_label(delivery.created_at),
        next_attempt_label=_utc_label(delivery.next_attempt_at) if pending else "",
        excerpt=(last["excerpt"] or last["error"]) if last else "",
        attempt_log=log_rows,
        can_redeliver=endpoint.enabled,
    )


def webhook_context() -> dict[str, Any]:
    endpoints = list(WebhookEndpoint.objects.all()[:MAX_ENDPOINTS])
    views = []
    pending = False
    for endpoint in endpoints:
        deliveries = (
            WebhookDelivery.objects.filter(endpoint=endpoint)
            .select_related("event")
            .prefetch_related(Prefetch("attempt_log", queryset=DeliveryAttempt.objects.all()))
            .order_by("-created_at", "-pk")[:DELIVERIES_PER_ENDPOINT]
        )
        shown = [_delivery_view(d, endpoint) for d in deliveries]
        pending = pending or any(d["status"] == WebhookDelivery.PENDING for d in shown)
        views.append(
            EndpointView(
                id=endpoint.pk,
                url=endpoint.url,
                description=endpoint.description,
                events=list(endpoint.events),
                enabled=endpoint.enabled,
                disabled_reason=endpoint.disabled_reason,
                deliveries=shown,
                delivery_count=WebhookDelivery.objects.filter(endpoint=endpoint).count(),
            )
        )
    return {
        "endpoints": views,
        "endpoint_total": WebhookEndpoint.objects.count(),
        "deliveries_pending": pending,
    }


def webhook_panel(*, oob: bool = False) -> str:
    """`#webhook-panel`."""
    context = {**webhook_context(), "oob": oob}
    return render_to_string("dashboard/partials/webhook_panel.html", context)


# -- the three together ----------------------------------------------------------------


def page_context(user: Any) -> dict[str, Any]:
    """What dashboard/index.html needs to include the three panels for `user`."""
    return {
        "lock": lock_banner_view(),
        "can_force_release": bool(getattr(user, "is_staff", False)),
        "personal": True,
        **schedule_context(),
        **webhook_context(),
    }


def coordination_panels(*, oob: bool = False) -> str:
    """All three, for the socket's full state on (re)connect (never personal)."""
    _remember_socket_loop()
    return lock_banner(oob=oob) + schedule_panel(oob=oob) + webhook_panel(oob=oob)


# -- pushing ---------------------------------------------------------------------------
# With a networked layer (Redis) any thread of any process reaches every socket, and
# async_to_sync does the send on a loop of its own.
#
# The in-memory layer (the embedded `serve`) is different: it lives on the event loop that
# serves the sockets and its queues are not thread-safe, so a send must run ON that loop.
# async_to_sync gets there only from sync code that loop called (a sync view, sync_to_async)
# - not from a huey consumer thread or a webhook sender thread, where it would start a
# loop of its own. So the loop is remembered when a socket connects (its full state is
# rendered by sync code that loop called) and every push is handed to it thread-safely.
# Until a socket has connected in this process there is nobody to push to; a push made in
# another process (a separate `run_huey` on the in-memory layer) is lost, and the panels
# catch up by polling while their socket is down, and when a countdown ends.
_socket_loop: asyncio.AbstractEventLoop | None = None


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _remember_socket_loop() -> None:
    """Called while a socket's full state is rendered: note the loop that serves it."""
    global _socket_loop
    if _layer_is_shared():
        return
    try:
        asyncio.get_running_loop()
        return  # a loop's own thread: it was not called from another loop
    except RuntimeError:
        pass
    # From sync code a loop called, async_to_sync runs this on that loop; otherwise on a
    # throwaway loop that has stopped by the time it returns.
    loop = async_to_sync(_running_loop)()
    if loop.is_running():
        _socket_loop = loop


def _layer_is_shared() -> bool:
    """A networked layer (Redis): any thread of any process reaches every socket."""
    layer = get_channel_layer()
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


def _log_failed_push(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("pushing the coordination panels failed", exc_info=future.exception())


def _push(*renderers: Callable[..., str]) -> None:
    """Render the panels (out-of-band) and publish them; never raises, never waits on
    the sockets' loop."""
    try:
        if _layer_is_shared():
            html = "".join(render(oob=True) for render in renderers)
            async_to_sync(publish_fragment)(html)
            return
        loop = _socket_loop
        if get_channel_layer() is None or loop is None or not loop.is_running():
            return  # no socket in this process (yet): nobody to push to
        html = "".join(render(oob=True) for render in renderers)
        future = asyncio.run_coroutine_threadsafe(publish_fragment(html), loop)
        future.add_done_callback(_log_failed_push)
    except Exception:  # a dashboard push must never disturb the lock or a delivery
        log.warning("pushing the coordination panels failed", exc_info=True)


def lock_changed() -> None:
    """After an acquire, extend or release committed: the banner and the schedule
    panel (its "fires while the lock is held" warnings follow the lock)."""
    _push(lock_banner, schedule_panel)


def lock_force_released() -> None:
    """After a force release committed: also the webhook panel (its event is pending)."""
    _push(lock_banner, schedule_panel, webhook_panel)


def schedules_changed() -> None:
    """After a job was registered, updated or deleted."""
    _push(schedule_panel)


def webhooks_changed() -> None:
    """After a delivery attempt was logged (in a webhook sender thread)."""
    _push(webhook_panel)

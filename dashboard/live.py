"""The live dashboard's one set of receivers: domain events in, fragments out to sockets.

The domain sends the signals of `arbiter.events` and knows nothing of HTML or sockets.
Here each event renders the panels it changes (out-of-band, by their stable ids) and
`publish` hands them to every dashboard socket (the group `DASHBOARD_GROUP`; each socket
cuts out the actions its viewer may not take, dashboard/consumers.py).

`publish` works from anywhere an event is sent:
- on an event loop (the engine's swaps, probes): a task on that loop, not awaited;
- in a database thread of that loop (`sync_to_async`: the sampler's writes, sync views
  under daphne): handed to that loop thread-safely;
- in a thread of its own (the webhook senders, huey): with a networked layer (Redis)
  any thread reaches every socket of every process, so it sends on a loop of its own;
  the in-memory layer lives on the loop that serves the sockets and its queues are not
  thread-safe, so it is handed to that loop, remembered when a socket connected. In a
  process where no socket ever connected there is nobody to push to; the panels catch up
  by polling while their socket is down.
A push never raises into the domain and never waits on a socket.

Swap events come in bursts (a chatty container log): `SwapPanelPusher` folds each
swap's events into at most one push per `PUSH_INTERVAL`, rendered then from the
database, so the last state is never lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypedDict

from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer

from arbiter import events
from dashboard.panels.cluster import clients_panel, host_card, services_panel
from dashboard.panels.leases import lease_panel
from dashboard.panels.lock_banner import lock_banner
from dashboard.panels.schedules import schedule_panel
from dashboard.panels.swaps import swap_current, swap_panel
from dashboard.panels.webhooks import webhook_panel

log = logging.getLogger(__name__)

DASHBOARD_GROUP = "dashboard"
PUSH_INTERVAL = 0.25  # seconds between two pushes caused by one swap


class DashboardMessage(TypedDict):
    type: str  # always "dashboard.fragment"
    html: str  # a fragment whose root element has a stable id and hx-swap-oob


async def publish_fragment(html: str) -> None:
    """Send one rendered fragment to every dashboard socket (awaits the channel layer)."""
    layer = get_channel_layer()
    if layer is None:
        return
    await layer.group_send(DASHBOARD_GROUP, DashboardMessage(type="dashboard.fragment", html=html))


# -- publishing from anywhere -----------------------------------------------------------
_socket_loop: asyncio.AbstractEventLoop | None = None
_pending: set[asyncio.Task[None]] = set()  # tasks must be referenced until they end


def remember_socket_loop(loop: asyncio.AbstractEventLoop) -> None:
    """A dashboard socket connected on `loop`: pushes from plain threads go there."""
    global _socket_loop
    _socket_loop = loop


def _layer_is_shared() -> bool:
    """A networked layer (Redis): any thread of any process reaches every socket."""
    layer = get_channel_layer()
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


def _loop_of_this_thread() -> asyncio.AbstractEventLoop | None:
    """The loop that called into this thread through sync_to_async, if it still runs
    (asgiref keeps it in `SyncToAsync.threadlocal` for its own AsyncToSync)."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return loop if loop is not None and loop.is_running() else None


def _log_failure(future: concurrent.futures.Future[None] | asyncio.Task[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("pushing to the dashboards failed", exc_info=future.exception())


def run_soon(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run the coroutine `make()` on the loop that can reach the sockets; never waits
    for it and never raises."""
    if get_channel_layer() is None:
        return
    try:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            task = running.create_task(make())
            _pending.add(task)
            task.add_done_callback(_pending.discard)
            task.add_done_callback(_log_failure)
            return
        loop = _loop_of_this_thread() or _socket_loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(make(), loop).add_done_callback(_log_failure)
        elif _layer_is_shared():
            async_to_sync(make)()
        # else: the in-memory layer and no loop that serves sockets here: nobody to push to
    except Exception:  # a dashboard push must never disturb the domain
        log.warning("pushing to the dashboards failed", exc_info=True)


def publish(*renderers: Callable[..., str]) -> None:
    """Render the panels out-of-band, here and now, and publish them (`run_soon`)."""
    if get_channel_layer() is None:
        return
    if not _layer_is_shared() and _socket_loop is None and _loop_of_this_thread() is None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # nobody to push to: do not render for nobody
    try:
        html = "".join(render(oob=True) for render in renderers)
    except Exception:
        log.warning("rendering a dashboard push failed", exc_info=True)
        return
    run_soon(lambda: publish_fragment(html))


# -- swaps ------------------------------------------------------------------------------
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
    Only `#swap-current` is pushed for a log line or a phase change, the whole panel when
    a swap ends (the history changes only then).
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


def on_swap_progressed(sender: Any, *, swap_id: int, ended: bool, **kwargs: Any) -> None:
    """On the engine's loop: a throttled push. Elsewhere (a view cancelled a pending
    swap that no engine task runs): the whole panel, once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        publish(swap_panel)
        return
    try:
        pusher = _pushers.get(loop)
        if pusher is None:
            pusher = _pushers[loop] = SwapPanelPusher()
        pusher.changed(swap_id, ended=ended)
    except Exception:
        log.warning("swap %s: scheduling a swap panel push failed", swap_id, exc_info=True)


# -- hosts, services, coordination ------------------------------------------------------
def on_host_sampled(sender: Any, *, host_id: int, latest: Any = None, **kwargs: Any) -> None:
    """The host's card, from the rows just written (sent from the sampler's database
    thread, so rendering costs no extra trip)."""
    publish(lambda oob: host_card(host_id, latest))


def on_services_changed(sender: Any, **kwargs: Any) -> None:
    # The broker's per-client counts ride along: they change with every request, too
    # often for a push each.
    publish(services_panel, clients_panel)


def on_lock_changed(sender: Any, *, forced: bool = False, **kwargs: Any) -> None:
    """The banner and the schedule panel (its "fires while the lock is held" warnings
    follow the lock); after a force release also the webhook panel (its event is
    pending)."""
    if forced:
        publish(lock_banner, schedule_panel, webhook_panel)
    else:
        publish(lock_banner, schedule_panel)


def on_leases_changed(sender: Any, **kwargs: Any) -> None:
    """The lease panel (next to the lock banner)."""
    publish(lease_panel)


def on_schedules_changed(sender: Any, **kwargs: Any) -> None:
    publish(schedule_panel)


def on_webhooks_changed(sender: Any, **kwargs: Any) -> None:
    publish(webhook_panel)


RECEIVERS: dict[Any, Callable[..., None]] = {
    events.swap_progressed: on_swap_progressed,
    events.host_sampled: on_host_sampled,
    events.services_changed: on_services_changed,
    events.lock_changed: on_lock_changed,
    events.leases_changed: on_leases_changed,
    events.schedules_changed: on_schedules_changed,
    events.webhooks_changed: on_webhooks_changed,
}


def connect() -> None:
    """Called once by the dashboard app's `ready`."""
    for signal, receiver in RECEIVERS.items():
        signal.connect(receiver, dispatch_uid=f"dashboard-live-{receiver.__name__}")

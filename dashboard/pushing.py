"""Pushing the panels to every dashboard socket, from any thread (see below)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from arbiter.engine.events import publish_fragment
from dashboard.panels.lock_banner import lock_banner
from dashboard.panels.schedules import schedule_panel
from dashboard.panels.webhooks import webhook_panel

log = logging.getLogger(__name__)

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


def remember_socket_loop() -> None:
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

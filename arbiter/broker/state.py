"""The broker's in-process state, one per event loop.

Futures, the HTTP client's pool and the counters belong to the loop that serves the
requests (daphne runs one; a test's AsyncClient runs the app on the test's own loop),
so they are kept per loop and dropped with it. With REDIS_URL the loop's Redis client
(`shared_limits`) also carries what the processes share: the per-model limit, requests
in flight per service and their last finishes (eviction and idle unload read them
through `activity.current()`), and the per-client counters `accounting` collects.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

import httpx
from django.conf import settings

from arbiter.broker.accounting import accounting
from arbiter.broker.keys import KeyCache
from arbiter.broker.limits import ConcurrencyLimits, ServiceActivity
from arbiter.broker.loading import Loads
from arbiter.broker.proxy import new_client, new_transport
from arbiter.broker.queue import WaitQueues
from arbiter.broker.residency import Residency
from arbiter.broker.shared_limits import SharedLimits
from arbiter.broker.swapwait import SwapWatcher
from arbiter.broker.table import RouteTableCache
from arbiter.broker.upstream import LeanTransport


@dataclass
class BrokerState:
    """Everything the broker keeps between requests in one event loop."""

    table: RouteTableCache = field(default_factory=RouteTableCache)
    limits: ConcurrencyLimits = field(default_factory=ConcurrencyLimits)
    queue: WaitQueues = field(default_factory=WaitQueues)
    activity: ServiceActivity = field(default_factory=ServiceActivity)
    watcher: SwapWatcher = field(default_factory=SwapWatcher)
    keys: KeyCache = field(default_factory=KeyCache)
    _transport: LeanTransport | None = None
    _client: httpx.AsyncClient | None = None
    residency: Residency = field(init=False)
    loads: Loads = field(init=False)
    # With REDIS_URL the per-model limit holds across processes (`shared_limits`), and
    # service activity and client counts are shared; without, `limits` bounds this
    # process alone and the figures stay here, at no cost.
    shared_limits: SharedLimits | None = field(init=False)

    def __post_init__(self) -> None:
        self.residency = Residency(self.activity, lambda: self.client, self.table.invalidate)
        self.loads = Loads(self.watcher, self.residency)
        redis_url = getattr(settings, "REDIS_URL", "")
        self.shared_limits = SharedLimits(redis_url) if redis_url else None
        if self.shared_limits is not None:
            self.activity.others = self.shared_limits.others_activity
            accounting.on_pending = send_client_counts

    @property
    def transport(self) -> LeanTransport:
        """The connection pool to the backends: proxied requests go straight to it."""
        if self._transport is None:
            self._transport = new_transport()
        return self._transport

    @property
    def client(self) -> httpx.AsyncClient:
        """A client over the same pool, for the broker's own calls to backends."""
        if self._client is None:
            self._client = new_client(self.transport)
        return self._client

    async def aclose(self) -> None:
        if self.shared_limits is not None:
            await self.shared_limits.aclose()
        if self._client is not None:
            await self._client.aclose()  # closes the transport with it
        elif self._transport is not None:
            await self._transport.aclose()


_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BrokerState] = (
    weakref.WeakKeyDictionary()
)


def get_state() -> BrokerState:
    """This event loop's broker state (created on first use)."""
    loop = asyncio.get_running_loop()
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = BrokerState()
    return state


def send_client_counts() -> None:
    """`accounting`'s hook with REDIS_URL: this loop's Redis client sends the new counts
    within a second."""
    try:
        state = get_state()
    except RuntimeError:  # no running loop: the next count made on one schedules it
        return
    if state.shared_limits is None:
        accounting.take_pending()  # this loop shares nothing (tests that drop REDIS_URL)
    else:
        state.shared_limits.flush_soon(accounting)


async def reset_state() -> None:
    """Forget this loop's state, closing its HTTP client (tests)."""
    state = _states.pop(asyncio.get_running_loop(), None)
    if state is not None:
        await state.aclose()

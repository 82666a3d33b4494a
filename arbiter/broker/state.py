"""The broker's in-process state, one per event loop.

Futures, the HTTP client's pool and the counters belong to the loop that serves the
requests (daphne runs one; a test's AsyncClient runs the app on the test's own loop),
so they are kept per loop and dropped with it.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

import httpx

from arbiter.broker.keys import KeyCache
from arbiter.broker.limits import ConcurrencyLimits, ServiceActivity, WaitQueue
from arbiter.broker.loading import Loads
from arbiter.broker.proxy import new_client
from arbiter.broker.residency import Residency
from arbiter.broker.swapwait import SwapWatcher
from arbiter.broker.table import RouteTableCache


@dataclass
class BrokerState:
    """Everything the broker keeps between requests in one event loop."""

    table: RouteTableCache = field(default_factory=RouteTableCache)
    limits: ConcurrencyLimits = field(default_factory=ConcurrencyLimits)
    queue: WaitQueue = field(default_factory=WaitQueue)
    activity: ServiceActivity = field(default_factory=ServiceActivity)
    watcher: SwapWatcher = field(default_factory=SwapWatcher)
    keys: KeyCache = field(default_factory=KeyCache)
    _client: httpx.AsyncClient | None = None
    residency: Residency = field(init=False)
    loads: Loads = field(init=False)

    def __post_init__(self) -> None:
        self.residency = Residency(self.activity, lambda: self.client)
        self.loads = Loads(self.watcher, self.residency)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = new_client()
        return self._client


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


async def reset_state() -> None:
    """Forget this loop's state, closing its HTTP client (tests)."""
    state = _states.pop(asyncio.get_running_loop(), None)
    if state is not None and state._client is not None:
        await state._client.aclose()

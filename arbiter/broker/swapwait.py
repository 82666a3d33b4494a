"""Waiting for a swap to finish: one poller per swap, however many requests wait on it.

The swap runs in the engine (this process's or another's); the database is where its
state is, so the poller reads it. Waiters time out on their own; the poller stops when
the swap is final or nobody waits any more.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async

from arbiter.broker.background import spawn
from arbiter.models import Swap

POLL_INTERVAL = 0.2


@dataclass(frozen=True)
class SwapEnd:
    """How a swap ended, and when (monotonic) the broker saw it."""

    id: int
    state: str
    error: str
    seen_at: float

    @property
    def complete(self) -> bool:
        return self.state == Swap.COMPLETE


@sync_to_async
def _read_state(swap_id: int) -> tuple[str, str] | None:
    return Swap.objects.filter(pk=swap_id).values_list("state", "error").first()


class SwapWatcher:
    """`wait(swap_id, timeout)` for any number of concurrent waiters per swap."""

    def __init__(self, interval: float = POLL_INTERVAL) -> None:
        self.interval = interval
        self.watches: dict[int, asyncio.Future[SwapEnd]] = {}
        self.waiters: dict[int, int] = {}

    async def wait(self, swap_id: int, timeout: float) -> SwapEnd:
        """The swap's end; raises TimeoutError when it takes longer than `timeout`."""
        watch = self.watches.get(swap_id)
        if watch is None or (watch.done() and watch.exception() is not None):
            watch = self.watches[swap_id] = spawn(self._poll(swap_id))
        self.waiters[swap_id] = self.waiters.get(swap_id, 0) + 1
        try:
            return await asyncio.wait_for(asyncio.shield(watch), max(0.0, timeout))
        finally:
            self.waiters[swap_id] -= 1
            if not self.waiters[swap_id]:
                del self.waiters[swap_id]
                if not watch.done():
                    watch.cancel()  # nobody waits any more: stop polling
                self.watches.pop(swap_id, None)

    async def _poll(self, swap_id: int) -> SwapEnd:
        while True:
            row = await _read_state(swap_id)
            if row is None:  # deleted: as good as cancelled
                return SwapEnd(
                    swap_id, Swap.CANCELLED, "the swap no longer exists", time.monotonic()
                )
            state, error = row
            if state in Swap.FINAL_STATES:
                return SwapEnd(swap_id, state, error, time.monotonic())
            await asyncio.sleep(self.interval)

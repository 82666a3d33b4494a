"""The swap dispatcher: claims pending swaps and orphaned in-flight ones, runs each.

Claims are conditional UPDATEs with a row count (`swap_store.claim_pending`,
`claim_stale`), so several engine processes can run dispatchers on one database and
each swap is run by exactly one. A swap whose heartbeat is stale was left by an engine
that died: it is re-attached (`SwapRunner(resume=True)`), never failed for that alone.
The engine runs in exactly one process (`arbiter.engine.leader`), so a dispatcher that
starts — at start-up, or in the process that just took the leadership over — re-attaches
every in-flight swap at once instead of after the stale delay: nobody else runs them.
A new swap is picked up at once: its creation wakes the dispatcher (`swap_wakeup`); the
poll remains for stale swaps and as the fallback.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.conf import settings

from arbiter.engine.swaps import store
from arbiter.engine.swaps.machine import SwapRunner
from arbiter.engine.swaps.wakeup import SwapWakeup

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5
DEFAULT_STALE_SECONDS = 10.0  # a running swap beats every ~1 s


class SwapDispatcher:
    """One per engine process; `run_forever` is an engine loop."""

    def __init__(self, interval: float = POLL_INTERVAL, stale_after: float | None = None) -> None:
        self.interval = interval
        self.stale_after = (
            stale_after
            if stale_after is not None
            else float(getattr(settings, "ARBITER_SWAP_STALE_SECONDS", DEFAULT_STALE_SECONDS))
        )
        self.tasks: dict[int, asyncio.Task[str]] = {}
        self._started = False

    async def tick(self) -> list[int]:
        """One round: reap finished runners, claim work, start runners; the ids started."""
        for swap_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[swap_id]
                if not task.cancelled() and task.exception() is not None:
                    log.error("swap %s runner crashed", swap_id, exc_info=task.exception())
        stale_after = self.stale_after if self._started else 0.0
        self._started = True
        resumed = await sync_to_async(store.claim_stale)(stale_after, set(self.tasks))
        for swap_id in resumed:
            log.info("re-attaching swap %s", swap_id)
            self.start(swap_id, resume=True)
        claimed = await sync_to_async(store.claim_pending)()
        for swap_id in claimed:
            self.start(swap_id)
        return resumed + claimed

    def start(self, swap_id: int, *, resume: bool = False) -> asyncio.Task[str]:
        task = asyncio.create_task(
            SwapRunner(swap_id, resume=resume).run(), name=f"swap-runner-{swap_id}"
        )
        self.tasks[swap_id] = task
        return task

    async def run_forever(self) -> None:
        wakeup = SwapWakeup()  # a new swap starts the next round at once (swap_wakeup)
        wakeup.start()
        try:
            while True:
                try:
                    await self.tick()
                except Exception:  # e.g. the database is locked: the next round retries
                    log.exception("swap dispatch round failed")
                await wakeup.wait(self.interval)
        finally:
            await wakeup.close()
            await self.stop()

    async def stop(self) -> None:
        """Stop running swaps where they are (a later engine re-attaches them)."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()

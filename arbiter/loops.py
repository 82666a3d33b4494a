"""The composition root of the loops that run inside the serving process: GPU sampling,
health probes, swaps, warm-ups ahead of scheduled jobs, the broker's idle unloads (on the
loop that serves the broker's requests, whose activity counters they read) and the
retention of the tables kept for days. `manage.py serve` starts them on the leader
(arbiter.engine.leader)."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async

from arbiter import audit
from arbiter.broker.idle import IdleUnloader
from arbiter.engine import ssh
from arbiter.engine.orphans import OrphanScanner
from arbiter.engine.probes import Prober
from arbiter.engine.sampler import Sampler
from arbiter.engine.supervisor import Supervisor
from arbiter.engine.swaps import store as swap_store
from arbiter.engine.swaps.dispatch import SwapDispatcher
from coordination.schedules.warm_ups import WarmUpLoop

log = logging.getLogger(__name__)
RESTART_DELAY_SECONDS = 2.0
RETENTION_EVERY_SECONDS = 3600.0


@sync_to_async
def prune_retained() -> int:
    """The tables kept for days: the audit trail and the logs of old swaps."""
    return audit.prune() + swap_store.prune_logs()


async def prune_retained_forever() -> None:
    while True:
        await prune_retained()
        await asyncio.sleep(RETENTION_EVERY_SECONDS)


async def _supervised(name: str, loop_factory: Callable[[], Awaitable[None]]) -> None:
    """Run one loop forever; a crash is logged and the loop restarted, never silently lost."""
    while True:
        try:
            await loop_factory()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting in %g s", name, RESTART_DELAY_SECONDS)
            await asyncio.sleep(RESTART_DELAY_SECONDS)


async def run_engine() -> None:
    """Run every engine loop until cancelled."""
    sampler, prober, swaps, idle = Sampler(), Prober(), SwapDispatcher(), IdleUnloader()
    # Swaps and holds models ahead of scheduled jobs' runs; never runs a job.
    warm_ups = WarmUpLoop()
    # Restarts models that crashed after they were ready (the catalog's restart policy).
    supervisor = Supervisor()
    # Lists containers labelled as Arbiter's that nothing accounts for (never removes).
    orphans = OrphanScanner()
    try:
        await asyncio.gather(
            _supervised("sampler", sampler.run_forever),
            _supervised("prober", prober.run_forever),
            _supervised("swaps", swaps.run_forever),
            _supervised("idle-unload", idle.run_forever),
            _supervised("warm-ups", warm_ups.run_forever),
            _supervised("restart-policy", supervisor.run_forever),
            _supervised("orphan-scan", orphans.run_forever),
            _supervised("retention", prune_retained_forever),
        )
    finally:
        await ssh.get_pool().close()

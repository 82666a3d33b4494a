"""Idle unloads: a catalog model with `idle_unload_seconds` gives its memory back once
its service has gone that long without a request (see `residency` for how an unload and
the next request's reload work across processes). A loop of the serving process, started
by `arbiter.loops`, on the loop that serves the broker's requests: it reads their
activity counters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
from asgiref.sync import sync_to_async

from arbiter.broker.limits import ActivitySnapshot, ServiceActivity
from arbiter.broker.loading import service_leased
from arbiter.broker.residency import Residency, idle_check_seconds, lock_free, may_sleep
from arbiter.broker.state import get_state
from arbiter.broker.table import RouteTable, ServiceRoute

log = logging.getLogger(__name__)


class IdleUnloader:
    """Unload services whose catalog model has sat idle past its `idle_unload_seconds`.

    Idle since = the later of the service's last finished request and the moment this
    loop first saw it serving the model (so a model swapped in gets its full TTL).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # epoch seconds, like ServiceActivity.last_finished
        self.first_seen: dict[tuple[str, str], float] = {}

    async def run_forever(self) -> None:
        while True:
            state = get_state()
            await self.sweep(await state.table.get(), state.residency)
            await asyncio.sleep(idle_check_seconds())

    def due(
        self, table: RouteTable, activity: ActivitySnapshot | ServiceActivity, now: float
    ) -> list[ServiceRoute]:
        """The services to unload now (a pure function of its inputs and `first_seen`)."""
        entries = {e.served_name: e for e in table.catalog}
        watched: set[tuple[str, str]] = set()
        due = []
        for service in table.services:
            entry = entries.get(service.loaded_model)
            ttl = entry.idle_unload_seconds if entry else None
            if not ttl or not service.unload_route or service.health != "up":
                continue
            if service.swap_id is not None or service.unloaded_at is not None:
                continue
            if not may_sleep(service, entry):
                continue
            key = (service.name, service.loaded_model)
            watched.add(key)
            seen = self.first_seen.setdefault(key, now)
            idle_since = max(seen, activity.last_finished.get(service.name, 0.0))
            if activity.in_flight.get(service.name, 0) == 0 and now - idle_since >= ttl:
                due.append(service)
        for key in set(self.first_seen) - watched:
            del self.first_seen[key]
        return due

    async def sweep(self, table: RouteTable, residency: Residency) -> list[str]:
        """Unload what is due; return the names of the services unloaded."""
        # Every process's requests and last finishes with REDIS_URL, else this one's.
        activity = residency.activity
        due = self.due(table, await activity.current(), self.clock())
        if not due or not await sync_to_async(lock_free)():
            return []
        unloaded = []
        for service in due:
            if activity.in_flight.get(service.name, 0):  # a request arrived meanwhile
                continue
            if await sync_to_async(service_leased)(service.name):
                continue  # a lease holds its model (coordination.leases)
            try:
                done = await residency.unload(
                    service.name,
                    service.url(service.unload_route),
                    "idle",
                    service.unload_method,
                    service.unload_body,
                )
            except httpx.HTTPError as exc:
                log.warning(
                    "broker: idle unload of %s failed: %s", service.name, type(exc).__name__
                )
                continue
            if not done:
                continue
            log.info(
                "broker: unloaded %s on %s (%s idle)",
                service.name,
                service.host_name,
                service.loaded_model,
            )
            unloaded.append(service.name)
        return unloaded

"""Which services hold their model: unload the idle ones, reload on the next request.

A service with an `unload_route` (vLLM's `/sleep`, an Ollama-style unload) can give its
memory back without a swap; one with a `load_route` (vLLM's `/wake_up`) is asked to take
it again before a request is sent to it. The broker unloads services in two cases:
- eviction, to make room for an on-demand load (`loading`);
- idle TTL: a catalog model with `idle_unload_seconds` is unloaded once its service has
  gone that long without a request (`IdleUnloader`, an engine loop of the serving
  process), never while a request is in flight or a swap runs on the service, and never
  while someone else holds the swap lock.
A reload takes GPU memory back, so while someone else holds the lock it is refused
(423, like a load) and the request is not sent.

What is unloaded is kept in the process (`ServiceActivity.unloaded`, checked on every
request) and recorded on the service row (`Service.unloaded_at`: the dashboard and
`/api/status` show it, a restarted process starts from it, a completed swap clears it).
Several broker processes do not tell each other: one that did not unload a service
sends its requests without reloading first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from arbiter.broker import metrics
from arbiter.broker.background import spawn
from arbiter.broker.errors import BackendUnavailable, from_arbiter_error
from arbiter.broker.limits import ServiceActivity
from arbiter.broker.loading import assert_lock_free
from arbiter.broker.table import RouteTable, ServiceRoute
from arbiter.errors import Locked
from arbiter.models import Service

log = logging.getLogger(__name__)

ROUTE_TIMEOUT = 30.0  # an unload or a reload: the backend moves weights in or out
RELOAD_RETRY_AFTER = 10
DEFAULT_IDLE_CHECK_SECONDS = 5.0


def record_unloaded(name: str, unloaded: bool) -> None:
    Service.objects.filter(name=name).update(unloaded_at=timezone.now() if unloaded else None)


def recorded_unloaded() -> set[str]:
    return set(Service.objects.filter(unloaded_at__isnull=False).values_list("name", flat=True))


class Residency:
    """Unloads and reloads through the services' routes, one at a time per service."""

    def __init__(self, activity: ServiceActivity, client: Callable[[], httpx.AsyncClient]):
        self.activity = activity
        self.client = client
        self.reloading: dict[str, asyncio.Future[None]] = {}
        self.unloading: dict[str, asyncio.Future[None]] = {}
        self.seeding: asyncio.Future[None] | None = None

    async def ensure_seeded(self) -> None:
        """Once per process: start from what an earlier process left unloaded."""
        if self.seeding is None:
            self.seeding = spawn(self._seed())
        if not self.seeding.done():
            await asyncio.shield(self.seeding)

    async def _seed(self) -> None:
        try:
            self.activity.unloaded |= await sync_to_async(recorded_unloaded)()
        except DatabaseError:
            log.exception("broker: could not read which services are unloaded")

    async def remember(self, name: str, unloaded: bool) -> None:
        """Record on the service row what already happened (and what this process acts
        on): a database error is logged, not raised, so a request or a sweep does not
        fail for it. Only the dashboard and a restarted process see the old value."""
        try:
            await sync_to_async(record_unloaded)(name, unloaded)
        except DatabaseError:
            log.exception(
                "broker: could not record %s as %s", name, "unloaded" if unloaded else "loaded"
            )

    async def unload(self, name: str, url: str, reason: str) -> None:
        """POST an unload route (raises httpx.HTTPError); `reason` labels the metric."""
        done = self.unloading[name] = asyncio.get_running_loop().create_future()
        try:
            response = await self.client().post(url, timeout=ROUTE_TIMEOUT)
            response.raise_for_status()
            self.activity.unloaded.add(name)
            metrics.UNLOADS.labels(reason).inc()
            await self.remember(name, True)
        finally:
            if self.unloading.get(name) is done:
                del self.unloading[name]
            done.set_result(None)

    async def ensure_loaded(self, service: ServiceRoute) -> None:
        """Before a request goes to `service`: reload it if the broker unloaded it.

        The caller has already counted the request in flight, so nothing starts
        unloading the service meanwhile; an unload already under way is waited for. A
        service without a load_route reloads on its own (or is a backend that needs
        nothing): the request simply goes.
        """
        await self.ensure_seeded()
        name = service.name
        unloading = self.unloading.get(name)
        if unloading is not None:
            await asyncio.shield(unloading)
        reload = self.reloading.get(name)
        if reload is None:
            if name not in self.activity.unloaded:
                return
            if not service.load_route:
                self.activity.unloaded.discard(name)
                await self.remember(name, False)
                return
            reload = self.reloading[name] = spawn(self._reload(service))
            reload.add_done_callback(lambda done: self._forget(name, done))
        await asyncio.shield(reload)

    def _forget(self, name: str, done: asyncio.Future[None]) -> None:
        if self.reloading.get(name) is done:
            del self.reloading[name]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter got it already

    async def _reload(self, service: ServiceRoute) -> None:
        try:
            await sync_to_async(assert_lock_free)()
        except Locked as exc:
            raise from_arbiter_error(exc) from exc
        log.info("broker: reloading %s on %s", service.name, service.host_name)
        try:
            response = await self.client().post(
                service.url(service.load_route), timeout=ROUTE_TIMEOUT
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            metrics.RELOADS.labels("failed").inc()
            raise BackendUnavailable(
                f"The backend {service.name} on {service.host_name} was unloaded and did "
                f"not reload: {type(exc).__name__} from its load_route.",
                code="reload_failed",
                retry_after=RELOAD_RETRY_AFTER,
                service=service.name,
                host=service.host_name,
            ) from exc
        metrics.RELOADS.labels("complete").inc()
        self.activity.unloaded.discard(service.name)
        await self.remember(service.name, False)


def idle_check_seconds() -> float:
    return float(getattr(settings, "ARBITER_BROKER_IDLE_CHECK_SECONDS", DEFAULT_IDLE_CHECK_SECONDS))


def lock_free() -> bool:
    try:
        assert_lock_free()
    except Locked:
        return False
    return True


class IdleUnloader:
    """Unload services whose catalog model has sat idle past its `idle_unload_seconds`.

    Idle since = the later of the service's last finished request and the moment this
    loop first saw it serving the model (so a model swapped in gets its full TTL).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # epoch seconds, like ServiceActivity.last_finished
        self.first_seen: dict[tuple[str, str], float] = {}

    async def run_forever(self) -> None:
        from arbiter.broker.state import get_state  # state imports this module

        while True:
            state = get_state()
            await self.sweep(await state.table.get(), state.residency)
            await asyncio.sleep(idle_check_seconds())

    def due(self, table: RouteTable, activity: ServiceActivity, now: float) -> list[ServiceRoute]:
        """The services to unload now (a pure function of its inputs and `first_seen`)."""
        ttls = {e.served_name: e.idle_unload_seconds for e in table.catalog}
        watched: set[tuple[str, str]] = set()
        due = []
        for service in table.services:
            ttl = ttls.get(service.loaded_model)
            if not ttl or not service.unload_route or service.health != "up":
                continue
            if service.swap_id is not None or service.name in activity.unloaded:
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
        await residency.ensure_seeded()
        activity = residency.activity
        due = self.due(table, activity, self.clock())
        if not due or not await sync_to_async(lock_free)():
            return []
        unloaded = []
        for service in due:
            if activity.in_flight.get(service.name, 0):  # a request arrived meanwhile
                continue
            try:
                await residency.unload(service.name, service.url(service.unload_route), "idle")
            except httpx.HTTPError as exc:
                log.warning(
                    "broker: idle unload of %s failed: %s", service.name, type(exc).__name__
                )
                continue
            log.info(
                "broker: unloaded %s on %s (%s idle)",
                service.name,
                service.host_name,
                service.loaded_model,
            )
            unloaded.append(service.name)
        return unloaded

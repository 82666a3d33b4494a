"""Which services hold their model: unload the idle ones, reload on the next request.

A service with an `unload_route` (vLLM's `/sleep`, Ollama's `POST /api/generate
{"model": ..., "keep_alive": 0}`) can give its memory back without a swap; one with a
`load_route` (vLLM's `/wake_up`) is asked to take it again before a request is sent to
it. Each route is called with the service's `*_method` and JSON `*_body`. The broker
unloads services in two cases:
- eviction, to make room for an on-demand load (`loading`);
- idle TTL: a catalog model with `idle_unload_seconds` is unloaded once its service has
  gone that long without a request (`idle.IdleUnloader`, a loop of the serving
  process), never while a request is in flight or a swap runs on the service, and never
  while someone else holds the swap lock.
A reload takes GPU memory back, so while someone else holds the lock it is refused
(423, like a load) and the request is not sent.

**Every process knows.** A request that reaches a sleeping vLLM kills the engine
(vllm-project/vllm#15483: "CUDA error: an illegal memory access", the server process
terminates), and every broker process may be the one sending it. So the residency of a
service lives in the database, on `Service.unloaded_at`, which all processes route by:

    NULL              loaded: requests go straight through (no extra read: the routing
                      table, refreshed every ARBITER_BROKER_TABLE_TTL, carries the column);
    a past time       unloaded since then: the first request reloads it;
    a future time     an unload or a reload is under way in some process and will be over
                      by then: requests wait for it (reading the row every 100 ms).

Moves are claims, conditional UPDATEs that only one process can win (NULL → future to
unload, past → future to reload), and end with a conditional UPDATE from the claimed
value (→ now when unloaded, → NULL when loaded, back when the route failed). An unloader
waits the table TTL (plus a grace) after its claim before it calls the unload route, so
no process still routes by a table read before the claim. A process that finds the
service asleep reloads it itself, or waits for the reload another process claimed.

vLLM's sleep is not used on unified-memory hosts (GB10) unless the catalog model opts in
with `sleep_on_unified_memory` (see `arbiter.engine.host_memory`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from arbiter import audit
from arbiter.broker import metrics
from arbiter.broker.background import spawn
from arbiter.broker.errors import BackendUnavailable, from_arbiter_error
from arbiter.broker.limits import ServiceActivity
from arbiter.broker.loading import assert_lock_free, service_leased
from arbiter.broker.table import DEFAULT_TTL, CatalogEntry, ServiceRoute
from arbiter.engine.host_memory import sleep_level
from arbiter.errors import Locked
from arbiter.models import Service

log = logging.getLogger(__name__)

ROUTE_TIMEOUT = 30.0  # an unload or a reload: the backend moves weights in or out
RELOAD_RETRY_AFTER = 10
DEFAULT_IDLE_CHECK_SECONDS = 5.0
# After claiming an unload, how much longer than the table TTL to wait before calling
# the route: a request routed by a table read just before the claim is on its way.
SETTLE_GRACE_SECONDS = 0.25
POLL_SECONDS = 0.1  # how often a request waiting for another process's move re-reads
JSON_HEADERS = {"Content-Type": "application/json"}


def settle_seconds() -> float:
    """How long until every process's routing table was read after a claim."""
    return float(getattr(settings, "ARBITER_BROKER_TABLE_TTL", DEFAULT_TTL)) + SETTLE_GRACE_SECONDS


# -- the row protocol (synchronous ORM) ---------------------------------------------------
def read_unloaded_at(name: str) -> datetime | None:
    return Service.objects.filter(name=name).values_list("unloaded_at", flat=True).first()


def claim(name: str, expected: datetime | None, until: datetime) -> bool:
    """Move the row from `expected` to `until` (a move under way); False if it was not there."""
    rows = Service.objects.filter(name=name)
    rows = (
        rows.filter(unloaded_at__isnull=True)
        if expected is None
        else rows.filter(unloaded_at=expected)
    )
    return rows.update(unloaded_at=until) == 1


def conclude(
    name: str,
    claimed: datetime,
    value: datetime | None,
    audit_as: tuple[str, audit.Actor] | None = None,
) -> bool:
    """End a move: from our claim to `value` (False: a swap reset the row meanwhile).

    `audit_as` (action, actor): the move is a state change the trail records, in the
    same transaction as the row's change and only when the row changed.
    """
    with transaction.atomic():
        rows = Service.objects.filter(name=name, unloaded_at=claimed)
        moved = rows.update(unloaded_at=value) == 1
        if moved and audit_as is not None:
            action, actor = audit_as
            audit.record(
                actor, action, "service", name, before={"loaded": True}, after={"loaded": False}
            )
        return moved


async def _db(func: Callable[..., object], *args: object) -> object:
    return await sync_to_async(func)(*args)


class Residency:
    """Unloads and reloads through the services' routes, coordinated through the database."""

    def __init__(
        self,
        activity: ServiceActivity,
        client: Callable[[], httpx.AsyncClient],
        changed: Callable[[], None] = lambda: None,
    ):
        self.activity = activity
        self.client = client
        self.changed = changed  # drops this process's cached routing table
        self.unloading: dict[str, asyncio.Future[None]] = {}
        self.waking: dict[str, asyncio.Future[None]] = {}

    async def call(self, method: str, url: str, body: bytes | None) -> None:
        """Call a load or unload route (raises httpx.HTTPError, including for 4xx/5xx)."""
        response = await self.client().request(
            method,
            url,
            content=body,
            headers=JSON_HEADERS if body is not None else None,
            timeout=ROUTE_TIMEOUT,
        )
        response.raise_for_status()

    async def unload(
        self,
        name: str,
        url: str,
        reason: str,
        method: str = "POST",
        body: bytes | None = None,
        on_behalf: audit.Actor | None = None,
    ) -> bool:
        """Unload `name` through its route, announced to every process first.

        False when it is already unloaded or moving (someone else's move) or the claim
        could not be written; raises httpx.HTTPError when the route fails. `reason`
        labels the metric and names the audit row ("eviction": broker.evict, by the
        engine on behalf of `on_behalf`, the request that needed the room; else
        broker.idle_unload, on behalf of nobody).
        """
        action = "broker.evict" if reason == "eviction" else "broker.idle_unload"
        actor = on_behalf if on_behalf is not None and reason == "eviction" else audit.ENGINE
        done = self.unloading[name] = asyncio.get_running_loop().create_future()
        try:
            until = timezone.now() + timedelta(seconds=settle_seconds() + ROUTE_TIMEOUT + 1)
            try:
                if not await _db(claim, name, None, until):
                    return False
            except DatabaseError:
                log.exception("broker: could not claim the unload of %s", name)
                return False
            self.changed()
            await asyncio.sleep(settle_seconds())
            if await _db(read_unloaded_at, name) != until:
                return False  # a swap on the service reset it meanwhile: nothing to unload
            # A request came in meanwhile, here or (with REDIS_URL) in another process:
            # keep it. Such a request counted itself in Redis before it was forwarded.
            if (await self.activity.current()).in_flight.get(name, 0):
                await self._conclude(name, until, None)
                return False
            # Someone took the swap lock while we settled: an unload (idle or eviction)
            # is a GPU change the broker, holding no token, may not make now. The
            # eviction's swap then meets the same lock and answers 423.
            if not await sync_to_async(lock_free)():
                await self._conclude(name, until, None)
                return False
            # A lease holds the service's model (coordination.leases): nobody but its
            # holder takes it off the GPU, and the broker holds no lease token.
            if await sync_to_async(service_leased)(name):
                await self._conclude(name, until, None)
                return False
            try:
                await self.call(method, url, body)
            except httpx.HTTPError:
                await self._conclude(name, until, None)
                raise
            await self._conclude(name, until, timezone.now(), (action, actor))
            metrics.UNLOADS.labels(reason).inc()
            return True
        finally:
            if self.unloading.get(name) is done:
                del self.unloading[name]
            done.set_result(None)
            self.changed()

    async def _conclude(
        self,
        name: str,
        claimed: datetime,
        value: datetime | None,
        audit_as: tuple[str, audit.Actor] | None = None,
    ) -> None:
        # A failure leaves the claim, which expires into "unloaded": the next request
        # then reloads, and a reload of a loaded engine is harmless (vLLM's wake_up
        # returns at once when it is not sleeping).
        try:
            await _db(conclude, name, claimed, value, audit_as)
        except DatabaseError:
            log.exception(
                "broker: could not record %s as %s", name, "unloaded" if value else "loaded"
            )

    async def ensure_loaded(self, service: ServiceRoute) -> None:
        """Before a request goes to `service`: make sure it is not unloaded.

        The caller has already counted the request in flight, so this process's unloaders
        leave it alone meanwhile. Concurrent requests in this process share one wait.
        """
        name = service.name
        if service.unloaded_at is None and name not in self.unloading:
            return  # the common case: loaded, and not being unloaded here
        wake = self.waking.get(name)
        if wake is None:
            wake = self.waking[name] = spawn(self._ensure_loaded(service))
            wake.add_done_callback(lambda done: self._forget(name, done))
        await asyncio.shield(wake)

    def _forget(self, name: str, done: asyncio.Future[None]) -> None:
        if self.waking.get(name) is done:
            del self.waking[name]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter got it already

    async def _ensure_loaded(self, service: ServiceRoute) -> None:
        name = service.name
        give_up = time.monotonic() + settle_seconds() + 2 * ROUTE_TIMEOUT + 5
        while True:
            local = self.unloading.get(name)
            if local is not None:
                await asyncio.shield(local)
            value = await _db(read_unloaded_at, name)
            now = timezone.now()
            if value is None:
                return
            assert isinstance(value, datetime)
            if value > now:  # someone's unload or reload is under way
                if time.monotonic() > give_up:
                    raise self._unavailable(service, "its unload or reload did not finish")
                await asyncio.sleep(POLL_SECONDS)
                continue
            if await self._reload(service, value):
                return

    async def _reload(self, service: ServiceRoute, asleep_since: datetime) -> bool:
        """Reload an unloaded service; False when another process claimed it first."""
        name = service.name
        if not service.load_route:  # it reloads on its own: the request simply goes
            await self._conclude(name, asleep_since, None)
            self.changed()
            return True
        try:
            await sync_to_async(assert_lock_free)()
        except Locked as exc:
            raise from_arbiter_error(exc) from exc
        until = timezone.now() + timedelta(seconds=ROUTE_TIMEOUT + 1)
        if not await _db(claim, name, asleep_since, until):
            return False
        log.info("broker: reloading %s on %s", name, service.host_name)
        try:
            await self.call(service.load_method, service.url(service.load_route), service.load_body)
        except httpx.HTTPError as exc:
            metrics.RELOADS.labels("failed").inc()
            await self._conclude(name, until, asleep_since)  # still unloaded: retry later
            raise self._unavailable(
                service, f"{type(exc).__name__} from its load_route", code="reload_failed"
            ) from exc
        metrics.RELOADS.labels("complete").inc()
        await self._conclude(name, until, None)
        self.changed()
        return True

    @staticmethod
    def _unavailable(
        service: ServiceRoute, why: str, code: str = "reload_failed"
    ) -> BackendUnavailable:
        return BackendUnavailable(
            f"The backend {service.name} on {service.host_name} was unloaded and did "
            f"not reload: {why}.",
            code=code,
            retry_after=RELOAD_RETRY_AFTER,
            service=service.name,
            host=service.host_name,
        )


def idle_check_seconds() -> float:
    return float(getattr(settings, "ARBITER_BROKER_IDLE_CHECK_SECONDS", DEFAULT_IDLE_CHECK_SECONDS))


def lock_free() -> bool:
    try:
        assert_lock_free()
    except Locked:
        return False
    return True


def may_sleep(service: ServiceRoute, entry: CatalogEntry | None) -> bool:
    """vLLM's sleep on a unified-memory host only for models that opt in (host_memory)."""
    if not service.unified_memory or sleep_level(service.kind, service.unload_route) is None:
        return True
    return entry is not None and entry.sleep_on_unified_memory

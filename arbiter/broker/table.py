"""The routing table: services, catalog, aliases and swaps in flight, read into plain values.

Every request needs it, so it is cached per process for a short time
(`ARBITER_BROKER_TABLE_TTL`, default 1 s, well inside the 5 s probe interval) and
refreshed by one reader at a time. Anything that just changed what is loaded (a swap
the broker waited for) asks for a fresh one.

A service's loaded model and health come from the prober, except right after a swap
on it completed: the swap proved the model is served (it saw it in /v1/models), which
is newer news than the last probe, so until the next probe the table trusts the swap.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

from asgiref.sync import sync_to_async
from django.conf import settings

from arbiter.broker.background import spawn
from arbiter.engine.host_memory import unified_host_ids
from arbiter.engine.served_auth import service_api_keys
from arbiter.models import Service, Swap
from catalog.models import CatalogAlias, CatalogModel

DEFAULT_TTL = 1.0
RECENT_SWAPS = 50


@dataclass(frozen=True)
class ServiceRoute:
    """A service as the broker routes to it."""

    id: int
    name: str
    host_id: int
    host_name: str
    kind: str
    base_url: str
    capabilities: tuple[str, ...]
    request_paths: tuple[str, ...]
    health: str  # up / down / unknown
    health_since: datetime | None
    loaded_model: str
    vram_resident_mib: int = 0
    can_coexist_with: tuple[str, ...] = ()
    unload_route: str = ""
    load_route: str = ""
    # The swap running on this service right now (it is being reloaded), if any.
    swap_id: int | None = None
    # `Service.unloaded_at` as read: None = loaded; past = asleep; future = an unload or
    # reload is under way in some broker process (`residency` explains the protocol).
    unloaded_at: datetime | None = None
    unload_method: str = "POST"
    unload_body: bytes | None = None  # JSON, ready to send
    load_method: str = "POST"
    load_body: bytes | None = None
    # The host shares one memory pool between CPU and GPU (GB10): vLLM's sleep keeps the
    # weights in that pool, and wake-ups are known to crash there (see `residency`).
    unified_memory: bool = False
    # The key the served model's vLLM demands on /v1 (`--api-key`, engine.served_auth):
    # the broker sends it in place of the client's Arbiter key, which is never forwarded.
    backend_api_key: str = ""

    @property
    def down(self) -> bool:
        return self.health == "down"

    def url(self, path: str) -> str:
        # base_url may carry a path prefix (http://h:8000/whisper): append, never join.
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


@dataclass(frozen=True)
class CatalogEntry:
    """A catalog model the broker can load on demand."""

    key: str
    served_name: str
    kind: str
    default_host: str | None
    estimated_vram_mib: int
    created: int
    idle_unload_seconds: int | None = None
    sleep_on_unified_memory: bool = False


@dataclass(frozen=True)
class AliasEntry:
    """A catalog alias: a name for the first loaded, else the first, of its models."""

    name: str
    model_keys: tuple[str, ...]
    created: int = 0


@dataclass(frozen=True)
class ActiveSwap:
    """A swap in flight: which service it reloads and with what."""

    id: int
    host_id: int
    service_id: int | None
    model_key: str
    served_name: str


@dataclass(frozen=True)
class RouteTable:
    """One consistent read of everything routing decides on."""

    services: tuple[ServiceRoute, ...] = ()
    catalog: tuple[CatalogEntry, ...] = ()
    swaps: tuple[ActiveSwap, ...] = ()
    read_at: float = field(default_factory=time.monotonic)
    aliases: tuple[AliasEntry, ...] = ()

    def catalog_entry(self, model: str) -> CatalogEntry | None:
        """The catalog model a request names, by served name first, then by key."""
        for entry in self.catalog:
            if entry.served_name == model:
                return entry
        for entry in self.catalog:
            if entry.key == model:
                return entry
        return None

    def catalog_key(self, key: str) -> CatalogEntry | None:
        """The catalog model with that key (an alias lists models by key)."""
        for entry in self.catalog:
            if entry.key == key:
                return entry
        return None

    def alias(self, name: str) -> AliasEntry | None:
        for alias in self.aliases:
            if alias.name == name:
                return alias
        return None


def _effective(service: ServiceRoute, last_probe_at: datetime | None, done: dict) -> ServiceRoute:
    """Apply a swap that completed on the service after its last probe (see the docstring)."""
    finished = done.get(service.id)
    if finished is None:
        return service
    finished_at, served_name = finished
    if last_probe_at is not None and last_probe_at >= finished_at:
        return service
    return replace(service, loaded_model=served_name, health="up", health_since=finished_at)


def json_bytes(body: object) -> bytes | None:
    """A route's JSON body as sent (None: no body)."""
    return None if body is None else json.dumps(body).encode()


def read_route_table() -> RouteTable:
    """Read the table from the database (synchronous ORM; call through sync_to_async)."""
    active = [
        ActiveSwap(
            s.pk, s.host_id, s.service_id, s.model_key, s.model.served_name if s.model else ""
        )
        for s in Swap.objects.filter(state__in=Swap.ACTIVE_STATES, dry_run=False).select_related(
            "model"
        )
    ]
    swapping = {swap.service_id: swap.id for swap in active if swap.service_id is not None}
    done: dict[int, tuple[datetime, str]] = {}
    recent = (
        Swap.objects.filter(state=Swap.COMPLETE, dry_run=False, service__isnull=False)
        .select_related("model")
        .order_by("-finished_at")[:RECENT_SWAPS]
    )
    for swap in recent:
        if swap.service_id not in done and swap.model is not None and swap.finished_at:
            done[swap.service_id] = (swap.finished_at, swap.model.served_name)
    services = []
    rows = list(Service.objects.filter(in_inventory=True, disabled=False).select_related("host"))
    unified = unified_host_ids(row.host_id for row in rows)
    # The same lookup the prober uses: the key of the model each service last swapped in.
    backend_keys = service_api_keys([row.pk for row in rows])
    for row in rows:
        route = ServiceRoute(
            id=row.pk,
            name=row.name,
            host_id=row.host_id,
            host_name=row.host.name,
            kind=row.kind,
            base_url=row.base_url,
            capabilities=tuple(row.capabilities or ()),
            request_paths=tuple(row.request_paths or ()),
            health=row.health,
            health_since=row.health_since,
            loaded_model=row.loaded_model,
            vram_resident_mib=row.vram_resident_mib,
            can_coexist_with=tuple(row.can_coexist_with or ()),
            unload_route=row.unload_route,
            load_route=row.load_route,
            swap_id=swapping.get(row.pk),
            unloaded_at=row.unloaded_at,
            unload_method=row.unload_method or "POST",
            unload_body=json_bytes(row.unload_body),
            load_method=row.load_method or "POST",
            load_body=json_bytes(row.load_body),
            unified_memory=row.host_id in unified,
            backend_api_key=backend_keys.get(row.pk, ""),
        )
        services.append(_effective(route, row.last_probe_at, done))
    catalog = tuple(
        CatalogEntry(
            key=m.key,
            served_name=m.served_name,
            kind=m.kind,
            default_host=m.default_host.name if m.default_host else None,
            estimated_vram_mib=m.estimated_vram_mib,
            created=int(m.created_at.timestamp()),
            idle_unload_seconds=m.idle_unload_seconds,
            sleep_on_unified_memory=m.sleep_on_unified_memory,
        )
        for m in CatalogModel.objects.select_related("default_host")
    )
    aliases = tuple(
        AliasEntry(a.name, tuple(a.model_keys or ()), int(a.created_at.timestamp()))
        for a in CatalogAlias.objects.all()
    )
    return RouteTable(tuple(services), catalog, tuple(active), aliases=aliases)


class RouteTableCache:
    """The table, cached for `ttl` seconds; concurrent refreshes share one read."""

    def __init__(self, ttl: float | None = None) -> None:
        self.ttl = ttl
        self.table: RouteTable | None = None
        self._refresh: asyncio.Future[RouteTable] | None = None
        self._refresh_started = 0.0

    def _ttl(self) -> float:
        if self.ttl is not None:
            return self.ttl
        return float(getattr(settings, "ARBITER_BROKER_TABLE_TTL", DEFAULT_TTL))

    async def get(self, newer_than: float | None = None) -> RouteTable:
        """The cached table, or a fresh read; `newer_than` (monotonic) demands a read
        that started after that moment (e.g. after a swap was seen to complete).

        A table past half its lifetime is refreshed in the background while it is
        still served, so under steady traffic no request waits for the read (it was a
        stall of a few milliseconds once a second); no table older than the TTL is
        ever served, which is what `residency` relies on."""
        table = self.table
        if table is not None:
            if newer_than is None:
                age = time.monotonic() - table.read_at
                ttl = self._ttl()
                if age < ttl:
                    if age >= ttl / 2 and self._refresh is None:
                        self._start_refresh().add_done_callback(_retrieve)
                    return table
            elif table.read_at >= newer_than:
                return table
        refresh = self._refresh
        if refresh is None or (newer_than is not None and self._refresh_started < newer_than):
            refresh = self._start_refresh()
        return await asyncio.shield(refresh)

    def _start_refresh(self) -> asyncio.Future[RouteTable]:
        self._refresh_started = time.monotonic()
        refresh = self._refresh = spawn(self._read(self._refresh_started))
        return refresh

    async def _read(self, started: float) -> RouteTable:
        try:
            table = await sync_to_async(read_route_table)()
        finally:
            if self._refresh_started == started:
                self._refresh = None
        # Stamped with when the read began: what it saw is at least that old.
        table = replace(table, read_at=started)
        if self.table is None or self.table.read_at <= started:
            self.table = table
        return table

    def invalidate(self) -> None:
        """Forget the table and any read under way (it may have begun before the change
        that made the caller invalidate): the next request reads afresh."""
        self.table = None
        self._refresh = None


def _retrieve(refresh: asyncio.Future[RouteTable]) -> None:
    # A background refresh nobody awaited: a failed read is retried by the next request
    # (and logged there), not reported as an exception never retrieved.
    if not refresh.cancelled():
        refresh.exception()

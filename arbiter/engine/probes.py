"""Service health probes: every interval, one GET per enabled service, all at once.

The results are what the dashboard shows and what the broker trusts when it refuses a
request fast, so a probe answers "up" only for a 2xx and everything else (error status,
redirect, refused connection, timeout) is "down". Disabled services are never contacted.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from arbiter import events
from arbiter.engine.served_auth import auth_headers, service_api_keys
from arbiter.models import Service

log = logging.getLogger(__name__)

UP = "up"
DOWN = "down"
MAX_TIMEOUT_SECONDS = 3.0
# Below the 5 s idle timeout of uvicorn (vLLM) and the simulator: a pooled connection
# the backend has just closed would otherwise make a healthy service look down. Within
# one probe /health and /v1/models still share a connection.
KEEPALIVE_SECONDS = 1.0


@dataclass(frozen=True)
class ProbeTarget:
    """What a probe needs to know about a service, read from the database each round."""

    id: int
    name: str
    kind: str
    base_url: str
    health_path: str
    # The key of a model started with --api-key: vLLM answers /v1 only with it.
    api_key: str = field(default="", repr=False)

    def url(self, path: str) -> str:
        # base_url may carry a path prefix (http://h:8000/whisper), so append, never join.
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one probe; `detail` says why a service is down (for the logs)."""

    health: str
    latency_ms: float | None = None
    loaded_model: str = ""
    detail: str = ""


@sync_to_async
def load_targets() -> list[ProbeTarget]:
    """Every probed service, re-read each round (inventory changes)."""
    rows = list(
        Service.objects.filter(in_inventory=True, disabled=False).values_list(
            "id", "name", "kind", "base_url", "health_path"
        )
    )
    keys = service_api_keys([row[0] for row in rows])
    return [
        ProbeTarget(id_, name, kind, url, path, api_key=keys.get(id_, ""))
        for id_, name, kind, url, path in rows
    ]


@sync_to_async
def record_result(service_id: int, result: ProbeResult) -> str | None:
    """Write one probe's result; returns the health the row had before, or None when
    nothing was written (the service was disabled or left the inventory meanwhile).

    A flip of health is announced inside the same transaction
    (`service_health_changed`: its webhook events are written with it or not at all)."""
    now = timezone.now()
    with transaction.atomic():
        # The flip is decided on the row itself, read under its lock (SELECT ... FOR
        # UPDATE on PostgreSQL; SQLite's IMMEDIATE transactions hold the write lock from
        # BEGIN), not on the health the round read earlier: two probers overlapping in a
        # leader handover still see each flip once. The filter repeats the round's, so a
        # service disabled while its probe was in flight keeps its last state.
        previous = (
            Service.objects.select_for_update()
            .filter(pk=service_id, in_inventory=True, disabled=False)
            .values_list("health", flat=True)
            .first()
        )
        if previous is None:
            return None
        # health_since moves only when health changes. It is listed before `health`
        # because MySQL evaluates SET left to right (SQLite and PostgreSQL read the old
        # row either way).
        Service.objects.filter(pk=service_id).update(
            health_since=Case(
                When(health=result.health, health_since__isnull=False, then=F("health_since")),
                default=Value(now),
            ),
            health=result.health,
            last_probe_at=now,
            last_latency_ms=result.latency_ms,
            loaded_model=result.loaded_model,
        )
        if previous != result.health:
            events.service_health_changed.send(
                Service,
                service_id=service_id,
                previous=previous,
                health=result.health,
                detail=result.detail,
            )
    return previous


def first_model_id(response: httpx.Response) -> str:
    """The first id in an OpenAI `/v1/models` list, or "" when the body is not one."""
    try:
        data = response.json().get("data")
        model = data[0].get("id") if isinstance(data, list) and data else None
    except (ValueError, AttributeError):
        return ""
    return model if isinstance(model, str) else ""


class Prober:
    """Probes every enabled service once per interval through one shared HTTP client."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval: float = interval or float(getattr(settings, "ARBITER_PROBE_INTERVAL", 5.0))
        # A probe must finish before the next round starts, and a hung backend must not
        # hold a round for long, hence the cap.
        self.timeout = min(self.interval, MAX_TIMEOUT_SECONDS)
        self.client = httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,  # a redirecting health path is a misconfiguration: down
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS),
            # Backends sit on the LAN; an HTTP(S)_PROXY from the environment would turn
            # "proxy unreachable" into "every service down".
            trust_env=False,
        )

    async def _get(self, url: str, api_key: str = "") -> httpx.Response:
        # httpx's timeout bounds each phase; this bounds the whole exchange, so a backend
        # trickling bytes cannot stretch a probe past the timeout either.
        async with asyncio.timeout(self.timeout):
            return await self.client.get(url, headers=auth_headers(api_key))

    async def probe_once(self, target: ProbeTarget) -> ProbeResult:
        """Probe one service; never raises for anything the backend or network does."""
        started = time.perf_counter()
        try:
            response = await self._get(target.url(target.health_path), target.api_key)
        except (httpx.HTTPError, httpx.InvalidURL, TimeoutError) as exc:
            # Timeouts often carry no message, so the type name is the detail.
            return ProbeResult(DOWN, detail=f"{type(exc).__name__} {exc}".strip())
        latency_ms = (time.perf_counter() - started) * 1000
        if not response.is_success:
            return ProbeResult(DOWN, latency_ms, detail=f"HTTP {response.status_code}")
        model = ""
        if target.kind == Service.KIND_VLLM:
            model = await self._loaded_model(target)
        return ProbeResult(UP, latency_ms, model)

    async def _loaded_model(self, target: ProbeTarget) -> str:
        # /health said up; a failing model list leaves the service up with no model shown.
        try:
            response = await self._get(target.url("/v1/models"), target.api_key)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.debug("model list of %s failed: %r", target.name, exc)
            return ""
        return first_model_id(response) if response.is_success else ""

    async def _probe_and_record(self, target: ProbeTarget) -> ProbeResult:
        try:
            result = await self.probe_once(target)
            recorded = await record_result(target.id, result)
        except Exception as exc:  # a bug or a database hiccup must not end the round
            log.exception("probe of %s failed unexpectedly", target.name)
            return ProbeResult(DOWN, detail=repr(exc))
        # Flips are news; a service that stays down every 5 s is not.
        level = logging.INFO if recorded not in (None, result.health) else logging.DEBUG
        log.log(level, "service %s is %s %s", target.name, result.health, result.detail)
        return result

    async def probe_round(self) -> dict[str, ProbeResult]:
        """Probe every enabled service in the inventory concurrently; results by name."""
        targets = await load_targets()
        results = await asyncio.gather(*(self._probe_and_record(t) for t in targets))
        await events.services_changed.asend(sender=None)
        return {target.name: result for target, result in zip(targets, results, strict=True)}

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                started = loop.time()
                try:
                    await self.probe_round()
                except Exception:  # e.g. the database is locked: the next round retries
                    log.exception("probe round failed")
                await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))
        finally:
            await self.client.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


async def probe_services_once(interval: float | None = None) -> dict[str, ProbeResult]:
    """Run one probe round with a fresh client (tests, management commands)."""
    prober = Prober(interval)
    try:
        return await prober.probe_round()
    finally:
        await prober.aclose()

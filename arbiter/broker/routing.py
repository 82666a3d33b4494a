"""Routing decisions: which service answers a request, or what must happen first.

Pure functions over a `RouteTable`: no database, no network, no clock. A decision is
one of
- `Forward`: send it to this service now;
- `WaitForSwap`: the service that serves it is being swapped (or the model is being
  loaded by someone else's swap): wait for that swap, then route again;
- `Load`: the model is in the catalog but loaded nowhere: load it, then route again;
or an error (unknown model 404, backend down 503 at once).

A catalog alias (`chat-default` → models in order) resolves to the first listed model
that is loaded (an awake, usable service serves it), else to the first listed: routing
then goes on as if the request had named that model, and the body's `model` is
rewritten to the served name. When several services serve the model (replicas), the
`Forward` carries them all: the broker sends to the one with the fewest requests in
flight (`least_busy`, counts from outside) and fails over to another (`failover`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from arbiter.broker.errors import BackendUnavailable, ModelNotFound, RouteNotFound
from arbiter.broker.table import AliasEntry, CatalogEntry, RouteTable, ServiceRoute

CAPABILITY_ROUTES = ("llm", "tts", "stt", "image")
# /audio/* goes to the service with the first of these capabilities.
AUDIO_CAPABILITIES = ("audio", "tts")


@dataclass(frozen=True)
class Forward:
    """Send the request to `service` at `path` (the path on the backend)."""

    service: ServiceRoute
    path: str
    limit_key: str  # what the per-model concurrency limit counts
    # The model name the backend knows, when the request named it otherwise (a catalog
    # key, an alias): the broker rewrites the body's `model` to it.
    served_model: str = ""
    # The other usable services that serve the same model, in routing's order: the
    # broker picks the least busy of all (`least_busy`) and retries once on another
    # when the first fails before answering (`failover`). Model routes only.
    replicas: tuple[ServiceRoute, ...] = ()

    def failover(self) -> Forward | None:
        """The same request to the next replica (never the same service), or None."""
        if not self.replicas:
            return None
        return replace(self, service=self.replicas[0], replicas=())


@dataclass(frozen=True)
class WaitForSwap:
    """Wait for swap `swap_id` to finish, then route again."""

    swap_id: int
    reason: str


@dataclass(frozen=True)
class Load:
    """Load the catalog model (one shared swap), then route again."""

    entry: CatalogEntry


Decision = Forward | WaitForSwap | Load


def unavailable(service: ServiceRoute, retry_after: float) -> BackendUnavailable:
    since = service.health_since.isoformat() if isinstance(service.health_since, datetime) else None
    return BackendUnavailable(
        f"The backend {service.name} on {service.host_name} failed its last health probe.",
        code="backend_down",
        retry_after=retry_after,
        service=service.name,
        host=service.host_name,
        since=since,
    )


def _by_health(services: list[ServiceRoute]) -> list[ServiceRoute]:
    # Up first, then unknown (not probed yet); stable by name within each.
    return sorted(services, key=lambda s: (s.health != "up", s.name))


def _usable(service: ServiceRoute) -> bool:
    return service.swap_id is None and not service.down


def _pick(
    candidates: list[ServiceRoute], path: str, limit_key: str, retry_after: float
) -> Decision | None:
    """Forward to the first usable candidate (the others usable as its replicas); wait
    for a swap of one; or 503 if all are down."""
    if not candidates:
        return None
    ordered = _by_health(candidates)
    usable = [service for service in ordered if _usable(service)]
    if usable:
        return Forward(usable[0], path, limit_key, replicas=tuple(usable[1:]))
    for service in ordered:
        if service.swap_id is not None:
            return WaitForSwap(service.swap_id, f"{service.name} is being swapped")
    raise unavailable(ordered[0], retry_after)


def least_busy(decision: Forward, in_flight: Mapping[str, int]) -> Forward:
    """The decision sent to whichever of its services has the fewest requests in flight
    (`in_flight`: service name → count), among the healthiest (up before unknown); ties
    keep routing's order, so the choice is stable. The rest stay its replicas."""
    candidates = (decision.service, *decision.replicas)
    if len(candidates) == 1:
        return decision
    best = min(
        range(len(candidates)),
        key=lambda i: (candidates[i].health != "up", in_flight.get(candidates[i].name, 0), i),
    )
    if best == 0:
        return decision
    rest = candidates[:best] + candidates[best + 1 :]
    return replace(decision, service=candidates[best], replicas=rest)


def resolve_alias(table: RouteTable, alias: AliasEntry) -> CatalogEntry | None:
    """The model an alias names now: its first listed model that is loaded (served by a
    usable service that is not asleep), else its first; None when it lists none."""
    entries = [entry for key in alias.model_keys if (entry := table.catalog_key(key))]
    for entry in entries:
        for service in table.services:
            if (
                service.loaded_model == entry.served_name
                and _usable(service)
                and service.unloaded_at is None
            ):
                return entry
    return entries[0] if entries else None


def _route_alias(table: RouteTable, alias: AliasEntry, path: str, retry_after: float) -> Decision:
    target = resolve_alias(table, alias)
    if target is None:
        raise ModelNotFound(alias.name)
    decision = route_model(table, target.served_name, path, retry_after)
    if isinstance(decision, Forward):
        # The body names the alias; the backend knows only the model's served name.
        return replace(decision, served_model=decision.service.loaded_model)
    return decision


def route_model(table: RouteTable, model: str, path: str, retry_after: float) -> Decision:
    """Route an OpenAI request by its `model` field; `path` is the request's own path."""
    entry = table.catalog_entry(model)
    if entry is None and (alias := table.alias(model)) is not None:
        return _route_alias(table, alias, path, retry_after)
    names = {model} | ({entry.served_name} if entry else set())
    limit_key = entry.served_name if entry else model
    serving = [s for s in table.services if s.loaded_model and s.loaded_model in names]
    decision = _pick(serving, path, limit_key, retry_after)
    if isinstance(decision, Forward):
        served = decision.service.loaded_model
        # Replicas serve it under the same name, so the body's rewrite holds for each.
        replicas = tuple(s for s in decision.replicas if s.loaded_model == served)
        return Forward(
            decision.service, path, limit_key, served if served != model else "", replicas
        )
    if decision is not None:
        return decision
    for swap in table.swaps:
        if swap.served_name in names or (entry and swap.model_key == entry.key):
            return WaitForSwap(swap.id, f"{swap.model_key} is being loaded by swap {swap.id}")
    if entry is not None:
        return Load(entry)
    # Generic HTTP backends do not report their models: one that declares this path
    # takes any model name (a TTS server, say). vLLM ones report theirs, so an unknown
    # model is never sent to them.
    declared = [s for s in table.services if s.kind != "vllm" and path in s.request_paths]
    decision = _pick(declared, path, limit_key, retry_after)
    if decision is not None:
        return decision
    raise ModelNotFound(model)


def route_capability(
    table: RouteTable, capabilities: tuple[str, ...], path: str, retry_after: float
) -> Decision:
    """Route to the first enabled, healthy service with the first capability any has."""
    for capability in capabilities:
        having = [s for s in table.services if capability in s.capabilities]
        if having:
            decision = _pick(having, path, "", retry_after)
            assert decision is not None
            if isinstance(decision, Forward):
                decision = Forward(decision.service, path, f"{capability}:{decision.service.name}")
            return decision
    raise RouteNotFound(
        f"No enabled service has the capability {' or '.join(capabilities)}.",
        code="capability_not_found",
    )


def list_models(table: RouteTable) -> dict[str, Any]:
    """`GET /v1/models`: loaded models, then loading and loadable catalog models."""
    data: list[dict[str, Any]] = []
    listed: set[str] = set()
    replicas: dict[str, list[ServiceRoute]] = {}
    for service in table.services:
        if service.loaded_model:
            replicas.setdefault(service.loaded_model, []).append(service)
    # One object per model (ids are unique, as OpenAI clients expect); a model served by
    # several services names the one routing prefers, and lists them all.
    for model, services in replicas.items():
        entry = table.catalog_entry(model)
        preferred, *_ = ordered = _by_health(services)
        info: dict[str, Any] = {
            "state": "loaded",
            "service": preferred.name,
            "host": preferred.host_name,
            "health": preferred.health,
            "catalog_key": entry.key if entry else None,
            "replicas": [
                {"service": s.name, "host": s.host_name, "health": s.health} for s in ordered
            ],
        }
        data.append(_model(model, entry.created if entry else 0, info))
        listed.add(model)
    for swap in table.swaps:
        if swap.served_name and swap.served_name not in listed:
            entry = table.catalog_entry(swap.served_name)
            info = {"state": "loading", "swap_id": swap.id, "catalog_key": swap.model_key}
            data.append(_model(swap.served_name, entry.created if entry else 0, info))
            listed.add(swap.served_name)
    for entry in table.catalog:
        if entry.served_name in listed:
            continue
        info = {
            "state": "loadable",
            "catalog_key": entry.key,
            "host": entry.default_host,
            "kind": entry.kind,
            "estimated_vram_mib": entry.estimated_vram_mib,
        }
        data.append(_model(entry.served_name, entry.created, info))
        listed.add(entry.served_name)
    for alias in table.aliases:
        target = resolve_alias(table, alias)
        info = {
            "state": "alias",
            "model_keys": list(alias.model_keys),
            # Where a request naming the alias goes now (loading it first when not loaded).
            "points_to": target.served_name if target else None,
            "points_to_key": target.key if target else None,
        }
        data.append(_model(alias.name, alias.created, info))
    return {"object": "list", "data": data}


def _model(model_id: str, created: int, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "arbiter",
        "arbiter": info,
    }

"""Catalog API: /api/models (CRUD), /api/aliases (CRUD), per-host disk status, hub
download and delete.

Authentication is the API's global one (key, or session + CSRF). While someone holds
the swap lock, a download, a delete from disk, and a PUT or DELETE of a model that is on
a GPU (`on_a_gpu`) are refused with 423 unless `X-Swap-Lock-Token` is the holder's.
The disk routes are async: they talk to every host over SSH concurrently on the server's
own event loop, and the download streams `hf download` progress as Server-Sent Events.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Router, Status

from arbiter import audit
from arbiter.engine.disk import delete_hub_model, disk_report, download_events
from arbiter.engine.ssh import SshTarget
from arbiter.errors import Conflict, InvalidInput, NotFound
from arbiter.models import Host, Service, Swap
from catalog.aliases import (
    check_alias_fields,
    create_alias,
    delete_alias,
    refuse_delete_of_listed_model,
    update_alias,
)
from catalog.models import CatalogAlias, CatalogModel
from catalog.schemas import (
    CatalogAliasIn,
    CatalogAliasOut,
    CatalogModelIn,
    CatalogModelOut,
    DiskOut,
)
from catalog.store import create_model, update_model
from catalog.validation import validate_catalog_fields
from coordination.locks import TOKEN_HEADER as LOCK_TOKEN_HEADER
from coordination.locks import assert_may_change_gpu

router = Router(tags=["catalog"])


def get_model(key: str) -> CatalogModel:
    return CatalogModel.objects.select_related("default_host").by_key(key, field="key")


def active_swap(model: CatalogModel, host: Host | None = None) -> Swap | None:
    swaps = Swap.objects.in_flight().filter(model=model)
    return (swaps.filter(host=host) if host is not None else swaps).first()


def _refuse_while_swapping(model: CatalogModel, what: str) -> None:
    swap = active_swap(model)
    if swap is not None:
        raise Conflict(
            f"cannot {what} {model.key!r} while swap {swap.pk} of it is {swap.state}",
            field="key",
            swap_id=swap.pk,
        )


def on_a_gpu(model: CatalogModel) -> bool:
    """Is the model running or about to: a service serves it, the latest complete swap
    on a service brought it there, or a swap of it is under way."""
    if active_swap(model) is not None:
        return True
    names = {model.served_name, model.hub_repo} - {""}
    if Service.objects.filter(loaded_model__in=names).exists():
        return True
    last_swapped_in = (
        Swap.objects.filter(service=OuterRef("pk"), state=Swap.COMPLETE, dry_run=False)
        .order_by("-finished_at", "-pk")
        .values("model_key")[:1]
    )
    return (
        Service.objects.annotate(last_swapped_in=Subquery(last_swapped_in))
        .filter(last_swapped_in=model.key)
        .exists()
    )


def _gate_gpu_change(request: HttpRequest, model: CatalogModel | None = None) -> None:
    """While someone holds the swap lock, only its holder may change what a GPU runs
    (423 with the holder, expires_at and Retry-After). With a model: only when that
    model is on a GPU (`on_a_gpu`); editing a model that runs nowhere is no GPU change."""
    if model is None or on_a_gpu(model):
        assert_may_change_gpu(request.headers.get(LOCK_TOKEN_HEADER) or None)


def inventory_targets() -> list[SshTarget]:
    timeout = settings.ARBITER_SSH_CONNECT_TIMEOUT
    hosts = Host.objects.in_inventory().order_by("name")
    return [SshTarget.from_host(host, connect_timeout=timeout) for host in hosts]


def _target(name: str) -> SshTarget:
    host = Host.objects.by_name(name)
    return SshTarget.from_host(host, connect_timeout=settings.ARBITER_SSH_CONNECT_TIMEOUT)


def _hub_only(model: CatalogModel, action: str) -> None:
    if model.is_local:
        raise InvalidInput(
            f"{model.key!r} is a local model: {action} applies to hub models only "
            "(local models are never downloaded or deleted by Arbiter)",
            field="key",
        )


# -- CRUD ------------------------------------------------------------------------------


@router.get("/models", response=list[CatalogModelOut], summary="List catalog models")
def list_models(request: HttpRequest):
    models = CatalogModel.objects.select_related("default_host")
    return [CatalogModelOut.from_model(m) for m in models]


@router.post("/models", response={201: CatalogModelOut}, summary="Add a catalog model")
def create_catalog_model(request: HttpRequest, payload: CatalogModelIn):
    cleaned = validate_catalog_fields(payload.model_dump())
    model = create_model(cleaned, who=request)
    return Status(201, CatalogModelOut.from_model(get_model(model.key)))


@router.get("/models/{key}", response=CatalogModelOut, summary="One catalog model")
def get_catalog_model(request: HttpRequest, key: str):
    return CatalogModelOut.from_model(get_model(key))


@router.put("/models/{key}", response=CatalogModelOut, summary="Replace a catalog model")
def update_catalog_model(request: HttpRequest, key: str, payload: CatalogModelIn):
    data = payload.model_dump()
    if data.get("key") not in (None, key):
        raise InvalidInput("key: cannot be changed (create a new model instead)", field="key")
    data["key"] = key
    with transaction.atomic():
        model = get_model(key)
        # Validation first, then the write: a rejected PUT changes nothing.
        cleaned = validate_catalog_fields(data)
        _gate_gpu_change(request, model)
        # A running swap re-reads the model; changing its launch settings mid-way would
        # make the log and the launched container disagree.
        _refuse_while_swapping(model, "change")
        update_model(model, cleaned, who=request)
    return CatalogModelOut.from_model(get_model(key))


@router.delete("/models/{key}", response={204: None}, summary="Remove a catalog model")
def delete_catalog_model(request: HttpRequest, key: str):
    with transaction.atomic():
        model = get_model(key)
        _gate_gpu_change(request, model)
        _refuse_while_swapping(model, "delete")
        refuse_delete_of_listed_model(model.key)
        audit.record(
            request,
            "catalog.delete",
            "catalog_model",
            model.key,
            before={"served_name": model.served_name, "hub_repo": model.hub_repo},
        )
        model.delete()  # past swaps keep their model_key; their FK becomes null
    return Status(204, None)


# -- aliases ---------------------------------------------------------------------------
# No swap-lock gate: an alias changes which name reaches which model, never a GPU.


def get_alias(name: str) -> CatalogAlias:
    alias = CatalogAlias.objects.filter(name=name).first()
    if alias is None:
        raise NotFound(f"no catalog alias named {name!r}", field="name")
    return alias


@router.get("/aliases", response=list[CatalogAliasOut], summary="List catalog aliases")
def list_aliases(request: HttpRequest):
    return [CatalogAliasOut.from_alias(alias) for alias in CatalogAlias.objects.all()]


@router.post("/aliases", response={201: CatalogAliasOut}, summary="Add a catalog alias")
def create_catalog_alias(request: HttpRequest, payload: CatalogAliasIn):
    alias = create_alias(check_alias_fields(payload.model_dump()), who=request)
    return Status(201, CatalogAliasOut.from_alias(alias))


@router.get("/aliases/{name}", response=CatalogAliasOut, summary="One catalog alias")
def get_catalog_alias(request: HttpRequest, name: str):
    return CatalogAliasOut.from_alias(get_alias(name))


@router.put("/aliases/{name}", response=CatalogAliasOut, summary="Replace a catalog alias")
def update_catalog_alias(request: HttpRequest, name: str, payload: CatalogAliasIn):
    data = payload.model_dump()
    if data.get("name") not in (None, name):
        raise InvalidInput("name: cannot be changed (create a new alias instead)", field="name")
    data["name"] = name
    with transaction.atomic():
        alias = get_alias(name)
        update_alias(alias, check_alias_fields(data), who=request)
    return CatalogAliasOut.from_alias(alias)


@router.delete("/aliases/{name}", response={204: None}, summary="Remove a catalog alias")
def delete_catalog_alias(request: HttpRequest, name: str):
    with transaction.atomic():
        delete_alias(get_alias(name), who=request)
    return Status(204, None)


# -- disk ------------------------------------------------------------------------------


@router.get(
    "/models/{key}/disk", response=list[DiskOut], summary="Present / absent / size per host"
)
async def model_disk(request: HttpRequest, key: str):
    model = await sync_to_async(get_model)(key)
    targets = await sync_to_async(inventory_targets)()
    roots = list(settings.ARBITER_MODEL_ROOTS)
    return await disk_report(targets, model, roots=roots)


def _serving_conflict(model: CatalogModel, host_name: str) -> None:
    host = Host.objects.get(name=host_name)
    swap = active_swap(model, host)
    if swap is not None:
        raise Conflict(
            f"swap {swap.pk} of {model.key!r} on {host_name} is {swap.state}",
            field="host",
            swap_id=swap.pk,
        )
    names = {model.served_name, model.hub_repo} - {""}
    if Service.objects.filter(host=host, loaded_model__in=names).exists():
        raise Conflict(f"{model.key!r} is being served on {host_name}", field="host")


async def delete_from_host(request: HttpRequest, key: str, host: str) -> None:
    """Delete a hub model's files from a host, for the API and the catalog page: the
    swap lock, no swap or service using it there, then the delete and its audit row."""
    model = await sync_to_async(get_model)(key)
    _hub_only(model, "delete from disk")
    target = await sync_to_async(_target)(host)
    await sync_to_async(_gate_gpu_change)(request)
    await sync_to_async(_serving_conflict)(model, host)
    await delete_hub_model(target, model)
    # Files on a host, not rows: recorded once the delete succeeded.
    await sync_to_async(audit.record)(
        request,
        "catalog.disk_delete",
        "catalog_model",
        model.key,
        before={"host": host, "present": True},
        after={"host": host, "present": False},
    )


@router.delete(
    "/models/{key}/disk", response={204: None}, summary="Delete a hub model's files from a host"
)
async def delete_model_disk(request: HttpRequest, key: str, host: str):
    await delete_from_host(request, key, host)
    return Status(204, None)


def sse(event: str, data: dict[str, Any]) -> str:
    """One Server-Sent Event; JSON data keeps every payload on one `data:` line."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@dataclass(frozen=True)
class AcceptedDownload:
    """A hub download that passed its checks: plain values for the code that runs it."""

    target: SshTarget
    key: str
    repo: str
    revision: str

    def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return download_events(
            self.target, self.key, self.repo, self.revision, settings.ARBITER_HF_TOKEN
        )


async def accept_download(request: HttpRequest, key: str, host: str) -> AcceptedDownload:
    """Check a hub download (a hub model, a known host, the swap lock) and audit it, for
    the API and the catalog page; the caller runs its `events()`."""
    model = await sync_to_async(get_model)(key)
    _hub_only(model, "download")
    target = await sync_to_async(_target)(host)
    await sync_to_async(_gate_gpu_change)(request)
    # Recorded when the download is accepted; its outcome is in the events it yields.
    await sync_to_async(audit.record)(
        request,
        "catalog.download",
        "catalog_model",
        model.key,
        after={"host": target.name, "repo": model.hub_repo, "revision": model.hub_revision},
    )
    return AcceptedDownload(target, model.key, model.hub_repo, model.hub_revision)


async def _download_stream(download: AcceptedDownload) -> AsyncIterator[str]:
    async for event, data in download.events():
        yield sse(event, data)


@router.post(
    "/models/{key}/download",
    response={200: None},
    summary="Download a hub model to a host (Server-Sent Events: progress, then done/error)",
)
async def download_model(request: HttpRequest, key: str, host: str):
    # Checked before the stream starts: a refused download answers 423, not an SSE error.
    download = await accept_download(request, key, host)
    response = StreamingHttpResponse(_download_stream(download), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # stream through nginx without buffering
    return response

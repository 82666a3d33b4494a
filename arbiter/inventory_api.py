"""Editing the inventory in Arbiter: a host's VRAM budget, a service's use and residency.

`PATCH` changes only the fields sent; `DELETE .../edits` puts the cluster file's values
back. Edits survive restarts (see `arbiter.inventory.edits`); the answer lists, under
`edited`, every edited field with the file's value for it.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpRequest
from ninja import Field, Router, Schema
from pydantic import ConfigDict, StrictBool, StrictInt

from arbiter.engine.events import publish_fragment
from arbiter.errors import InvalidInput
from arbiter.inventory.edits import HOST_EDITABLE, SERVICE_EDITABLE, edit_row, reset_edits
from arbiter.models import Host, Service

log = logging.getLogger(__name__)
router = Router(tags=["inventory"])

# A PositiveIntegerField holds up to 2**31 - 1 on PostgreSQL; 10 TiB is past any GPU.
MAX_MIB = 10 * 1024 * 1024


class HostEditIn(Schema):
    model_config = ConfigDict(extra="forbid")

    vram_budget_mib: StrictInt | None = Field(None, ge=1, le=MAX_MIB)
    vram_margin_mib: StrictInt = Field(0, ge=0, le=MAX_MIB)


class ServiceEditIn(Schema):
    model_config = ConfigDict(extra="forbid")

    disabled: StrictBool = False
    vram_resident_mib: StrictInt = Field(0, ge=0, le=MAX_MIB)


class HostEditOut(Schema):
    name: str
    vram_budget_mib: int | None
    vram_margin_mib: int
    edited: dict[str, Any]  # field -> the cluster file's value


class ServiceEditOut(Schema):
    name: str
    host: str
    disabled: bool
    vram_resident_mib: int
    edited: dict[str, Any]


def _changes(payload: Schema, editable: tuple[str, ...]) -> dict[str, Any]:
    """Only the fields the caller sent (a default is not a change)."""
    changes = {
        name: getattr(payload, name) for name in editable if name in payload.model_fields_set
    }
    if not changes:
        raise InvalidInput(f"body: send at least one of {', '.join(editable)}", field="body")
    return changes


def _host_out(host: Host) -> dict[str, Any]:
    return {
        "name": host.name,
        "vram_budget_mib": host.vram_budget_mib,
        "vram_margin_mib": host.vram_margin_mib,
        "edited": host.inventory_overrides,
    }


def _service_out(service: Service) -> dict[str, Any]:
    return {
        "name": service.name,
        "host": service.host.name,
        "disabled": service.disabled,
        "vram_resident_mib": service.vram_resident_mib,
        "edited": service.inventory_overrides,
    }


def _push_services_panel() -> None:
    """Show a service enabled or disabled on every dashboard now, not at the next probe
    round. Called from a synchronous view; the edit is done, so a failed push only logs."""
    from dashboard.fragments import services_panel  # the dashboard imports the core

    try:
        async_to_sync(publish_fragment)(services_panel(oob=True))
    except Exception:
        log.warning("pushing the services panel failed", exc_info=True)


@router.patch("/hosts/{name}", response=HostEditOut, url_name="host_edit", summary="Edit a host")
def edit_host(request: HttpRequest, name: str, payload: HostEditIn):
    host = edit_row(Host, name, _changes(payload, HOST_EDITABLE), "host")
    log.info("host %s edited: %s", host.name, sorted(host.inventory_overrides))
    return _host_out(host)


@router.delete(
    "/hosts/{name}/edits",
    response=HostEditOut,
    url_name="host_edits_reset",
    summary="Put the cluster file's values back on a host",
)
def reset_host(request: HttpRequest, name: str):
    return _host_out(reset_edits(Host, name, "host"))


@router.patch(
    "/services/{name}", response=ServiceEditOut, url_name="service_edit", summary="Edit a service"
)
def edit_service(request: HttpRequest, name: str, payload: ServiceEditIn):
    service = edit_row(Service, name, _changes(payload, SERVICE_EDITABLE), "service")
    log.info("service %s edited: %s", service.name, sorted(service.inventory_overrides))
    _push_services_panel()
    return _service_out(service)


@router.delete(
    "/services/{name}/edits",
    response=ServiceEditOut,
    url_name="service_edits_reset",
    summary="Put the cluster file's values back on a service",
)
def reset_service(request: HttpRequest, name: str):
    service = reset_edits(Service, name, "service")
    _push_services_panel()
    return _service_out(service)

"""Editing the inventory in Arbiter: a host's VRAM budget and interconnect, a service's
use, residency and adopted containers.

`PATCH` changes only the fields sent; `DELETE .../edits` puts the cluster file's values
back. Enabling or disabling a service (either way) is a GPU change: while someone holds
the swap lock only its holder, sending `X-Swap-Lock-Token`, may (423 otherwise). Edits
survive restarts (see `arbiter.inventory.edits`); the answer lists, under `edited`, every
edited field with the file's value for it.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from ninja import Field, Router, Schema
from pydantic import ConfigDict, StrictBool, StrictInt, StrictStr

from arbiter import audit, events
from arbiter.errors import InvalidInput
from arbiter.inventory.adoption import check_adoptions, clean_adopt_list
from arbiter.inventory.edits import HOST_EDITABLE, SERVICE_EDITABLE, edit_row, reset_edits
from arbiter.inventory.interconnect import check_interconnect, clean_interconnect
from arbiter.models import Host, Service
from coordination.leases import TOKEN_HEADER as LEASE_TOKEN_HEADER
from coordination.leases import assert_none_leased, served_keys
from coordination.locks import TOKEN_HEADER as LOCK_TOKEN_HEADER
from coordination.locks import assert_may_change_gpu

log = logging.getLogger(__name__)
router = Router(tags=["inventory"])

# A PositiveIntegerField holds up to 2**31 - 1 on PostgreSQL; 10 TiB is past any GPU.
MAX_MIB = 10 * 1024 * 1024


class HostEditIn(Schema):
    model_config = ConfigDict(extra="forbid")

    vram_budget_mib: StrictInt | None = Field(None, ge=1, le=MAX_MIB)
    vram_margin_mib: StrictInt = Field(0, ge=0, le=MAX_MIB)
    # Checked in arbiter.inventory.interconnect (422 naming the field); null or "" clears.
    cluster_address: StrictStr | None = Field(
        None, description="This host's address on the multi-node interconnect"
    )
    cluster_interface: StrictStr | None = Field(
        None, description="The Linux interface of that address, e.g. enp1s0f1np1"
    )


class ServiceEditIn(Schema):
    model_config = ConfigDict(extra="forbid")

    disabled: StrictBool = False
    vram_resident_mib: StrictInt = Field(0, ge=0, le=MAX_MIB)
    # Checked item by item in arbiter.inventory.adoption (422 naming adopt_containers).
    adopt_containers: Any = Field(default_factory=list)


class HostEditOut(Schema):
    name: str
    vram_budget_mib: int | None
    vram_margin_mib: int
    cluster_address: str
    cluster_interface: str
    edited: dict[str, Any]  # field -> the cluster file's value


class ServiceEditOut(Schema):
    name: str
    host: str
    disabled: bool
    vram_resident_mib: int
    adopt_containers: list[str]
    edited: dict[str, Any]


def _changes(payload: Schema, editable: tuple[str, ...]) -> dict[str, Any]:
    """Only the fields the caller sent (a default is not a change)."""
    changes = {
        name: getattr(payload, name) for name in editable if name in payload.model_fields_set
    }
    if not changes:
        raise InvalidInput(f"body: send at least one of {', '.join(editable)}", field="body")
    return changes


def _fields(row: Host | Service, names: Any) -> dict[str, Any]:
    """The row's values of the named fields (the audit trail's before and after)."""
    return {name: getattr(row, name) for name in names}


def _host_out(host: Host) -> dict[str, Any]:
    return {
        "name": host.name,
        "vram_budget_mib": host.vram_budget_mib,
        "vram_margin_mib": host.vram_margin_mib,
        "cluster_address": host.cluster_address,
        "cluster_interface": host.cluster_interface,
        "edited": host.inventory_overrides,
    }


def _service_out(service: Service) -> dict[str, Any]:
    return {
        "name": service.name,
        "host": service.host.name,
        "disabled": service.disabled,
        "vram_resident_mib": service.vram_resident_mib,
        "adopt_containers": list(service.adopt_containers or []),
        "edited": service.inventory_overrides,
    }


@router.patch("/hosts/{name}", response=HostEditOut, url_name="host_edit", summary="Edit a host")
def edit_host(request: HttpRequest, name: str, payload: HostEditIn):
    changes = clean_interconnect(_changes(payload, HOST_EDITABLE))
    before: dict[str, Any] = {}

    def check(row: Host) -> None:
        before.update(_fields(row, changes))
        check_interconnect(row, changes)

    with transaction.atomic():  # the edit and its audit row commit together
        host = edit_row(Host, name, changes, "host", check=check)
        audit.record(request, "host.update", "host", host.name, before=before, after=changes)
    log.info("host %s edited: %s", host.name, sorted(host.inventory_overrides))
    return _host_out(host)


@router.delete(
    "/hosts/{name}/edits",
    response=HostEditOut,
    url_name="host_edits_reset",
    summary="Put the cluster file's values back on a host",
)
def reset_host(request: HttpRequest, name: str):
    before: dict[str, Any] = {}

    def check(row: Host) -> None:
        before.update(_fields(row, row.inventory_overrides))
        check_interconnect(row, dict(row.inventory_overrides))  # the file's values

    with transaction.atomic():
        host = reset_edits(Host, name, "host", check=check)
        audit.record(
            request,
            "host.edits_reset",
            "host",
            host.name,
            before=before,
            after=_fields(host, before),
        )
    return _host_out(host)


@router.patch(
    "/services/{name}", response=ServiceEditOut, url_name="service_edit", summary="Edit a service"
)
def edit_service(request: HttpRequest, name: str, payload: ServiceEditIn):
    return _service_out(apply_service_edit(request, name, payload))


def _assert_model_not_leased(service: Service, lease_token: str | None) -> None:
    """Disabling a service takes its model off the GPU: refused (423, blocked_by) while
    someone else leases that model on the service's host."""
    assert_none_leased(
        served_keys(service),
        service.host.name,
        lease_token,
        action=f"disabling service {service.name} would take it off the GPU",
    )


def apply_service_edit(request: HttpRequest, name: str, payload: ServiceEditIn) -> Service:
    """Apply the sent fields of a service edit, audited, under the lock's rule (the
    token from `X-Swap-Lock-Token`); the dashboards then show it. The one way in for the
    API route and the dashboard's Enable / Disable (dashboard/actions.py)."""
    changes = _changes(payload, SERVICE_EDITABLE)
    adopt: list[str] | None = None
    if "adopt_containers" in changes:
        adopt = changes["adopt_containers"] = clean_adopt_list(changes["adopt_containers"])
    token = request.headers.get(LOCK_TOKEN_HEADER) or None
    lease_token = request.headers.get(LEASE_TOKEN_HEADER) or None

    before: dict[str, Any] = {}

    def check(row: Service) -> None:
        before.update(_fields(row, changes))
        # Disabling or enabling a service changes what the GPU serves: while the lock
        # is held only its holder may (423, nothing written). Checked on the locked row.
        if "disabled" in changes and changes["disabled"] != row.disabled:
            assert_may_change_gpu(token)
            if changes["disabled"]:
                _assert_model_not_leased(row, lease_token)
        if adopt is not None:
            check_adoptions(row, adopt)

    with transaction.atomic():
        service = edit_row(Service, name, changes, "service", check=check)
        audit.record(
            request, "service.update", "service", service.name, before=before, after=changes
        )
    log.info("service %s edited: %s", service.name, sorted(service.inventory_overrides))
    events.send_on_commit(events.services_changed)
    return service


@router.delete(
    "/services/{name}/edits",
    response=ServiceEditOut,
    url_name="service_edits_reset",
    summary="Put the cluster file's values back on a service",
)
def reset_service(request: HttpRequest, name: str):
    token = request.headers.get(LOCK_TOKEN_HEADER) or None
    lease_token = request.headers.get(LEASE_TOKEN_HEADER) or None

    before: dict[str, Any] = {}

    def check(row: Service) -> None:
        before.update(_fields(row, row.inventory_overrides))
        # Putting the file's `disabled` back enables or disables the service: gated.
        file_disabled = row.inventory_overrides.get("disabled", row.disabled)
        if file_disabled != row.disabled:
            assert_may_change_gpu(token)
            if file_disabled:
                _assert_model_not_leased(row, lease_token)

    with transaction.atomic():
        service = reset_edits(Service, name, "service", check=check)
        audit.record(
            request,
            "service.edits_reset",
            "service",
            service.name,
            before=before,
            after=_fields(service, before),
        )
    events.send_on_commit(events.services_changed)
    return _service_out(service)

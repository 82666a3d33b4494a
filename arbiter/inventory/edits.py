"""Edits made in Arbiter (dashboard or API) to what the cluster file says, kept across reloads.

A row's `inventory_overrides` maps each edited field to the file's value for it. Loading
the inventory (every start) leaves an edited column alone and only refreshes the file
value remembered beside it, so the edit survives restarts; `reset_edits` puts the file's
values back. Setting a field to the file's value ends its edit.

Only operating knobs are editable - how much VRAM a host offers, which interconnect
address and interface its multi-node launches use, whether a service is in use, what it
holds resident and which foreign containers it may take over - never where Arbiter finds
a host or how it logs in (address, SSH settings): those stay the file's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import models, transaction

from arbiter.errors import NotFound

HOST_EDITABLE = ("vram_budget_mib", "vram_margin_mib", "cluster_address", "cluster_interface")
SERVICE_EDITABLE = ("disabled", "vram_resident_mib", "adopt_containers")


def keep_edits(file_fields: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The fields an inventory load writes to a row: the file's, minus the edited ones,
    whose file value is remembered in `inventory_overrides` instead."""
    if not overrides:
        return {**file_fields, "inventory_overrides": {}}
    written = {name: value for name, value in file_fields.items() if name not in overrides}
    written["inventory_overrides"] = {
        name: file_fields[name] for name in overrides if name in file_fields
    }
    return written


def _current_row(model: type[models.Model], name: str, what: str) -> Any:
    row = model.objects.select_for_update().filter(name=name, in_inventory=True).first()
    if row is None:
        raise NotFound(f"no {what} named {name!r} in the inventory", field="name")
    return row


def edit_row(
    model: type[models.Model],
    name: str,
    changes: dict[str, Any],
    what: str,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """Set `changes` on the named row, remembering each field's file value.

    `check(row)` runs on the locked row first; what it raises leaves everything unwritten.
    """
    with transaction.atomic():
        row = _current_row(model, name, what)
        if check is not None:
            check(row)
        overrides = dict(row.inventory_overrides)
        for field, value in changes.items():
            file_value = overrides.get(field, getattr(row, field))
            setattr(row, field, value)
            if value == file_value:
                overrides.pop(field, None)
            else:
                overrides[field] = file_value
        row.inventory_overrides = overrides
        row.save(update_fields=[*changes, "inventory_overrides"])
    return row


def reset_edits(
    model: type[models.Model], name: str, what: str, check: Callable[[Any], None] | None = None
) -> Any:
    """Put the file's values back on every edited field of the named row.

    `check(row)` runs on the locked row first; what it raises leaves everything unwritten.
    """
    with transaction.atomic():
        row = _current_row(model, name, what)
        if check is not None:
            check(row)
        edited = list(row.inventory_overrides)
        for field, file_value in row.inventory_overrides.items():
            setattr(row, field, file_value)
        row.inventory_overrides = {}
        row.save(update_fields=[*edited, "inventory_overrides"])
    return row

"""Which models an API key may use through the broker (`ApiKey.allowed_models`).

A key's list names catalog keys or served names; a request may name either, so both
sides are widened through the catalog before comparing. An empty list allows every model.
"""

from __future__ import annotations

from typing import Any

from arbiter.broker.errors import ModelNotAllowed
from arbiter.broker.keys import Caller
from arbiter.broker.routing import Forward
from arbiter.broker.table import RouteTable


def _aliases(name: str, table: RouteTable) -> set[str]:
    entry = table.catalog_entry(name)
    return {name} | ({entry.key, entry.served_name} if entry else set())


def allowed_names(caller: Caller, table: RouteTable) -> set[str]:
    names: set[str] = set()
    for name in caller.allowed_models:
        names |= _aliases(name, table)
    return names


def check_model(caller: Caller, model: str, table: RouteTable) -> None:
    """403 (OpenAI-shaped) when the key may not use the model the request names."""
    if caller.allowed_models and not (_aliases(model, table) & allowed_names(caller, table)):
        raise ModelNotAllowed(model, caller.name)


def visible_models(
    caller: Caller, data: list[dict[str, Any]], table: RouteTable
) -> list[dict[str, Any]]:
    """The `/v1/models` entries the key may use: by id (served name) or catalog key."""
    if not caller.allowed_models:
        return data
    allowed = allowed_names(caller, table)
    shown = []
    for listed in data:
        names = _aliases(listed["id"], table)
        catalog_key = listed.get("arbiter", {}).get("catalog_key")
        if catalog_key:
            names |= _aliases(catalog_key, table)
        if names & allowed:
            shown.append(listed)
    return shown


def check_forward(caller: Caller, decision: Forward, table: RouteTable) -> None:
    """For routes that pick a service by capability: the model it serves must be allowed.

    A service that reports no model (a generic HTTP backend) cannot be checked, so a
    key limited to models is refused there.
    """
    if not caller.allowed_models:
        return
    loaded = decision.service.loaded_model
    if not loaded or not (_aliases(loaded, table) & allowed_names(caller, table)):
        raise ModelNotAllowed(loaded or decision.service.name, caller.name)

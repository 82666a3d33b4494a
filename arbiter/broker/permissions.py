"""Which models an API key may use through the broker (`ApiKey.allowed_models`).

A key's list names catalog keys or served names; a request may name either, so both
sides are widened through the catalog before comparing. An empty list allows every model.

A catalog alias is checked by the model it resolves to, never by its own name: for a
key limited to models, an alias lists only the models the key may use (`narrowed`), so
the alias can neither reach nor load a model the key may not use; an alias none of
whose models the key may use is refused (403) like a forbidden model. Listing an
alias's name in a key's list grants nothing by itself.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from arbiter.broker.errors import ModelNotAllowed
from arbiter.broker.keys import Caller
from arbiter.broker.routing import Forward
from arbiter.broker.table import AliasEntry, RouteTable


def _aliases(name: str, table: RouteTable) -> set[str]:
    entry = table.catalog_entry(name)
    return {name} | ({entry.key, entry.served_name} if entry else set())


def allowed_names(caller: Caller, table: RouteTable) -> set[str]:
    names: set[str] = set()
    for name in caller.allowed_models:
        names |= _aliases(name, table)
    return names


def narrowed(caller: Caller, table: RouteTable) -> RouteTable:
    """The table as the key's requests are routed on it: each catalog alias lists only
    the models the key may use (see the module docstring)."""
    if not caller.allowed_models or not table.aliases:
        return table
    allowed = allowed_names(caller, table)
    aliases = tuple(
        AliasEntry(
            alias.name,
            tuple(key for key in alias.model_keys if _aliases(key, table) & allowed),
            alias.created,
        )
        for alias in table.aliases
    )
    return replace(table, aliases=aliases)


def check_model(caller: Caller, model: str, table: RouteTable) -> None:
    """403 (OpenAI-shaped) when the key may not use the model the request names (for an
    alias: when it may use none of the alias's models)."""
    if not caller.allowed_models:
        return
    alias = None if table.catalog_entry(model) else narrowed(caller, table).alias(model)
    if alias is not None:
        if not alias.model_keys:
            raise ModelNotAllowed(model, caller.name)
    elif not (_aliases(model, table) & allowed_names(caller, table)):
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
        if listed.get("arbiter", {}).get("state") == "alias":
            # Listed from the narrowed table: an alias with a model the key may use.
            if listed["arbiter"]["model_keys"]:
                shown.append(listed)
            continue
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

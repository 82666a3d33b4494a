"""Writing catalog models: the one place that turns validated fields into rows.

The API, the dashboard forms and the seed file all validate with
`catalog.validation` and then save through here, so host references and duplicate keys
are handled the same way everywhere, and a rejected write leaves nothing behind.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from arbiter import audit
from arbiter.errors import Conflict, InvalidInput
from arbiter.models import Host
from catalog.aliases import alias_named
from catalog.models import CatalogModel


def host_problems(cleaned: dict[str, Any]) -> list[tuple[str, str]]:
    """Host names the fields mention that the inventory does not know, and hosts of a
    multi-node model without the interconnect address its nodes reach each other on."""
    cluster_addresses = dict(Host.objects.values_list("name", "cluster_address"))
    problems = []
    default_host = cleaned.get("default_host")
    if default_host and default_host not in cluster_addresses:
        problems.append(("default_host", f"unknown host {default_host!r}"))
    for index, name in enumerate(cleaned.get("tensor_parallel_hosts") or []):
        if name not in cluster_addresses:
            problems.append(("tensor_parallel_hosts", f"item {index}: unknown host {name!r}"))
        elif not cluster_addresses[name]:
            problems.append(
                (
                    "tensor_parallel_hosts",
                    f"item {index}: host {name!r} has no cluster_address: set cluster_address "
                    "(its address on the interconnect between the hosts) in the inventory",
                )
            )
    return problems


def _row_values(cleaned: dict[str, Any]) -> dict[str, Any]:
    problems = host_problems(cleaned)
    if problems:
        field, reason = problems[0]
        raise InvalidInput(f"{field}: {reason}", field=field)
    values = {name: value for name, value in cleaned.items() if name != "key"}
    restart = values.pop("restart", None) or {}
    values["restart_max"] = restart.get("max")
    values["restart_window_seconds"] = restart.get("window_seconds")
    name = values.pop("default_host", None)
    values["default_host"] = Host.objects.get(name=name) if name else None
    return values


def served_name_owner(served_name: str, *, exclude_pk: int | None = None) -> str | None:
    """The key of the catalog model that already serves as `served_name`, or None.

    Clients (and the broker) address a model by its served name: two models sharing one
    would let a new entry receive requests meant for the other.
    """
    others = CatalogModel.objects.filter(served_name=served_name)
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    return others.values_list("key", flat=True).first()


def served_name_conflict(served_name: str, owner: str) -> Conflict:
    return Conflict(
        f"served_name {served_name!r} is already the served name of catalog model "
        f"{owner!r} (served names are unique; set another served_name)",
        field="served_name",
        model=owner,
    )


def alias_conflict(field: str, name: str) -> Conflict:
    return Conflict(
        f"{field} {name!r} is the name of a catalog alias (clients name models and aliases "
        "alike; rename the alias or choose another name)",
        field=field,
        alias=name,
    )


def alias_taken_problem(cleaned: dict[str, Any]) -> Conflict | None:
    """The conflict when the model's served name or key is an alias's name, else None."""
    for field in ("served_name", "key"):
        if cleaned.get(field) and alias_named(cleaned[field]) is not None:
            return alias_conflict(field, cleaned[field])
    return None


def _refuse_taken_served_name(served_name: str, exclude_pk: int | None = None) -> None:
    owner = served_name_owner(served_name, exclude_pk=exclude_pk)
    if owner is not None:
        raise served_name_conflict(served_name, owner)
    if alias_named(served_name) is not None:
        raise alias_conflict("served_name", served_name)


def _values_of(model: CatalogModel, names: Any) -> dict[str, Any]:
    """The model's current values of the named fields, as the validated fields have them."""
    values = {}
    for name in names:
        if name == "default_host":
            values[name] = model.default_host.name if model.default_host else None
        elif name == "restart":
            values[name] = model.restart_policy
        else:
            values[name] = getattr(model, name)
    return values


def create_model(cleaned: dict[str, Any], who: Any = None) -> CatalogModel:
    """Create a model from validated fields; Conflict (409) when the key or the served
    name is taken. With `who` (a request or an audit Actor) the creation is audited in
    its own transaction (the API and the dashboard form; the seed file is not)."""
    key = cleaned["key"]
    values = _row_values(cleaned)
    if CatalogModel.objects.filter(key=key).exists():
        raise Conflict(f"a catalog model with key {key!r} already exists", field="key")
    try:
        # The check names the model that holds the served name; the unique constraint
        # (catalog_model_unique_served_name) closes the race between two creates.
        with transaction.atomic():
            _refuse_taken_served_name(values["served_name"])
            if alias_named(key) is not None:
                raise alias_conflict("key", key)
            model = CatalogModel.objects.create(key=key, **values)
            if who is not None:
                audit.record(who, "catalog.create", "catalog_model", key, after=dict(cleaned))
            return model
    except IntegrityError as error:  # a concurrent create won the race on the key or name
        owner = served_name_owner(values["served_name"])
        if owner is not None and owner != key:
            raise served_name_conflict(values["served_name"], owner) from error
        raise Conflict(f"a catalog model with key {key!r} already exists", field="key") from error


def update_model(model: CatalogModel, cleaned: dict[str, Any], who: Any = None) -> CatalogModel:
    """Replace every field of `model` (the key stays) with validated values; Conflict
    (409) when another model already has the served name. With `who`, audited (the
    fields that changed, before and after) in the same transaction."""
    values = _row_values(cleaned)
    names = [name for name in cleaned if name != "key"]
    before = _values_of(model, names)
    try:
        with transaction.atomic():
            _refuse_taken_served_name(values["served_name"], exclude_pk=model.pk)
            for name, value in values.items():
                setattr(model, name, value)
            model.save()
            _audit_update(model, names, before, who)
    except IntegrityError as error:  # a concurrent write took the served name first
        owner = served_name_owner(values["served_name"], exclude_pk=model.pk) or "another model"
        raise served_name_conflict(values["served_name"], owner) from error
    return model


def _audit_update(model: CatalogModel, names: list[str], before: dict[str, Any], who: Any) -> None:
    """The update's audit row (the fields that changed, before and after), when `who`."""
    if who is None:
        return
    after = _values_of(model, names)
    changed = [name for name in names if before[name] != after[name]]
    audit.record(
        who,
        "catalog.update",
        "catalog_model",
        model.key,
        before={name: before[name] for name in changed},
        after={name: after[name] for name in changed},
    )

"""Writing catalog models: the one place that turns validated fields into rows.

The API, the dashboard forms and the seed file all validate with
`catalog.validation` and then save through here, so host references and duplicate keys
are handled the same way everywhere, and a rejected write leaves nothing behind.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from arbiter.errors import Conflict, InvalidInput
from arbiter.models import Host
from catalog.models import CatalogModel


def host_problems(cleaned: dict[str, Any]) -> list[tuple[str, str]]:
    """Host names the fields mention that the inventory does not know."""
    known = set(Host.objects.values_list("name", flat=True))
    problems = []
    default_host = cleaned.get("default_host")
    if default_host and default_host not in known:
        problems.append(("default_host", f"unknown host {default_host!r}"))
    for index, name in enumerate(cleaned.get("tensor_parallel_hosts") or []):
        if name not in known:
            problems.append(("tensor_parallel_hosts", f"item {index}: unknown host {name!r}"))
    return problems


def _row_values(cleaned: dict[str, Any]) -> dict[str, Any]:
    problems = host_problems(cleaned)
    if problems:
        field, reason = problems[0]
        raise InvalidInput(f"{field}: {reason}", field=field)
    values = {name: value for name, value in cleaned.items() if name != "key"}
    name = values.pop("default_host", None)
    values["default_host"] = Host.objects.get(name=name) if name else None
    return values


def create_model(cleaned: dict[str, Any]) -> CatalogModel:
    """Create a model from validated fields; Conflict (409) when the key is taken."""
    key = cleaned["key"]
    values = _row_values(cleaned)
    if CatalogModel.objects.filter(key=key).exists():
        raise Conflict(f"a catalog model with key {key!r} already exists", field="key")
    try:
        with transaction.atomic():
            return CatalogModel.objects.create(key=key, **values)
    except IntegrityError as error:  # a concurrent create won the race on the unique key
        raise Conflict(f"a catalog model with key {key!r} already exists", field="key") from error


def update_model(model: CatalogModel, cleaned: dict[str, Any]) -> CatalogModel:
    """Replace every field of `model` (the key stays) with validated values."""
    values = _row_values(cleaned)
    with transaction.atomic():
        for name, value in values.items():
            setattr(model, name, value)
        model.save()
    return model

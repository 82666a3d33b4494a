"""Checking a host's interconnect fields (`cluster_address`, `cluster_interface`) when they
are edited in Arbiter.

The YAML loader checks each value and that an interface comes with an address; an edit
is checked here against the row it lands on, and against the catalog: a host that a
multi-node model names in `tensor_parallel_hosts` keeps an address, or the model could
no longer launch (its every host needs one).
"""

from __future__ import annotations

from typing import Any

from arbiter.errors import InvalidInput
from arbiter.models import Host
from catalog.models import CatalogModel

from . import fields
from .problems import Invalid

VALIDATORS = {
    "cluster_address": fields.cluster_address,
    "cluster_interface": fields.network_interface,
}


def clean_interconnect(changes: dict[str, Any]) -> dict[str, Any]:
    """The changes with each interconnect value checked; null or "" clears the field.

    InvalidInput names the first bad field.
    """
    cleaned = dict(changes)
    for name, validator in VALIDATORS.items():
        if name not in changes:
            continue
        value = changes[name]
        if value in (None, ""):
            cleaned[name] = ""
            continue
        try:
            cleaned[name] = validator(value)
        except Invalid as error:
            raise InvalidInput(f"{name}: {error.issues[0][1]}", field=name) from None
    return cleaned


def models_on(host_name: str) -> list[str]:
    """Keys of the catalog models that name the host in tensor_parallel_hosts."""
    # In Python: SQLite has no JSON `contains` lookup, and the catalog is small.
    rows = CatalogModel.objects.only("key", "tensor_parallel_hosts")
    return [row.key for row in rows if host_name in (row.tensor_parallel_hosts or [])]


def check_interconnect(host: Host, after: dict[str, Any]) -> None:
    """Raise InvalidInput when the host's fields, once `after` is applied, do not hold
    together: an interface without an address, or no address on a host a multi-node
    model needs."""
    address = after.get("cluster_address", host.cluster_address)
    interface = after.get("cluster_interface", host.cluster_interface)
    if not address and host.cluster_address:
        users = models_on(host.name)
        if users:
            raise InvalidInput(
                f"cluster_address: multi-node model(s) {', '.join(users)} run on "
                f"{host.name} (tensor_parallel_hosts), which needs its cluster_address; "
                "take the host out of their tensor_parallel_hosts first",
                field="cluster_address",
            )
    if interface and not address:
        raise InvalidInput(
            "cluster_interface: needs cluster_address (the host's address on that interface)",
            field="cluster_interface",
        )

"""What a host serves now, as catalog keys: what a lease protects and what a swap, an
eviction or an unload would take away.

A service serves a catalog model when its probed `loaded_model` is the model's served
name (or hub repo), or when the latest complete swap on the service brought it there
(the probe may not have seen it yet).
"""

from __future__ import annotations

from django.db.models import Q

from arbiter.models import Host, Service, Swap
from catalog.models import CatalogModel


def served_keys(service: Service) -> set[str]:
    """The catalog keys the service serves now (empty when nothing is known)."""
    keys: set[str] = set()
    if service.loaded_model:
        keys |= set(
            CatalogModel.objects.filter(
                Q(served_name=service.loaded_model) | Q(hub_repo=service.loaded_model)
            ).values_list("key", flat=True)
        )
    last = (
        Swap.objects.filter(service=service, state=Swap.COMPLETE, dry_run=False)
        .order_by("-finished_at", "-pk")
        .values_list("model_key", flat=True)
        .first()
    )
    if last:
        keys.add(last)
    return keys


def host_served_keys(host: Host) -> set[str]:
    """The catalog keys any enabled service of the host serves now."""
    keys: set[str] = set()
    for service in Service.objects.in_inventory().filter(host=host, disabled=False):
        keys |= served_keys(service)
    return keys


def hosts_serving(model: CatalogModel) -> list[Host]:
    """The hosts whose enabled services serve the model now, by name."""
    return [
        host
        for host in Host.objects.filter(services__disabled=False).distinct().order_by("name")
        if model.key in host_served_keys(host)
    ]

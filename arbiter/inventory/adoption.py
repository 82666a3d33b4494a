"""Checking a service's `adopt_containers` against the rest of the inventory (database).

A container lives on one host, so only one service there may take it over; and the
container names of catalog models are the containers swaps start for a host's vLLM
service, so a service of another kind may not claim them. The YAML loader checks the
first rule within the file (`loader._check_adoptions`); an edit in Arbiter is checked
here against what the database holds, edits included.
"""

from __future__ import annotations

from typing import Any

from arbiter.errors import InvalidInput
from arbiter.models import Service
from catalog.models import CatalogModel

from . import fields
from .problems import Invalid, show

FIELD = "adopt_containers"
MAX_ADOPTED = 32


def clean_adopt_list(value: Any) -> list[str]:
    """The names as a list, or InvalidInput naming `adopt_containers[i]`."""
    check = fields.list_of(fields.container_name, expectation="must be a list of container names")
    if isinstance(value, list) and len(value) > MAX_ADOPTED:
        raise InvalidInput(f"{FIELD}: at most {MAX_ADOPTED} containers", field=FIELD)
    try:
        return list(check(value))
    except Invalid as error:
        suffix, reason = error.issues[0]
        raise InvalidInput(f"{FIELD}{suffix}: {reason}", field=FIELD) from None


def check_adoptions(service: Service, names: list[str]) -> None:
    """Raise InvalidInput when a name belongs to another service of the same host."""
    others = (
        Service.objects.filter(host_id=service.host_id, in_inventory=True)
        .exclude(pk=service.pk)
        .only("name", "adopt_containers")
    )
    for index, name in enumerate(names):
        for other in others:
            if name in (other.adopt_containers or []):
                raise InvalidInput(
                    f"{FIELD}[{index}]: container {show(name)} on host {service.host.name} is "
                    f"already adopted by service {other.name}",
                    field=FIELD,
                )
    if service.kind == Service.KIND_VLLM:
        return  # its own slot's containers, e.g. one an older Arbiter left unlabelled
    catalog_names = set(CatalogModel.objects.values_list("container_name", flat=True))
    for index, name in enumerate(names):
        if name in catalog_names:
            raise InvalidInput(
                f"{FIELD}[{index}]: {show(name)} is the container catalog models run in, "
                f"started by swaps for the vLLM service of {service.host.name}, not for "
                f"{service.kind} service {service.name}",
                field=FIELD,
            )

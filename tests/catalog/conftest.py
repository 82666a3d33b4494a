"""Catalog fixtures: the simulator's hosts in the database, an async API client, models."""

import json
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from arbiter.engine.ssh import get_pool
from arbiter.inventory import apply_inventory, load_inventory
from catalog.models import CatalogModel
from tests.helpers import KeyAsyncClient
from tests.sim_fixtures import target_for


@pytest.fixture
def sim_hosts(sim_cluster, db):
    """The simulated cluster's hosts and services, loaded through the inventory."""
    apply_inventory(load_inventory(sim_cluster.config_path))
    return sim_cluster


@pytest.fixture
def sim_host_rows(sim_inventory, db) -> None:
    """`sim_hosts`'s rows with no host started: for what is refused before any SSH."""
    apply_inventory(load_inventory(sim_inventory))


@pytest.fixture
async def aclient(api_key) -> AsyncIterator[AsyncClient]:
    """An async client with an API key; closes this loop's SSH connections afterwards."""
    yield KeyAsyncClient(api_key)
    await get_pool().close()


@pytest.fixture
async def sim_a(sim_cluster):
    """sim-a's simulated host and its SSH target; this loop's SSH connections closed after."""
    yield sim_cluster.hosts["sim-a"], target_for(sim_cluster, "sim-a")
    await get_pool().close()


def post(client, body):
    """POST a catalog model (JSON)."""
    return client.post("/api/models", body, content_type="application/json")


def put(client, key, body):
    """PUT a catalog model (JSON)."""
    return client.put(f"/api/models/{key}", body, content_type="application/json")


def hub_model(key: str = "qwen", **fields) -> CatalogModel:
    """A hub model; it serves as its repo's name unless another model already does
    (served names are unique), then as its key."""
    values = {"hub_repo": "Qwen/Qwen3-0.6B", **fields}
    values.setdefault("served_name", free_served_name(values["hub_repo"], key))
    return CatalogModel.objects.create(key=key, **values)


def free_served_name(preferred: str, fallback: str) -> str:
    return fallback if CatalogModel.objects.filter(served_name=preferred).exists() else preferred


def local_model(key: str = "finetune", path: str = "/models/team/run-1", **fields):
    return CatalogModel.objects.create(key=key, local_path=path, served_name=key, **fields)


acreate_hub = sync_to_async(hub_model)
acreate_local = sync_to_async(local_model)


def parse_sse(text: str) -> list[tuple[str, dict]]:
    """[(event, data), ...] of a Server-Sent Events body."""
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines.get("data", "{}"))))
    return events

"""Swap fixtures: the simulated cluster in the database, catalog models, a dispatcher.

The dispatcher runs on the test's own event loop, exactly as the engine runs it inside
`manage.py serve`; the simulated hosts run in their own thread (`sim_cluster`).
"""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from arbiter.engine.ssh import get_pool
from arbiter.engine.swaps.dispatch import SwapDispatcher
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import ApiKey, Host, Swap, SwapLogLine, SwapTransition
from catalog.models import CatalogModel
from tests.catalog.conftest import free_served_name
from tests.helpers import KeyAsyncClient

HEALTH_TIMEOUT = 20.0
MEMORY_TIMEOUT = 10.0


@pytest.fixture
def swap_settings(settings):
    """Short timeouts: a simulated model starts in well under a second."""
    settings.ARBITER_SWAP_HEALTH_TIMEOUT = HEALTH_TIMEOUT
    settings.ARBITER_SWAP_MEMORY_FREE_TIMEOUT = MEMORY_TIMEOUT
    settings.ARBITER_HF_TOKEN = ""
    return settings


def make_model(key: str = "qwen3-small", **fields) -> CatalogModel:
    values = {
        "hub_repo": "Qwen/Qwen3-0.6B",
        "gpu_memory_utilization": 0.3,
        "estimated_vram_mib": 6000,
        "max_model_len": 8192,
    }
    values.update(fields)
    # Served names are unique: the repo's name unless another model has it, then the key.
    values.setdefault("served_name", free_served_name(values["hub_repo"], key))
    return CatalogModel.objects.create(key=key, **values)


@pytest.fixture
def cluster(sim_cluster, swap_settings, transactional_db):
    """The simulated cluster's hosts and services in the database, and two models."""
    load_rows(sim_cluster.config_path)
    return sim_cluster


@pytest.fixture
def cluster_rows(sim_inventory, swap_settings, transactional_db) -> None:
    """`cluster`'s rows with no host started: for what is refused before any SSH."""
    load_rows(sim_inventory)


def load_rows(config_path: Path) -> None:
    """The cluster file's hosts and services in the database, and two models."""
    apply_inventory(load_inventory(config_path))
    make_model()
    make_model(
        "smollm2",
        hub_repo="HuggingFaceTB/SmolLM2-1.7B-Instruct",
        served_name="smollm2-instruct",
        gpu_memory_utilization=0.4,
        extra_engine_flags=["--enable-prefix-caching"],
    )


@pytest.fixture
def raw_key(transactional_db) -> str:
    _key, raw = ApiKey.objects.create_key(name="swap tests")
    return raw


@pytest.fixture
def aclient(raw_key) -> AsyncClient:
    return KeyAsyncClient(raw_key)


@pytest.fixture
def admin_aclient(transactional_db) -> AsyncClient:
    """For inventory edits (adopting containers): an admin's act (arbiter.route_policy)."""
    _key, raw = ApiKey.objects.create_key(name="swap tests admin", role=ApiKey.ROLE_ADMIN)
    return KeyAsyncClient(raw)


@pytest.fixture
async def dispatcher(cluster) -> AsyncIterator[SwapDispatcher]:
    """A running dispatcher; cancelled (swaps left where they are) at the end."""
    dispatcher = SwapDispatcher(interval=0.1)
    task = asyncio.create_task(dispatcher.run_forever())
    try:
        yield dispatcher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await get_pool().close()


@sync_to_async
def swap_row(swap_id: int) -> Swap:
    return Swap.objects.select_related("host").get(pk=swap_id)


@sync_to_async
def transitions(swap_id: int) -> list[str]:
    return list(
        SwapTransition.objects.filter(swap_id=swap_id)
        .order_by("at", "pk")
        .values_list("state", flat=True)
    )


@sync_to_async
def log_lines(swap_id: int, stream: str | None = None) -> list[str]:
    lines = SwapLogLine.objects.filter(swap_id=swap_id).order_by("seq")
    if stream:
        lines = lines.filter(stream=stream)
    return list(lines.values_list("text", flat=True))


async def wait_for_state(swap_id: int, states, timeout: float = 30.0) -> Swap:
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    while True:
        swap = await swap_row(swap_id)
        if swap.state in wanted:
            return swap
        assert time.monotonic() < deadline, f"swap {swap_id} is {swap.state}, not {wanted}"
        await asyncio.sleep(0.05)


async def start_swap(aclient: AsyncClient, model: str, host: str | None = "sim-b", **extra):
    body = {"model": model, **extra}
    if host is not None:
        body["host"] = host
    return await aclient.post("/api/swap", body, content_type="application/json")


@sync_to_async
def host_id(name: str) -> int:
    return Host.objects.get(name=name).pk

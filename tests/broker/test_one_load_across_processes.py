"""Exactly one swap per model, whichever broker process asks (`loading.start_swap`).

Each thread here stands for one broker process: its own database connection and
transaction. Under the catalog row's lock the second finds the first one's swap (active,
or completed moments ago) and follows it instead of starting its own. Runs on SQLite
and, with DATABASE_URL, on PostgreSQL.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from arbiter.broker.loading import JUST_LOADED_SECONDS, start_swap
from arbiter.engine.swaps.store import record_transition
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Host, Swap
from tests.swaps.conftest import make_model

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "qwen3-small"


@pytest.fixture
def cluster(sim_cluster) -> None:
    apply_inventory(load_inventory(sim_cluster.config_path))
    make_model()
    make_model("smollm2", hub_repo="HuggingFaceTB/SmolLM2-1.7B-Instruct", served_name="smollm2")


def complete(swap_id: int, ago: float = 0.0) -> None:
    """End the swap as the engine does (freeing its host), `ago` seconds back."""
    assert record_transition(swap_id, Swap.COMPLETE) is not None
    if ago:
        Swap.objects.filter(pk=swap_id).update(finished_at=timezone.now() - timedelta(seconds=ago))


def test_it_makes_a_second_process_follow_the_active_swap_even_on_another_host(cluster):
    first, ours = start_swap(MODEL, "sim-b")
    assert ours
    # Another process chose another host for the same model: it follows the first swap.
    assert start_swap(MODEL, "sim-a") == (first, True)
    assert Swap.objects.filter(model_key=MODEL).count() == 1


def test_it_follows_a_load_that_completed_moments_ago_instead_of_repeating_it(cluster):
    first, _ = start_swap(MODEL, "sim-b")
    complete(first)  # another process's load, its route table not refreshed yet
    assert start_swap(MODEL, "sim-b") == (first, True)
    assert Swap.objects.filter(model_key=MODEL).count() == 1


def test_it_loads_again_after_an_old_load_or_one_swapped_away_since(cluster):
    old, _ = start_swap(MODEL, "sim-b")
    complete(old, ago=JUST_LOADED_SECONDS + 5)
    again, ours = start_swap(MODEL, "sim-b")
    assert ours and again != old

    complete(again)
    other, _ = start_swap("smollm2", "sim-b")  # the host was swapped to another model since
    complete(other)
    third, ours = start_swap(MODEL, "sim-b")
    assert ours and third not in (old, again, other)


def test_it_creates_exactly_one_swap_for_processes_asking_at_once_for_different_hosts(cluster):
    hosts = ["sim-a", "sim-b", "sim-a", "sim-b"]
    barrier = threading.Barrier(len(hosts))
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def process(host: str) -> None:
        try:
            barrier.wait()
            results.append(start_swap(MODEL, host))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()  # each thread's own connection

    threads = [threading.Thread(target=process, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    swaps = list(Swap.objects.filter(model_key=MODEL).values_list("pk", "host__name"))
    assert len(swaps) == 1
    assert set(results) == {(swaps[0][0], True)}
    assert Host.objects.filter(name=swaps[0][1]).exists()

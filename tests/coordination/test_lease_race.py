"""A lease and a swap that would replace the leased model, asked for at the same moment:
exactly one of them wins, on SQLite and on PostgreSQL (both lock the host's row; CI runs
this suite on both databases).

Without the row lock, PostgreSQL's READ COMMITTED let both transactions pass their
checks: the lease granted and the swap created that takes its model off the host.
"""

import threading

import pytest
from django.db import connections

from arbiter.engine.swaps.store import create_swap
from arbiter.errors import ArbiterError
from arbiter.models import Service, Swap
from coordination import leases
from coordination.models import Lease
from tests.coordination.test_lease_matrix import gpu  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 20


def race() -> tuple[list[str], list[str]]:
    """One lease of `llama` and one swap to `qwen` on gpu-a, started together."""
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def lease() -> None:
        try:
            start.wait()
            leases.acquire("llama", "gpu-a", "nightly-eval", 600)
            outcomes["lease"] = "granted"
        except ArbiterError as error:
            outcomes["lease"] = str(error.status)
        finally:
            connections.close_all()

    def swap() -> None:
        try:
            start.wait()
            create_swap("qwen", "gpu-a", False, "race")
            outcomes["swap"] = "created"
        except ArbiterError as error:
            outcomes["swap"] = str(error.status)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=lease), threading.Thread(target=swap)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return [outcomes.get("lease", "hung")], [outcomes.get("swap", "hung")]


def test_it_grants_the_lease_or_creates_the_swap_never_both(gpu):  # noqa: F811
    seen = set()
    for _ in range(ROUNDS):
        (lease,), (swap,) = race()
        seen.add((lease, swap))
        assert (lease, swap) in {("granted", "423"), ("409", "created")}, (lease, swap)
        # Reset: no lease, no swap, llama served again.
        Lease.objects.all().delete()
        Swap.objects.all().delete()
        Service.objects.filter(name="vllm-a").update(loaded_model="llama")
    print(f"\noutcomes over {ROUNDS} rounds: {sorted(seen)}")

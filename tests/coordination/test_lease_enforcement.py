"""Refuse, never break: while a lease is held, nobody but its holder swaps the leased
model out or disables the service serving it; the blocked party gets 423 with
`blocked_by` (holder, purpose, expires_at) and Retry-After, and nothing is written.
The lock and leases compose: the lock's holder is refused the same way.

(The broker's evictions and idle unloads: tests/broker/test_lease_broker.py.)
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from arbiter.models import AuditEvent, Host, Service, Swap, SwapHost
from coordination import leases, locks
from coordination.locks import iso
from coordination.models import Lease
from tests.coordination.test_lease_matrix import gpu  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db

LEASE = "X-Arbiter-Lease-Token"
LOCK = "X-Swap-Lock-Token"


@pytest.fixture
def leased(gpu):  # noqa: F811 - the fixture above
    """`llama` on gpu-a (what vllm-a serves) leased by the nightly eval."""
    Service.objects.create(
        name="vllm-b", host=Host.objects.get(name="gpu-b"), base_url="http://127.0.0.1:2"
    )
    return leases.acquire("llama", "gpu-a", "nightly-eval", 600, "eval of run 42")


def swap(client, model="qwen", host="gpu-a", **headers):
    return client.post(
        "/api/swap",
        {"model": model, "host": host},
        content_type="application/json",
        headers=headers,
    )


def assert_blocked_by(response, grant) -> None:
    assert response.status_code == 423, response.content
    error = response.json()["error"]
    assert error["type"] == "locked"
    lease = Lease.objects.get(pk=grant.id)
    assert error["blocked_by"] == {
        "lease_id": grant.id,
        "holder": "nightly-eval",
        "purpose": "eval of run 42",
        "expires_at": iso(lease.expires_at),
        "model": "llama",
        "host": "gpu-a",
        "system": False,
    }
    assert error["holder"] == "nightly-eval"
    assert 1 <= int(response.headers["Retry-After"]) <= 600
    assert grant.token not in response.content.decode()


# --- swaps --------------------------------------------------------------------------------

SWAP_CELLS = [
    # (who asks, lock held by caller, headers kind) -> expected
    ("nobody's token", False, {}, 423),
    ("a garbage lease token", False, {"lease": "garbage"}, 423),
    ("the lock holder's token", True, {"lock": True}, 423),
    ("the lease holder's token", False, {"lease": True}, 202),
    ("the lock and the lease holder's tokens", True, {"lock": True, "lease": True}, 202),
]


@pytest.mark.parametrize(("who", "lock_held", "kinds", "expected"), SWAP_CELLS)
def test_it_refuses_a_swap_that_would_replace_a_leased_model(
    leased, key_client, who, lock_held, kinds, expected
):
    headers = {}
    if lock_held:
        lock = locks.acquire("caller", 600, "maintenance")
        if kinds.get("lock"):
            headers[LOCK] = lock.token
    if kinds.get("lease") is True:
        headers[LEASE] = leased.token
    elif kinds.get("lease"):
        headers[LEASE] = "not-a-token"
    response = swap(key_client, **headers)
    if expected == 423:
        assert_blocked_by(response, leased)
        assert not Swap.objects.exists()
        assert not AuditEvent.objects.filter(action="swap.start").exists()
    else:
        assert response.status_code == 202, response.content
        assert Swap.objects.get().model_key == "qwen"
    assert leases.blocking_lease("llama", "gpu-a") is not None  # the lease is untouched


def test_it_lets_a_swap_load_the_leased_model_itself(leased, key_client):
    assert swap(key_client, model="llama").status_code == 202


def test_it_lets_swaps_onto_other_hosts_through(leased, key_client):
    assert swap(key_client, host="gpu-b").status_code == 202


@pytest.mark.parametrize("end", ["released", "expired", "force-released"])
def test_it_lets_swaps_through_once_the_lease_has_ended(leased, key_client, alice, end):
    if end == "released":
        leases.release(leased.id, leased.token)
    elif end == "expired":
        Lease.objects.filter(pk=leased.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    else:
        leases.force_release(leased.id, reason="stuck", actor=alice)
    assert swap(key_client).status_code == 202


def test_it_blocks_a_swap_replacing_the_model_the_last_swap_brought(gpu, key_client):  # noqa: F811
    Service.objects.filter(name="vllm-a").update(loaded_model="")  # the probe has not seen it
    first = swap(key_client, model="qwen")
    assert first.status_code == 202
    Swap.objects.filter(pk=first.json()["id"]).update(
        state=Swap.COMPLETE, finished_at=timezone.now()
    )
    SwapHost.objects.update(active=False)
    grant = leases.acquire("qwen", None, "job", 60, "")  # served there now: host found
    assert grant.host == "gpu-a"
    response = swap(key_client, model="llama")
    assert response.status_code == 423
    assert response.json()["error"]["blocked_by"]["model"] == "qwen"


def test_it_passes_dry_runs(leased, key_client):
    response = key_client.post(
        "/api/swap",
        {"model": "qwen", "host": "gpu-a", "dry_run": True},
        content_type="application/json",
    )
    assert response.status_code == 202


# --- disabling the service that serves it ---------------------------------------------------


def test_it_refuses_to_disable_the_service_of_a_leased_model(leased, admin_key_client):
    before = Service.objects.filter(name="vllm-a").values().get()
    response = admin_key_client.patch(
        "/api/services/vllm-a", {"disabled": True}, content_type="application/json"
    )
    assert_blocked_by(response, leased)
    assert Service.objects.filter(name="vllm-a").values().get() == before
    assert not AuditEvent.objects.filter(action="service.update").exists()


def test_it_lets_the_lease_holder_disable_it(leased, admin_key_client):
    response = admin_key_client.patch(
        "/api/services/vllm-a",
        {"disabled": True},
        content_type="application/json",
        headers={LEASE: leased.token},
    )
    assert response.status_code == 200, response.content
    assert Service.objects.get(name="vllm-a").disabled


def test_it_lets_other_services_be_disabled(leased, admin_key_client):
    response = admin_key_client.patch(
        "/api/services/vllm-b", {"disabled": True}, content_type="application/json"
    )
    assert response.status_code == 200, response.content


def test_it_refuses_a_lease_while_a_swap_of_another_model_is_under_way(gpu, key_client):  # noqa: F811
    running = swap(key_client, model="qwen")
    assert running.status_code == 202
    response = key_client.post(
        "/api/leases",
        {"model": "llama", "host": "gpu-a", "holder": "late", "ttl_seconds": 60},
        content_type="application/json",
    )
    assert response.status_code == 409, response.content
    assert response.json()["error"]["field"] == "host"
    assert response.json()["error"]["swap_id"] == running.json()["id"]
    assert not Lease.objects.exists()
    # Leasing the model being swapped in is fine: it is on its way in.
    assert leases.acquire("qwen", "gpu-a", "warm-up", 60).host == "gpu-a"

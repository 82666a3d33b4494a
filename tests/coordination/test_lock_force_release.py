"""DELETE /api/swap/lock?force=true: a staff person takes the lock; audited, fenced, an
event written in the same transaction, an optional lock-delay."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from arbiter.errors import Locked
from arbiter.models import ApiKey
from coordination import locks, webhooks
from coordination.models import LockAudit, SwapLock, WebhookEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(alice, csrf_client) -> Client:
    """Alice's browser session, CSRF enforced, with the token a page would give it."""
    csrf_client.force_login(alice)
    csrf_client.get("/")  # sets the CSRF cookie
    csrf_client.defaults["HTTP_X_CSRFTOKEN"] = csrf_client.cookies["csrftoken"].value
    return csrf_client


@pytest.fixture
def held() -> locks.LockGrant:
    return locks.acquire("nightly-eval", 600, "tonight's eval")


def force(client: Client, query: str = ""):
    return client.delete(f"/api/swap/lock?force=true{query}")


def test_it_lets_staff_force_release_with_an_audit_row_and_a_higher_generation(
    staff_client, alice, held
):
    response = force(staff_client, "&reason=stuck%20job")
    assert response.status_code == 204
    assert response.content == b""

    row = SwapLock.objects.get(scope="global")
    assert not row.is_held()
    assert row.token_hash == "" and row.holder == ""
    assert row.generation == held.generation + 1
    assert row.blocked_until is None
    assert row.released_by == "alice"
    assert row.release_reason == "stuck job"

    audit = LockAudit.objects.get()
    assert audit.action == "force_release"
    assert audit.actor == alice
    assert audit.actor_name == "alice"
    assert audit.reason == "stuck job"
    assert audit.old_holder == "nightly-eval"
    assert audit.old_purpose == "tonight's eval"
    assert audit.old_generation == held.generation
    assert audit.new_generation == held.generation + 1
    assert audit.lock_delay_seconds == 0
    assert abs((audit.at - timezone.now()).total_seconds()) < 5
    assert row.released_at == audit.at

    event = WebhookEvent.objects.get(event_type="lock.force_released")
    assert event.payload == {
        "scope": "global",
        "old_holder": "nightly-eval",
        "old_generation": held.generation,
        "new_generation": held.generation + 1,
        "actor": "alice",
        "reason": "stuck job",
        "at": locks.iso(audit.at),
    }


def test_it_fences_the_old_holder_out(staff_client, key_client, held):
    assert force(staff_client).status_code == 204
    headers = {"X-Swap-Lock-Token": held.token}
    extend = key_client.post(
        "/api/swap/lock",
        {"holder": "nightly-eval", "ttl_seconds": 60},
        content_type="application/json",
        headers=headers,
    )
    assert extend.status_code == 412
    assert key_client.delete("/api/swap/lock", headers=headers).status_code == 409

    fresh = locks.acquire("next-job", 60)
    assert fresh.generation == held.generation + 2
    with transaction.atomic(), pytest.raises(Locked):
        locks.assert_may_swap(held.token)


def test_it_blocks_acquiring_during_the_lock_delay(staff_client, key_client, held):
    response = force(staff_client, "&lock_delay_seconds=30&reason=cool%20down")
    assert response.status_code == 204
    row = SwapLock.objects.get(scope="global")
    assert 29 <= (row.blocked_until - timezone.now()).total_seconds() <= 30
    assert LockAudit.objects.get().lock_delay_seconds == 30
    assert parse_datetime(key_client.get("/api/swap/lock").json()["blocked_until"]) == (
        row.blocked_until.replace(microsecond=row.blocked_until.microsecond // 1000 * 1000)
    )

    payload = {"holder": "impatient", "ttl_seconds": 60}
    refused = key_client.post("/api/swap/lock", payload, content_type="application/json")
    assert refused.status_code == 423
    error = refused.json()["error"]
    assert set(error) == {"type", "message", "holder", "expires_at", "blocked_until"}
    assert error["type"] == "locked"
    assert error["holder"] is None
    assert error["blocked_until"] == error["expires_at"] == locks.iso(row.blocked_until)
    assert 29 <= int(refused["Retry-After"]) <= 30
    assert SwapLock.objects.get(scope="global").holder == ""

    # The delay passes (moved in the database, not slept): the next grant goes through.
    SwapLock.objects.update(blocked_until=timezone.now() - timedelta(seconds=1))
    granted = key_client.post("/api/swap/lock", payload, content_type="application/json")
    assert granted.status_code == 201
    assert granted.json()["generation"] == held.generation + 2
    assert SwapLock.objects.get(scope="global").blocked_until is None


def test_it_refuses_force_release_by_a_non_staff_user(bob, csrf_client, held):
    csrf_client.force_login(bob)
    csrf_client.get("/")
    csrf_client.defaults["HTTP_X_CSRFTOKEN"] = csrf_client.cookies["csrftoken"].value
    before = SwapLock.objects.values().get()
    response = force(csrf_client)
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "forbidden"
    assert SwapLock.objects.values().get() == before
    assert not LockAudit.objects.exists()
    assert not WebhookEvent.objects.exists()


def test_it_refuses_force_release_by_an_api_key_even_a_staff_users(alice, held):
    _key, raw_key = ApiKey.objects.create_key(name="alice's key", user=alice)
    client = Client(headers={"Authorization": f"Bearer {raw_key}"})
    before = SwapLock.objects.values().get()
    response = force(client, "&reason=x")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "forbidden"
    assert SwapLock.objects.values().get() == before
    assert not LockAudit.objects.exists()


def test_it_refuses_anonymous_force_release(held):
    response = force(Client())
    assert response.status_code == 401
    assert SwapLock.objects.get(scope="global").is_held()


def test_it_refuses_a_staff_session_without_csrf(alice, csrf_client, held):
    csrf_client.force_login(alice)
    response = force(csrf_client)
    assert response.status_code == 403
    assert SwapLock.objects.get(scope="global").is_held()
    assert not LockAudit.objects.exists()


def test_it_answers_409_when_the_lock_is_not_held(staff_client, held):
    SwapLock.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    before = SwapLock.objects.values().get()
    response = force(staff_client)
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "conflict"
    assert SwapLock.objects.values().get() == before
    assert not LockAudit.objects.exists()


@pytest.mark.parametrize(
    "query, field",
    [
        ("&lock_delay_seconds=-1", "lock_delay_seconds"),
        ("&lock_delay_seconds=86401", "lock_delay_seconds"),
        ("&lock_delay_seconds=soon", "lock_delay_seconds"),
        ("&reason=" + "r" * 501, "reason"),
    ],
)
def test_it_refuses_bad_force_parameters_naming_the_field(staff_client, held, query, field):
    response = force(staff_client, query)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert SwapLock.objects.get(scope="global").is_held()
    assert not LockAudit.objects.exists()


def test_it_writes_nothing_when_the_event_cannot_be_written(alice, held, monkeypatch):
    def broken_outbox(event_type, payload):
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr(webhooks, "emit_event", broken_outbox)
    before = SwapLock.objects.values().get()
    with pytest.raises(RuntimeError):
        locks.force_release(alice, reason="x")
    assert SwapLock.objects.values().get() == before
    assert not LockAudit.objects.exists()

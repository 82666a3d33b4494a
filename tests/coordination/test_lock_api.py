"""POST/GET/DELETE /api/swap/lock: grants, extension, expiry, validation, secrecy, auth."""

import hashlib
import logging
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.db.transaction import TransactionManagementError
from django.test import Client, override_settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from coordination import locks
from coordination.models import SwapLock

pytestmark = pytest.mark.django_db


def acquire(client: Client, token: str | None = None, **fields):
    payload = {"holder": "nightly-eval", "ttl_seconds": 60, "purpose": "eval run"} | fields
    headers = {"X-Swap-Lock-Token": token} if token else {}
    return client.post("/api/swap/lock", payload, content_type="application/json", headers=headers)


def lock_row() -> SwapLock:
    return SwapLock.objects.get(scope="global")


def test_it_grants_a_free_lock_once_and_stores_only_the_token_hash(key_client):
    response = acquire(key_client)
    assert response.status_code == 201
    body = response.json()
    token = body["token"]
    assert len(token) >= 43
    row = lock_row()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    for value in SwapLock.objects.values().get().values():
        assert token not in str(value)
    assert body["holder"] == row.holder == "nightly-eval"
    assert body["purpose"] == row.purpose == "eval run"
    assert body["generation"] == row.generation == 1
    assert parse_datetime(body["expires_at"]) - parse_datetime(body["acquired_at"]) == timedelta(
        seconds=60
    )
    assert abs((row.expires_at - timezone.now()).total_seconds() - 60) < 5


def test_it_shows_the_lock_without_token_or_hash(key_client):
    assert key_client.get("/api/swap/lock").json() == {
        "scope": "global",
        "held": False,
        "holder": None,
        "purpose": None,
        "generation": 0,
        "acquired_at": None,
        "expires_at": None,
        "seconds_left": 0,
        "blocked_until": None,
        "released_at": None,
        "released_by": "",
        "release_reason": "",
    }
    grant = acquire(key_client, ttl_seconds=300).json()
    response = key_client.get("/api/swap/lock")
    assert response.status_code == 200
    state = response.json()
    assert state["held"] is True
    assert state["holder"] == "nightly-eval"
    assert state["purpose"] == "eval run"
    assert state["generation"] == grant["generation"]
    assert state["expires_at"] == grant["expires_at"]
    assert 295 <= state["seconds_left"] <= 300
    assert grant["token"] not in response.content.decode()
    assert lock_row().token_hash not in response.content.decode()


def test_it_extends_with_the_same_generation_and_a_new_expiry(key_client):
    grant = acquire(key_client, ttl_seconds=60).json()
    response = acquire(key_client, token=grant["token"], ttl_seconds=3600)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"holder", "generation", "expires_at"}
    assert body["generation"] == grant["generation"]
    assert body["holder"] == "nightly-eval"
    assert parse_datetime(body["expires_at"]) > parse_datetime(grant["expires_at"])
    row = lock_row()
    assert locks.iso(row.expires_at) == body["expires_at"]
    assert abs((row.expires_at - timezone.now()).total_seconds() - 3600) < 5
    assert row.generation == grant["generation"]
    assert row.token_hash == locks.hash_token(grant["token"])
    # The grant's token keeps working.
    assert (
        key_client.delete(
            "/api/swap/lock", headers={"X-Swap-Lock-Token": grant["token"]}
        ).status_code
        == 204
    )


def test_it_never_resurrects_an_expired_lock(key_client):
    grant = acquire(key_client, ttl_seconds=1).json()
    time.sleep(1.1)  # a real 1 s TTL running out on the server clock
    assert key_client.get("/api/swap/lock").json()["held"] is False
    before = SwapLock.objects.values().get()
    response = acquire(key_client, token=grant["token"], ttl_seconds=60)
    assert response.status_code == 412
    assert response.json()["error"]["type"] == "precondition_failed"
    assert SwapLock.objects.values().get() == before
    assert key_client.get("/api/swap/lock").json()["held"] is False

    again = acquire(key_client, holder="next-job")
    assert again.status_code == 201
    assert again.json()["generation"] > grant["generation"]


def test_it_tells_others_who_holds_the_lock_and_when_to_retry(key_client):
    grant = acquire(key_client, ttl_seconds=90).json()
    response = acquire(key_client, holder="someone-else")
    assert response.status_code == 423
    assert response.json() == {
        "error": {
            "type": "locked",
            "message": f"the swap lock is held by 'nightly-eval' until {grant['expires_at']}",
            "holder": "nightly-eval",
            "expires_at": grant["expires_at"],
        }
    }
    assert 89 <= int(response["Retry-After"]) <= 90


def test_it_says_retry_after_at_least_one_second(key_client):
    acquire(key_client, ttl_seconds=60)
    SwapLock.objects.update(expires_at=timezone.now() + timedelta(milliseconds=300))
    response = acquire(key_client, holder="someone-else")
    assert response.status_code == 423
    assert response["Retry-After"] == "1"


def test_it_releases_with_a_release_record_and_the_next_grant_is_higher(key_client):
    grant = acquire(key_client).json()
    response = key_client.delete(
        "/api/swap/lock?reason=eval%20done", headers={"X-Swap-Lock-Token": grant["token"]}
    )
    assert response.status_code == 204
    row = lock_row()
    assert (row.holder, row.token_hash, row.expires_at) == ("", "", None)
    assert row.released_by == "nightly-eval"
    assert row.release_reason == "eval done"
    assert row.released_at is not None
    assert row.generation == grant["generation"]
    state = key_client.get("/api/swap/lock").json()
    assert state["held"] is False
    assert state["released_by"] == "nightly-eval"

    # The released token is stale for good.
    again = key_client.delete("/api/swap/lock", headers={"X-Swap-Lock-Token": grant["token"]})
    assert again.status_code == 409
    assert acquire(key_client, token=grant["token"]).status_code == 412
    assert acquire(key_client).json()["generation"] == grant["generation"] + 1


def test_it_lets_a_session_user_take_the_lock(operator_bob, csrf_client):
    csrf_client.force_login(operator_bob)
    csrf_client.get("/")  # sets the CSRF cookie
    csrf_token = csrf_client.cookies["csrftoken"].value
    response = csrf_client.post(
        "/api/swap/lock",
        {"holder": "bob", "ttl_seconds": 60},
        content_type="application/json",
        headers={"X-CSRFToken": csrf_token},
    )
    assert response.status_code == 201
    assert response.json()["purpose"] == ""


@pytest.mark.parametrize(
    "method, path",
    [("get", "/api/swap/lock"), ("post", "/api/swap/lock"), ("delete", "/api/swap/lock")],
)
def test_it_refuses_anonymous_lock_calls(method, path):
    response = getattr(Client(), method)(
        path, {"holder": "x", "ttl_seconds": 60}, content_type="application/json"
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"
    assert not SwapLock.objects.exists()


@pytest.mark.parametrize(
    "ttl",
    [0, -1, 86401, "60", 1.5, 60.0, True, None, [60], 10**30],
    ids=repr,
)
def test_it_refuses_a_bad_ttl_naming_the_field(key_client, ttl):
    response = acquire(key_client, ttl_seconds=ttl)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["field"] == "ttl_seconds"
    assert not SwapLock.objects.filter(holder__gt="").exists()


def test_it_refuses_a_missing_ttl(key_client):
    response = key_client.post("/api/swap/lock", {"holder": "x"}, content_type="application/json")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "ttl_seconds"


@override_settings(ARBITER_LOCK_MAX_TTL=100)
def test_it_takes_the_ttl_maximum_from_settings(key_client):
    assert acquire(key_client, ttl_seconds=101).json()["error"]["field"] == "ttl_seconds"
    grant = acquire(key_client, ttl_seconds=100)
    assert grant.status_code == 201
    extend = acquire(key_client, token=grant.json()["token"], ttl_seconds=101)
    assert extend.status_code == 422
    assert extend.json()["error"]["field"] == "ttl_seconds"


@pytest.mark.parametrize(
    "holder", ["", "   ", "x" * 201, None, 5, "a\x00b", "line\nbreak"], ids=repr
)
def test_it_refuses_a_bad_holder_naming_the_field(key_client, holder):
    response = acquire(key_client, holder=holder)
    assert response.status_code == 422, response.content
    assert response.json()["error"]["field"] == "holder"
    assert not SwapLock.objects.filter(holder__gt="").exists()


def test_it_refuses_a_missing_holder(key_client):
    response = key_client.post(
        "/api/swap/lock", {"ttl_seconds": 60}, content_type="application/json"
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "holder"


def test_it_accepts_the_longest_holder_and_purpose(key_client):
    response = acquire(key_client, holder="h" * 200, purpose="p" * 500)
    assert response.status_code == 201
    assert lock_row().holder == "h" * 200


@pytest.mark.parametrize("purpose", ["p" * 501, 7, "nul\x00byte"], ids=repr)
def test_it_refuses_a_bad_purpose_naming_the_field(key_client, purpose):
    response = acquire(key_client, purpose=purpose)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "purpose"


def test_it_refuses_unknown_fields(key_client):
    response = acquire(key_client, generation=7)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "generation"


def test_it_validates_release_parameters(key_client):
    grant = acquire(key_client).json()
    headers = {"X-Swap-Lock-Token": grant["token"]}
    too_long = key_client.delete(f"/api/swap/lock?reason={'r' * 501}", headers=headers)
    assert too_long.status_code == 422
    assert too_long.json()["error"]["field"] == "reason"
    delay = key_client.delete("/api/swap/lock?lock_delay_seconds=5", headers=headers)
    assert delay.status_code == 422
    assert delay.json()["error"]["field"] == "lock_delay_seconds"
    force = key_client.delete("/api/swap/lock?force=maybe", headers=headers)
    assert force.status_code == 422
    assert force.json()["error"]["field"] == "force"
    assert lock_row().token_hash == locks.hash_token(grant["token"])


def test_it_never_logs_the_token(key_client, caplog):
    caplog.set_level(logging.DEBUG)
    grant = acquire(key_client).json()
    acquire(key_client, token=grant["token"], ttl_seconds=120)
    acquire(key_client, holder="other")
    key_client.delete("/api/swap/lock", headers={"X-Swap-Lock-Token": grant["token"]})
    logged = caplog.text
    assert "nightly-eval" in logged  # the grant was logged...
    assert grant["token"] not in logged  # ...never its token
    assert locks.hash_token(grant["token"]) not in logged


def test_it_returns_the_state_for_the_dashboard(key_client):
    assert locks.current_lock() == locks.LockState(
        "global", False, None, None, 0, None, None, 0, None, None, "", ""
    )
    grant = locks.acquire("dash", 30, "shown on the banner")
    state = locks.current_lock()
    assert state.held and state.holder == "dash" and state.purpose == "shown on the banner"
    assert state.generation == grant.generation
    assert state.expires_at == grant.expires_at
    assert 29 <= state.seconds_left <= 30


@pytest.mark.django_db(transaction=True)
def test_it_refuses_to_gate_a_swap_outside_a_transaction():
    with pytest.raises(TransactionManagementError):
        locks.assert_may_swap(None)
    with transaction.atomic():
        assert locks.assert_may_swap(None) is None

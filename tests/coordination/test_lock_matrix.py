"""The spec's status table, cell by cell: {lock free, held by caller, held by another,
expired} x {no token, valid token, stale token, garbage} for POST and DELETE
/api/swap/lock and for the swap gate `assert_may_swap`.

Tokens are the caller's: "valid" is the token of the caller's latest grant (current only
while the caller holds the lock), "stale" the token of an earlier grant it released,
"garbage" a token never issued. Every cell checks status, body keys, headers and that a
refused request left the row exactly as it was.
"""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from arbiter.errors import Locked
from coordination import locks
from coordination.models import SwapLock

pytestmark = pytest.mark.django_db

STATES = ["free", "held by caller", "held by another", "expired"]
TOKENS = ["none", "valid", "stale", "garbage"]
TTL = 60

GRANT_KEYS = {"token", "holder", "purpose", "generation", "acquired_at", "expires_at"}
EXTEND_KEYS = {"holder", "generation", "expires_at"}
LOCKED_KEYS = {"type", "message", "holder", "expires_at"}
FIELD_ERROR_KEYS = {"type", "message", "field"}


def _expire_current_grant() -> None:
    SwapLock.objects.filter(scope=locks.GLOBAL).update(
        expires_at=timezone.now() - timedelta(seconds=5)
    )


def build_state(state: str) -> dict[str, str | None]:
    """Put the global lock in `state`; return the caller's tokens by kind."""
    earlier = locks.acquire("caller", TTL, "an earlier run")
    locks.release(earlier.token)
    latest = locks.acquire("caller", TTL, "tonight's eval")
    if state == "free":
        locks.release(latest.token)
    elif state == "held by another":
        _expire_current_grant()
        locks.acquire("other", TTL, "someone else's job")
    elif state == "expired":
        _expire_current_grant()
    return {
        "none": None,
        "valid": latest.token,
        "stale": earlier.token,
        "garbage": "not-a-token-anybody-was-given",
    }


def snapshot() -> dict:
    return SwapLock.objects.filter(scope=locks.GLOBAL).values().get()


def _headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"X-Swap-Lock-Token": token}


# --- POST /api/swap/lock -------------------------------------------------------------

POST_EXPECTED = {
    ("free", "none"): 201,
    ("free", "valid"): 412,
    ("free", "stale"): 412,
    ("free", "garbage"): 412,
    ("held by caller", "none"): 423,
    ("held by caller", "valid"): 200,
    ("held by caller", "stale"): 423,
    ("held by caller", "garbage"): 423,
    ("held by another", "none"): 423,
    ("held by another", "valid"): 423,
    ("held by another", "stale"): 423,
    ("held by another", "garbage"): 423,
    ("expired", "none"): 201,
    ("expired", "valid"): 412,
    ("expired", "stale"): 412,
    ("expired", "garbage"): 412,
}


@pytest.mark.parametrize("token_kind", TOKENS)
@pytest.mark.parametrize("state", STATES)
def test_it_answers_post_per_the_status_table(key_client, state, token_kind):
    tokens = build_state(state)
    before = snapshot()
    response = key_client.post(
        "/api/swap/lock",
        {"holder": "caller", "ttl_seconds": 120, "purpose": "retry"},
        content_type="application/json",
        headers=_headers(tokens[token_kind]),
    )
    expected = POST_EXPECTED[(state, token_kind)]
    assert response.status_code == expected, response.content
    body = response.json()
    after = snapshot()
    for token in tokens.values():
        if token:
            assert token not in response.content.decode()

    if expected == 201:
        assert set(body) == GRANT_KEYS
        assert body["holder"] == "caller"
        assert body["purpose"] == "retry"
        assert body["generation"] == before["generation"] + 1 == after["generation"]
        assert after["token_hash"] == locks.hash_token(body["token"])
        assert after["holder"] == "caller"
        assert body["token"] not in tokens.values()
    elif expected == 200:
        assert set(body) == EXTEND_KEYS
        assert body["generation"] == before["generation"] == after["generation"]
        assert after["expires_at"] > before["expires_at"]
        assert after["token_hash"] == before["token_hash"]
    elif expected == 423:
        assert set(body) == {"error"}
        assert set(body["error"]) == LOCKED_KEYS
        assert body["error"]["type"] == "locked"
        assert body["error"]["holder"] == before["holder"]
        assert body["error"]["expires_at"] == locks.iso(before["expires_at"])
        assert 1 <= int(response.headers["Retry-After"]) <= TTL
        assert after == before
    else:
        assert set(body) == {"error"}
        assert set(body["error"]) == FIELD_ERROR_KEYS
        assert body["error"]["type"] == "precondition_failed"
        assert body["error"]["field"] == "X-Swap-Lock-Token"
        assert "Retry-After" not in response.headers
        assert after == before


# --- DELETE /api/swap/lock -----------------------------------------------------------

DELETE_EXPECTED = {
    (state, kind): 428 if kind == "none" else 409 for state in STATES for kind in TOKENS
} | {("held by caller", "valid"): 204}


@pytest.mark.parametrize("token_kind", TOKENS)
@pytest.mark.parametrize("state", STATES)
def test_it_answers_delete_per_the_status_table(key_client, state, token_kind):
    tokens = build_state(state)
    before = snapshot()
    response = key_client.delete("/api/swap/lock", headers=_headers(tokens[token_kind]))
    expected = DELETE_EXPECTED[(state, token_kind)]
    assert response.status_code == expected, response.content
    after = snapshot()

    if expected == 204:
        assert response.content == b""
        assert after["token_hash"] == "" and after["holder"] == ""
        assert after["released_by"] == "caller"
        assert after["released_at"] is not None
        assert after["release_reason"] == "released by the holder"
        assert after["generation"] == before["generation"]
        assert locks.current_lock().held is False
    else:
        body = response.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == FIELD_ERROR_KEYS
        assert body["error"]["field"] == "X-Swap-Lock-Token"
        assert body["error"]["type"] == ("precondition_required" if expected == 428 else "conflict")
        assert after == before  # lock untouched


# --- assert_may_swap (the gate inside the swap's transaction) -------------------------

GATE_EXPECTED = (
    {("free", kind): "none" for kind in TOKENS}
    | {("expired", kind): "none" for kind in TOKENS}
    | {("held by another", kind): "locked" for kind in TOKENS}
    | {
        ("held by caller", "none"): "locked",
        ("held by caller", "valid"): "generation",
        ("held by caller", "stale"): "locked",
        ("held by caller", "garbage"): "locked",
    }
)


@pytest.mark.parametrize("token_kind", TOKENS)
@pytest.mark.parametrize("state", STATES)
def test_it_gates_swaps_per_the_status_table(state, token_kind):
    tokens = build_state(state)
    before = snapshot()
    expected = GATE_EXPECTED[(state, token_kind)]

    with transaction.atomic():
        if expected == "locked":
            with pytest.raises(Locked) as raised:
                locks.assert_may_swap(tokens[token_kind])
        else:
            result = locks.assert_may_swap(tokens[token_kind])

    if expected == "none":
        assert result is None
    elif expected == "generation":
        assert result == before["generation"]
    else:
        error = raised.value
        assert error.status == 423
        body = error.as_body()
        assert set(body["error"]) == LOCKED_KEYS
        assert body["error"]["holder"] == before["holder"]
        assert body["error"]["expires_at"] == locks.iso(before["expires_at"])
        assert 1 <= int(error.headers["Retry-After"]) <= TTL
        for token in tokens.values():
            if token:
                assert token not in str(body)
    assert snapshot() == before

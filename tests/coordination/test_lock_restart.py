"""The lock survives `kill -9` of the server: a real `manage.py serve` (SQLite in its own
data dir, as `make run` starts it) is killed with SIGKILL and started again."""

import httpx
import pytest


@pytest.fixture(scope="module")
def api(live_arbiter):
    key = live_arbiter.manage("create_api_key", "lock restart test").strip()
    with httpx.Client(
        base_url=live_arbiter.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as client:
        yield client


def test_it_keeps_the_lock_across_a_kill_9_restart(live_arbiter, api):
    grant = api.post(
        "/api/swap/lock",
        json={"holder": "nightly-eval", "ttl_seconds": 900, "purpose": "survives restarts"},
    )
    assert grant.status_code == 201, grant.text
    token, generation = grant.json()["token"], grant.json()["generation"]
    before = api.get("/api/swap/lock").json()
    assert before["held"] is True

    killed = live_arbiter.process
    live_arbiter.kill_and_restart()
    assert killed.returncode == -9
    assert live_arbiter.process.pid != killed.pid

    after = api.get("/api/swap/lock").json()
    assert after["held"] is True
    for key in ("holder", "purpose", "generation", "acquired_at", "expires_at"):
        assert after[key] == before[key], key
    assert after["expires_at"] == grant.json()["expires_at"]

    other = api.post("/api/swap/lock", json={"holder": "someone-else", "ttl_seconds": 60})
    assert other.status_code == 423
    assert other.json()["error"]["holder"] == "nightly-eval"
    assert other.json()["error"]["expires_at"] == before["expires_at"]
    assert 1 <= int(other.headers["Retry-After"]) <= 900

    headers = {"X-Swap-Lock-Token": token}
    extended = api.post(
        "/api/swap/lock", json={"holder": "nightly-eval", "ttl_seconds": 1200}, headers=headers
    )
    assert extended.status_code == 200, extended.text
    assert extended.json()["generation"] == generation
    assert extended.json()["expires_at"] > before["expires_at"]

    assert api.delete("/api/swap/lock", headers=headers).status_code == 204
    assert api.delete("/api/swap/lock", headers=headers).status_code == 409
    regrant = api.post("/api/swap/lock", json={"holder": "someone-else", "ttl_seconds": 60})
    assert regrant.status_code == 201
    assert regrant.json()["generation"] > generation

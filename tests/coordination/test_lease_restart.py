"""A lease survives `kill -9` of the server: a real `manage.py serve` (SQLite in its own
data dir, as `make run` starts it) with its simulated cluster. `arbiter-swap --lease`
swaps a model in and leases it; the server is killed with SIGKILL and started again; the
lease still refuses a swap that would replace the model (423, blocked_by), and its token
still lets its holder through, extends and releases it."""

import re

import pytest

from coordination import client
from tests.coordination.test_client import MODEL, Cron


@pytest.fixture(scope="module")
def cron(live_arbiter):
    cron = Cron(live_arbiter)
    yield cron
    cron.api.close()


def test_it_keeps_a_lease_across_a_kill_9_restart(live_arbiter, cron):
    api = cron.api
    run = cron.run(
        "--model",
        MODEL,
        "--holder",
        "nightly-eval",
        "--ttl",
        "30",
        "--host",
        "sim-a",
        "--purpose",
        "survives restarts",
        "--lease",
        "900",
    )
    assert run.process.returncode == client.EXIT_OK, run.err
    printed = "\n".join(run.stdout)
    lease_id = int(re.search(r"^ARBITER_LEASE_ID=(\d+)$", printed, re.M).group(1))
    token = re.search(r"^ARBITER_LEASE_TOKEN=(\S+)$", printed, re.M).group(1)
    assert f"lease {lease_id} acquired as 'nightly-eval'" in run.err
    before = api.get("/api/leases").json()
    assert [(lease["id"], lease["model"], lease["host"]) for lease in before] == [
        (lease_id, MODEL, "sim-a")
    ]
    assert api.get("/api/swap/lock").json()["held"] is False  # the lock was released

    killed = live_arbiter.process
    live_arbiter.kill_and_restart()
    assert killed.returncode == -9

    after = api.get("/api/leases").json()
    assert after == [{**before[0], "seconds_left": after[0]["seconds_left"]}]
    assert api.get("/api/status").json()["leases"][0]["id"] == lease_id

    other = next(m["key"] for m in api.get("/api/models").json() if m["key"] != MODEL)
    refused = api.post("/api/swap", json={"model": other, "host": "sim-a"})
    assert refused.status_code == 423, refused.text
    blocked = refused.json()["error"]["blocked_by"]
    assert (blocked["lease_id"], blocked["holder"], blocked["purpose"]) == (
        lease_id,
        "nightly-eval",
        "survives restarts",
    )
    assert blocked["expires_at"] == before[0]["expires_at"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 900
    assert token not in refused.text

    headers = {"X-Arbiter-Lease-Token": token}
    extended = api.patch(f"/api/leases/{lease_id}", json={"ttl_seconds": 1200}, headers=headers)
    assert extended.status_code == 200, extended.text
    assert extended.json()["expires_at"] > before[0]["expires_at"]
    assert api.delete(f"/api/leases/{lease_id}", headers=headers).status_code == 204
    assert api.delete(f"/api/leases/{lease_id}", headers=headers).status_code == 409
    assert api.get("/api/leases").json() == []

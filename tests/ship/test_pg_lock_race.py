"""64 clients race for the swap lock through a real `manage.py serve` on PostgreSQL.

Production's database under production's concurrency: every request is a real HTTP
request to daphne, every view runs in daphne's worker threads. With persistent
connections (CONN_MAX_AGE > 0) each of those threads kept its own connection open, and
64 racing clients exhausted PostgreSQL's default `max_connections` of 100: requests got
500 "FATAL: sorry, too many clients already" and a winner could not release (issue 17).
Each round: exactly one 201, every other answer 423, the winner's release 204.

Runs when DATABASE_URL (PostgreSQL) is set: `make test-postgres`, and CI's run of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
from django.db import connection

from arbiter.models import ApiKey
from tests.helpers import free_port
from tests.live_arbiter import healthy, inherited_env
from tests.ship.sources import ROOT
from tests.ship.test_cross_process import INVENTORY, database_url

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL"),
        reason="needs PostgreSQL: set DATABASE_URL (`make test-postgres` does; CI runs it)",
    ),
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(600),
]

CLIENTS = 64
ROUNDS = 100


@pytest.fixture
def served(tmp_path):
    env = inherited_env()
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(INVENTORY.format(ssh_port=free_port()))  # nobody listens there
    env.update(
        ARBITER_DATA_DIR=str(tmp_path / "data"),
        ARBITER_CONFIG=str(inventory),
        DATABASE_URL=database_url(),
        DJANGO_SETTINGS_MODULE="arbiter.settings",
    )
    env.pop("REDIS_URL", None)  # the lock lives in the database; nothing else needed
    port = free_port()
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--no-huey", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not healthy(url):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url, log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def in_thread(work):
    """Run database work in a worker thread that closes its connection afterwards
    (PostgreSQL must be able to drop the test database at the end)."""

    def run():
        try:
            return work()
        finally:
            connection.close()

    return asyncio.to_thread(run)


def database_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


async def test_it_answers_64_clients_racing_for_the_lock_for_100_rounds_without_a_server_error(
    served,
):
    url, log = served
    assert connection.vendor == "postgresql"
    _key, raw = await in_thread(lambda: ApiKey.objects.create_key("lock race"))
    statuses: Counter = Counter()
    bad_rounds = []
    most_connections = 0
    limits = httpx.Limits(max_connections=CLIENTS + 4)
    headers = {"Authorization": f"Bearer {raw}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=60, limits=limits, trust_env=False
    ) as client:

        async def acquire(index: int) -> httpx.Response:
            body = {"holder": f"racer-{index}", "ttl_seconds": 600}
            return await client.post("/api/swap/lock", json=body)

        for round_number in range(ROUNDS):
            answers = await asyncio.gather(*(acquire(i) for i in range(CLIENTS)))
            statuses.update(answer.status_code for answer in answers)
            winners = [answer for answer in answers if answer.status_code == 201]
            if len(winners) != 1:
                bad_rounds.append((round_number, [a.status_code for a in answers]))
            for winner in winners:
                token = winner.json()["token"]
                released = await client.delete(
                    "/api/swap/lock", headers={"X-Swap-Lock-Token": token}
                )
                statuses[f"release {released.status_code}"] += 1
            if round_number % 10 == 0:
                most_connections = max(most_connections, await in_thread(database_connections))
    print(
        f"{CLIENTS} clients x {ROUNDS} rounds: {dict(statuses)}; at most {most_connections} "
        "database connections"
    )
    assert not bad_rounds, bad_rounds[:3]
    assert statuses[201] == ROUNDS and statuses["release 204"] == ROUNDS
    assert statuses[423] == ROUNDS * (CLIENTS - 1), (dict(statuses), log.read_text()[-3000:])

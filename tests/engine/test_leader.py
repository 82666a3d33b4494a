"""The engine leadership: one holder per database, handed over when the holder goes.

Runs on the database the suite runs on: SQLite (the data directory's flock) and, in the
PostgreSQL run, PostgreSQL's advisory lock. The whole story with three real `serve`
processes and a kill -9 is tests/ship/test_engine_leader.py.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from arbiter.engine.leader import (
    current_leader,
    lead_when_possible,
    leadership_for_database,
    this_process,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_has_one_holder_at_a_time_and_the_next_takes_over_once_it_lets_go():
    first, second = leadership_for_database(), leadership_for_database()
    try:
        assert current_leader() is None
        assert first.try_acquire()
        assert not second.try_acquire()
        assert first.still_held()
        assert current_leader() == this_process()
        first.release()
        assert current_leader() is None
        assert second.try_acquire()
        assert current_leader() == this_process()
    finally:
        first.release()
        second.release()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's advisory lock")
def test_it_is_no_longer_held_by_a_postgres_leader_whose_session_ends():
    """The server ends the session (as it does for a killed process's closed socket):
    the lock is free at once and the former holder notices on its next check."""
    first, second = leadership_for_database(), leadership_for_database()
    try:
        assert first.try_acquire()
        backend_pid = first._connection.info.backend_pid
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
        assert not first.still_held()
        assert second.try_acquire()
    finally:
        first.release()
        second.release()


async def test_it_lets_exactly_one_of_two_run_the_engine_and_the_other_take_over():
    running: list[str] = []
    started: list[str] = []

    def engine(name: str):
        async def run() -> None:
            started.append(name)
            running.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                running.remove(name)

        return run

    interval = 0.1
    leaders = {
        name: asyncio.create_task(lead_when_possible(engine(name), interval=interval))
        for name in ("a", "b")
    }
    try:
        for _ in range(50):
            if running:
                break
            await asyncio.sleep(interval)
        await asyncio.sleep(3 * interval)  # long enough for the other to try and fail
        assert len(running) == 1 and started == running
        first = running[0]
        leaders[first].cancel()
        await asyncio.gather(leaders[first], return_exceptions=True)
        loop = asyncio.get_running_loop()
        gone = loop.time()
        while not running and loop.time() - gone < 5:
            await asyncio.sleep(0.01)
        handover = loop.time() - gone
        assert running == [other for other in leaders if other != first]
        assert handover <= 2 * interval + 0.2, handover
    finally:
        for task in leaders.values():
            task.cancel()
        await asyncio.gather(*leaders.values(), return_exceptions=True)
    assert await sync_to_async(current_leader)() is None


def test_it_keeps_its_lock_file_private(settings):
    if connection.vendor == "postgresql":
        pytest.skip("the file is only used on SQLite")
    leadership = leadership_for_database()
    try:
        assert leadership.try_acquire()
        mode = os.stat(settings.DATA_DIR / "engine.lock").st_mode & 0o777
        assert mode == 0o600
    finally:
        leadership.release()

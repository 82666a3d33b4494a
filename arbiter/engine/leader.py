"""Exactly one engine per database: the `serve` process that holds the leadership runs
the engine loops (sampling, probes, swaps, idle unloads); every other one serves HTTP,
WebSockets and the broker, and tries again every sampling tick to take over.

How leadership is held, and why it ends when its process dies:

- **PostgreSQL**: a session-level advisory lock (`pg_try_advisory_lock`) on a connection
  of its own. PostgreSQL keeps it "until explicitly released or the session ends"
  (PostgreSQL documentation, "Advisory Locks", explicit-locking.html#ADVISORY-LOCKS);
  a process killed with -9 has its socket closed by the kernel, the server ends the
  session and the lock is free for the next `pg_try_advisory_lock`. Advisory locks are
  local to one database, so two Arbiters on one server do not contend. The leader's
  connection carries `application_name` "arbiter-engine HOST:PID", which is how anyone
  can name the leader (`pg_locks` joined with `pg_stat_activity`).
- **SQLite** (one machine): an exclusive `flock` on `DATA_DIR/engine.lock`; the kernel
  drops it when the holder's file descriptors close, which death does.

The leader checks every tick that it still holds the lock (its connection still
answers); if not — the database restarted, the network dropped — it stops its engine
loops at once, and a swap it was running is re-attached by whoever leads next.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)

# pg_advisory_lock keys (bigint) for this application: "Arbiter" in ASCII.
ENGINE_LOCK_KEY = 0x41726269746572
STARTUP_LOCK_KEY = ENGINE_LOCK_KEY + 1


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership(Protocol):
    def try_acquire(self) -> bool: ...
    def still_held(self) -> bool: ...
    def release(self) -> None: ...


class PostgresLeadership:
    """The engine lock as a PostgreSQL advisory lock on a connection of its own (not
    Django's: Django closes its connections after each request, which would end the
    session and release the lock)."""

    def __init__(self) -> None:
        self._connection: Any = None

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(**own_connection_params(f"arbiter-engine {this_process()}"))

    def try_acquire(self) -> bool:
        try:
            if self._connection is None or self._connection.closed:
                self._connection = self._connect()
            row = self._connection.execute(
                "SELECT pg_try_advisory_lock(%s)", [ENGINE_LOCK_KEY]
            ).fetchone()
        except Exception:  # the database is down: nobody leads from here this tick
            log.warning("engine leadership: database unreachable", exc_info=True)
            self.release()
            return False
        if row and row[0]:
            return True
        return False

    def still_held(self) -> bool:
        try:
            self._connection.execute("SELECT 1").fetchone()
            return True
        except Exception:
            return False

    def release(self) -> None:
        # Closing the session releases the lock; there is nothing to unlock by hand.
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # already broken: the server has ended the session
                log.debug("engine leadership: closing a broken connection", exc_info=True)
            self._connection = None


class FileLeadership:
    """The engine lock as an exclusive flock on a file in the data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, this_process().encode())
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def own_connection_params(application_name: str) -> dict[str, Any]:
    """psycopg.connect() arguments for a PostgreSQL connection of the engine's own, outside
    Django's (which closes its connections after each request): the database settings
    without Django's own cursor and adapter options, in autocommit."""
    params = connection.get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    return {**params, "autocommit": True, "application_name": application_name}


def leadership_for_database() -> Leadership:
    if connection.vendor == "postgresql":
        return PostgresLeadership()
    return FileLeadership(settings.DATA_DIR / "engine.lock")


def current_leader() -> str | None:
    """ "HOST:PID" of the process that runs the engine, or None when none does."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT activity.application_name
                FROM pg_locks AS lock
                JOIN pg_stat_activity AS activity ON activity.pid = lock.pid
                WHERE lock.locktype = 'advisory' AND lock.granted
                  AND lock.database = (
                      SELECT oid FROM pg_database WHERE datname = current_database()
                  )
                  AND ((lock.classid::bigint << 32) | lock.objid::bigint) = %s
                """,
                [ENGINE_LOCK_KEY],
            )
            row = cursor.fetchone()
        return row[0].removeprefix("arbiter-engine ") if row else None
    path = settings.DATA_DIR / "engine.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: by the leader
            return path.read_text().strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


async def lead_when_possible(
    run_engine: Callable[[], Coroutine[Any, Any, None]],
    leadership: Leadership | None = None,
    interval: float | None = None,
) -> None:
    """Forever: take the leadership when it is free, run the engine while it is held,
    stop the engine the moment it is not. Cancel to stop (the leadership is released)."""
    held: Leadership = leadership or leadership_for_database()
    interval = interval if interval is not None else float(settings.ARBITER_SAMPLE_INTERVAL)
    waiting_logged = False
    try:
        while True:
            if await asyncio.to_thread(held.try_acquire):
                log.info("this process (%s) leads the engine", this_process())
                waiting_logged = False
                await _run_while_held(run_engine, held, interval)
            elif not waiting_logged:
                log.info("another process leads the engine; %s stands by", this_process())
                waiting_logged = True
            await asyncio.sleep(interval)
    finally:
        await asyncio.to_thread(held.release)


async def _run_while_held(
    run_engine: Callable[[], Coroutine[Any, Any, None]], leadership: Leadership, interval: float
) -> None:
    engine: asyncio.Task[None] = asyncio.create_task(run_engine(), name="engine")
    try:
        while not engine.done():
            await asyncio.wait({engine}, timeout=interval)
            if not engine.done() and not await asyncio.to_thread(leadership.still_held):
                log.error("lost the engine leadership; stopping the engine loops here")
                break
    finally:
        engine.cancel()
        await asyncio.gather(engine, return_exceptions=True)
        await asyncio.to_thread(leadership.release)


@contextmanager
def startup_serialized() -> Iterator[None]:
    """Run a process's start-up writes (inventory, first admin) one process at a time, so
    several `serve` processes started together do not race on them."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [STARTUP_LOCK_KEY])
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [STARTUP_LOCK_KEY])
        return
    fd = os.open(settings.DATA_DIR / "startup.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

"""Wakes the swap dispatcher the moment a swap is created, instead of at its next poll.

Both paths are hints: the dispatcher still polls, so a lost wake-up costs one poll
interval, never a swap.

- In this process: the creating transaction registers `swap_created` with
  `transaction.on_commit`, which sets every running dispatcher's event (from whatever
  thread committed).
- Across processes, on PostgreSQL: the creating transaction also sends
  `NOTIFY arbiter_swaps`, which PostgreSQL delivers only when that transaction commits
  (PostgreSQL docs, NOTIFY: "if a NOTIFY is executed inside a transaction, the notify
  events are not delivered until and unless the transaction is committed"). The engine's
  dispatcher LISTENs on a connection of its own (Django's are closed after each request),
  so a swap created through any serve process reaches the leader at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from asgiref.sync import sync_to_async
from django.db import connection, transaction

from arbiter.engine.leader import own_connection_params, this_process

log = logging.getLogger(__name__)

CHANNEL = "arbiter_swaps"
LISTEN_RETRY_SECONDS = 5.0  # after a lost LISTEN connection; the poll covers the gap
STOP_SECONDS = 5.0

_wakers: set[Callable[[], None]] = set()


def announce_swap_created() -> None:
    """Call inside the transaction that creates a pending swap."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    transaction.on_commit(swap_created)


def swap_created() -> None:
    for wake in list(_wakers):
        wake()


class SwapWakeup:
    """What a dispatcher waits on between rounds: its poll interval, or a new swap."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._listener: asyncio.Task[None] | None = None

    def _wake_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
            self._loop.call_soon_threadsafe(self._event.set)

    def start(self) -> None:
        _wakers.add(self._wake_threadsafe)
        if connection.vendor == "postgresql":
            self._listener = asyncio.create_task(self._listen(), name="swap-wakeup-listen")

    async def wait(self, timeout: float) -> None:
        """Return after `timeout` seconds, or sooner when a swap was created."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
        self._event.clear()

    async def close(self) -> None:
        _wakers.discard(self._wake_threadsafe)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait({self._listener}, timeout=STOP_SECONDS)
            self._listener = None

    async def _listen(self) -> None:
        import psycopg  # only on PostgreSQL, where it is installed with the driver

        params = await sync_to_async(own_connection_params)(f"arbiter-swaps {this_process()}")
        while True:
            try:
                listener = await psycopg.AsyncConnection.connect(**params)
                try:
                    await listener.execute(f"LISTEN {CHANNEL}")
                    self._event.set()  # a swap created while nobody listened
                    async for _notify in listener.notifies():
                        self._event.set()
                finally:
                    await listener.close()
            except psycopg.Error as error:
                log.warning(
                    "swap wake-up: LISTEN %s failed (%s); polling only, retrying in %g s",
                    CHANNEL,
                    error,
                    LISTEN_RETRY_SECONDS,
                )
                await asyncio.sleep(LISTEN_RETRY_SECONDS)

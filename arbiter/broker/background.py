"""The broker's own sync thread, and tasks that may outlive the request that started them.

A shared load, a swap poller or a table refresh is started by one request but awaited
by many, and keeps running when that request ends. Django runs each request in its own
thread-sensitive context whose sync thread goes away with the request, so a task that
inherited it would make its next ORM call on a dead context (asgiref then raises, or
starts a thread that is never reclaimed). Such tasks therefore start from an empty
context and do their sync work on the broker's long-lived background thread.

The lean broker handler (`arbiter.broker.asgi`) runs its requests' sync work on a
second thread of its own, so a load waiting for the database's write lock (creating a
swap) never holds up the requests flowing to loaded models.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import ThreadSensitiveContext

T = TypeVar("T")

# One thread each: Django's ORM wants thread-sensitive calls serialised on one thread.
BACKGROUND_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-background")
REQUEST_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-requests")


async def _on_background_thread(coro: Coroutine[Any, Any, T]) -> T:
    async with ThreadSensitiveContext(executor=BACKGROUND_EXECUTOR):
        return await coro


# The loop keeps only weak references to tasks: a fire-and-forget one needs a strong one.
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Start `coro` detached from the current request (see the module docstring)."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(_on_background_thread(coro), context=contextvars.Context())
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


def close_thread_connections() -> None:
    """Close the database connections of the broker's threads (test teardown)."""
    from django.db import connections

    for executor in (BACKGROUND_EXECUTOR, REQUEST_EXECUTOR):
        executor.submit(connections.close_all).result(timeout=10)

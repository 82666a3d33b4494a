"""A cancel must reach the code that is cancelled.

The swap engine stops its log followers by cancelling them; a follower publishes every
stored line through the channel layer (Redis in production). redis-py 8.0/8.1 swallowed a
cancel that landed inside a command, so a follower kept reading and a swap hung in
waiting_healthy (CI, PostgreSQL + Redis). pyproject pins redis<8; the first test fails on
a client that loses cancels, the second shows the engine no longer waits forever on one.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from arbiter.engine.swaps.machine import SwapRunner

REDIS_URL = os.environ.get("REDIS_URL", "")


@pytest.mark.skipif(
    not REDIS_URL, reason="needs Redis (REDIS_URL), as production and CI's second run"
)
async def test_it_is_not_swallowed_during_a_redis_command():
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    random.seed(7)
    lost = 0
    stop = False  # ends a task whose cancel was lost, so the test fails rather than hangs
    try:
        for _ in range(40):

            async def busy() -> None:
                while not stop:
                    await client.zrange("arbiter-test:cancel-probe", 0, -1)

            task = asyncio.create_task(busy())
            await asyncio.sleep(random.random() * 0.01)  # lands inside a command's round trip
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                lost += 1
    finally:
        stop = True
        await asyncio.sleep(0.1)
        await client.aclose()
    assert lost == 0, f"{lost} of 40 cancels were swallowed by redis-py"


async def test_it_bounds_stopping_the_followers_when_one_ignores_its_cancel(monkeypatch):
    monkeypatch.setattr("arbiter.engine.swaps.machine.FOLLOWER_STOP_SECONDS", 0.3)
    stubborn_stop = asyncio.Event()

    async def stubborn() -> None:
        while not stubborn_stop.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass  # what a library that loses cancels does

    async def obedient() -> None:
        await asyncio.sleep(3600)

    followers = {"a": asyncio.create_task(stubborn()), "b": asyncio.create_task(obedient())}
    await asyncio.sleep(0)
    started = time.monotonic()
    await SwapRunner(1).stop_followers(followers)
    took = time.monotonic() - started
    assert 0.25 <= took < 2.0, took
    assert followers["b"].cancelled()
    assert not followers["a"].done()
    stubborn_stop.set()
    await followers["a"]

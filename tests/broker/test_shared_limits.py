"""The per-model concurrency limit shared through Redis (`shared_limits`), on a real Redis.

Each `SharedLimits` stands for one broker process; they share a key prefix as the
processes of one deployment do. Runs when REDIS_URL is set (`make test-postgres`, CI).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from arbiter.broker.errors import TooManyRequests
from arbiter.broker.shared_limits import LOCAL, SharedLimits

REDIS_URL = os.environ.get("REDIS_URL", "")

pytestmark = pytest.mark.skipif(
    not REDIS_URL, reason="needs Redis: set REDIS_URL (`make test-postgres` does; CI runs it)"
)


@pytest.fixture
async def processes() -> AsyncIterator[list[SharedLimits]]:
    """Three limiters on one fresh prefix (three processes of one deployment)."""
    prefix = f"arbiter-test:{uuid.uuid4().hex}:"
    limiters = [SharedLimits(REDIS_URL, prefix) for _ in range(3)]
    try:
        yield limiters
    finally:
        keys = await limiters[0].redis.keys(prefix + "*")
        if keys:
            await limiters[0].redis.delete(*keys)
        for limiter in limiters:
            await limiter.aclose()


async def released(limiter: SharedLimits, model: str, expected: int) -> None:
    """Wait for the (off-path) ZREMs to land."""
    for _ in range(100):
        if await limiter.in_flight(model) == expected:
            return
        await asyncio.sleep(0.01)
    assert await limiter.in_flight(model) == expected


async def test_the_limit_holds_across_processes(processes):
    a, b, c = processes
    slots = [await a.acquire("m", 4), await b.acquire("m", 4), await c.acquire("m", 4)]
    slots.append(await a.acquire("m", 4))
    assert LOCAL not in slots and len(set(slots)) == 4
    for limiter in processes:
        with pytest.raises(TooManyRequests) as refused:
            await limiter.acquire("m", 4)
        assert refused.value.status == 429 and refused.value.code == "concurrency_limit"
    assert await c.in_flight("m") == 4
    # Another model has its own slots.
    assert await b.acquire("other", 4) != LOCAL

    a.release("m", slots[0])  # given back by one process, taken by another
    await released(c, "m", 3)
    assert await c.acquire("m", 4) != LOCAL


async def test_concurrent_acquires_from_three_processes_take_exactly_the_limit(processes):
    async def attempt(limiter: SharedLimits) -> bool:
        try:
            await limiter.acquire("m", 4)
        except TooManyRequests:
            return False
        return True

    outcomes = await asyncio.gather(*(attempt(processes[i % 3]) for i in range(60)))
    assert sum(outcomes) == 4
    assert await processes[0].in_flight("m") == 4


async def test_a_client_leaving_mid_acquire_does_not_leak_its_slot(processes):
    a, b, _ = processes
    for _ in range(5):
        leaving = asyncio.create_task(a.acquire("m", 4))
        for _ in range(3):  # let the script go out to Redis, then the client hangs up
            await asyncio.sleep(0)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
    await asyncio.sleep(0.2)  # the scripts land; any slot they took is given back
    await released(b, "m", 0)
    for _ in range(4):
        await b.acquire("m", 4)


async def test_a_dead_process_slots_come_back_after_their_ttl(processes, settings):
    settings.ARBITER_BROKER_SLOT_TTL = 0.3
    crashed, survivor, _ = processes
    await crashed.acquire("m", 2)
    await crashed.acquire("m", 2)  # and never released: the process died
    with pytest.raises(TooManyRequests):
        await survivor.acquire("m", 2)
    await asyncio.sleep(0.4)
    assert await survivor.in_flight("m") == 0
    assert await survivor.acquire("m", 2) != LOCAL


async def test_without_redis_it_bounds_this_process_alone(caplog):
    limiter = SharedLimits("redis://127.0.0.1:1/0", "arbiter-test:unreachable:")
    try:
        assert await limiter.acquire("m", 2) == LOCAL
        assert await limiter.acquire("m", 2) == LOCAL
        with pytest.raises(TooManyRequests):
            await limiter.acquire("m", 2)
        limiter.release("m", LOCAL)
        assert await limiter.acquire("m", 2) == LOCAL
        assert "Redis unreachable" in caplog.text
    finally:
        await limiter.aclose()

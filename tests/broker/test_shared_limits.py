"""What broker processes share through Redis (`shared_limits`), on a real Redis: the
per-model concurrency limit, requests in flight per service and their last finishes (what
eviction decides on), and per-client counts.

Each `SharedLimits` stands for one broker process (its own owner mark); they share a key
prefix as the processes of one deployment do. Runs when REDIS_URL is set (`make
test-postgres`, CI).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from arbiter.broker.accounting import OTHER, Accounting
from arbiter.broker.errors import TooManyRequests
from arbiter.broker.limits import ServiceActivity
from arbiter.broker.shared_limits import LOCAL, SharedLimits, read_clients

REDIS_URL = os.environ.get("REDIS_URL", "")

pytestmark = pytest.mark.skipif(
    not REDIS_URL, reason="needs Redis: set REDIS_URL (`make test-postgres` does; CI runs it)"
)


@pytest.fixture
async def processes() -> AsyncIterator[list[SharedLimits]]:
    """Three limiters on one fresh prefix (three processes of one deployment)."""
    prefix = f"arbiter-test:{uuid.uuid4().hex}:"
    limiters = [SharedLimits(REDIS_URL, prefix, owner=f"p{i}") for i in range(3)]
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


async def test_it_holds_the_limit_across_processes(processes):
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


async def test_it_lets_concurrent_acquires_from_three_processes_take_exactly_the_limit(processes):
    async def attempt(limiter: SharedLimits) -> bool:
        try:
            await limiter.acquire("m", 4)
        except TooManyRequests:
            return False
        return True

    outcomes = await asyncio.gather(*(attempt(processes[i % 3]) for i in range(60)))
    assert sum(outcomes) == 4
    assert await processes[0].in_flight("m") == 4


async def test_it_does_not_leak_the_slot_of_a_client_leaving_mid_acquire(processes):
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


async def test_it_gives_back_the_slots_of_a_dead_process_after_their_ttl(processes, settings):
    settings.ARBITER_BROKER_SLOT_TTL = 0.3
    crashed, survivor, _ = processes
    await crashed.acquire("m", 2)
    await crashed.acquire("m", 2)  # and never released: the process died
    with pytest.raises(TooManyRequests):
        await survivor.acquire("m", 2)
    await asyncio.sleep(0.4)
    assert await survivor.in_flight("m") == 0
    assert await survivor.acquire("m", 2) != LOCAL


async def test_it_bounds_this_process_alone_without_redis(caplog):
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


# -- requests in flight per service, last finishes (the eviction planner's figures) ------
async def test_it_shows_each_process_the_others_requests_in_flight_per_service(processes):
    a, b, c = processes
    slot_a = await a.acquire("m", 8, service="tts", client="app")
    await b.acquire("m", 8, service="tts", client="app")
    await b.acquire("other", 8, service="vllm-a", client="cron")
    seen_by_c = await c.others_activity()
    assert seen_by_c is not None and seen_by_c.in_flight == {"tts": 2, "vllm-a": 1}
    seen_by_a = await a.others_activity()  # its own requests it counts from memory
    assert seen_by_a is not None and seen_by_a.in_flight == {"tts": 1, "vllm-a": 1}

    before = time.time()
    a.release("m", slot_a)
    for _ in range(100):
        seen_by_c = await c.others_activity()
        assert seen_by_c is not None
        if seen_by_c.in_flight.get("tts") == 1:
            break
        await asyncio.sleep(0.01)
    assert seen_by_c.in_flight == {"tts": 1, "vllm-a": 1}
    assert before - 1 < seen_by_c.last_finished["tts"] < time.time() + 1  # Redis's clock


async def test_it_adds_this_process_to_the_others_in_the_current_activity(processes):
    a, b, _ = processes
    activity = ServiceActivity()
    activity.others = a.others_activity
    activity.started("tts")
    await b.acquire("m", 8, service="tts", client="app")
    await a.acquire("m", 8, service="tts", client="app")  # a's own: counted in memory
    current = await activity.current()
    assert current.in_flight == {"tts": 2}
    activity.finished("tts")
    assert (await activity.current()).in_flight == {"tts": 1}


async def test_it_expires_the_requests_in_flight_of_a_dead_process_with_its_slots(
    processes, settings
):
    settings.ARBITER_BROKER_SLOT_TTL = 0.3
    crashed, survivor, _ = processes
    await crashed.acquire("m", 8, service="tts", client="app")  # never released
    seen = await survivor.others_activity()
    assert seen is not None and seen.in_flight == {"tts": 1}
    await asyncio.sleep(0.4)
    seen = await survivor.others_activity()
    assert seen is not None and seen.in_flight == {}


# -- per-client counts --------------------------------------------------------------------
def sending(book: Accounting) -> Accounting:
    """Books that keep counts for Redis (the broker's state sets the hook that sends them)."""
    book.on_pending = lambda: None
    return book


async def test_it_adds_up_client_counts_from_three_processes(processes):
    books = [sending(Accounting()) for _ in processes]
    for limiter, book in zip(processes, books, strict=True):
        name = book.started("app")
        book.finished(name, 200, 100, "m")
        name = book.started("app")
        book.finished(name, 404, 10)
        book.finished(book.started("cron"), 200, 5, "m")
        await limiter.flush_clients(book)
    # A request in flight through b, seen by a and c.
    await processes[1].acquire("m", 8, service="vllm-a", client="app")
    counts, in_flight = read_clients(REDIS_URL, processes[0].prefix, owner="p0")
    assert counts["app"].requests == 6 and counts["app"].errors == 3
    assert counts["app"].bytes_out == 330 and counts["app"].by_model == {"m": 3}
    assert counts["cron"].requests == 3 and counts["cron"].by_model == {"m": 3}
    assert in_flight == {"app": 1}

    # What /api/status shows in process a: the totals, plus what a has not sent yet.
    books[0].started("app")
    rows = {r["client"]: r for r in books[0].shared_usage(counts, in_flight)}
    assert rows["app"]["requests"] == 7 and rows["app"]["in_flight"] == 2
    assert rows["cron"]["requests"] == 3 and rows["cron"]["in_flight"] == 0


async def test_it_counts_new_clients_past_the_cap_as_other_across_processes(processes):
    a, b, _ = processes
    first, second = sending(Accounting(max_clients=2)), sending(Accounting(max_clients=2))
    for name in ("c1", "c2"):
        first.finished(first.started(name), 200)
    await a.flush_clients(first)
    second.finished(second.started("c3"), 500)  # new to the deployment, which is full
    await b.flush_clients(second)
    counts, _ = read_clients(REDIS_URL, a.prefix)
    assert set(counts) == {"c1", "c2", OTHER}
    assert counts[OTHER].requests == 1 and counts[OTHER].errors == 1


async def test_it_sends_counts_about_once_a_second(processes, monkeypatch):
    a, _, _ = processes
    monkeypatch.setattr("arbiter.broker.shared_limits.FLUSH_SECONDS", 0.05)
    book = Accounting()
    book.on_pending = lambda: a.flush_soon(book)
    for _ in range(5):
        book.finished(book.started("app"), 200)
    assert read_clients(REDIS_URL, a.prefix)[0] == {}  # not yet: one flush for all five
    await asyncio.sleep(0.3)
    assert read_clients(REDIS_URL, a.prefix)[0]["app"].requests == 5
    assert book.take_pending() == {}


async def test_it_keeps_activity_and_counts_in_the_process_without_redis(caplog):
    limiter = SharedLimits("redis://127.0.0.1:1/0", "arbiter-test:unreachable:")
    try:
        assert await limiter.others_activity() is None
        activity = ServiceActivity()
        activity.others = limiter.others_activity
        activity.started("tts")
        assert (await activity.current()).in_flight == {"tts": 1}
        book = sending(Accounting())
        book.finished(book.started("app"), 200)
        await limiter.flush_clients(book)
        assert book.take_pending()["app"].requests == 1  # kept for the next try
        assert read_clients("redis://127.0.0.1:1/0", "arbiter-test:unreachable:") is None
        assert "Redis unreachable" in caplog.text
    finally:
        await limiter.aclose()

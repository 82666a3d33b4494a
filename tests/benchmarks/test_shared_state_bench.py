"""What sharing service activity and client counts through Redis adds to a request
(`shared_limits`), in-process against a real Redis, interleaved so drift falls on both:

- the limit alone (its script before the shared activity: drop expired, count, add) and
  its `ZREM`, against today's two scripts, which also add the request to the set of
  requests in flight (its service and client) and stamp the service's last finish;
- `accounting` without and with the counts it keeps for Redis;
- the reads: the planner's (one pipeline) and `/api/status`'s (two), and one flush.

Run it (the end-to-end figure, two lean processes with and without REDIS_URL, is
`test_shared_limits_bench.py`):

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m pytest -m benchmark \\
        tests/benchmarks/test_shared_state_bench.py -s
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

import pytest

from arbiter.broker import shared_limits
from arbiter.broker.accounting import Accounting
from arbiter.broker.shared_limits import SharedLimits, read_clients

REDIS_URL = os.environ.get("REDIS_URL", "")
ROUNDS = int(os.environ.get("SHARED_STATE_BENCH_ROUNDS", "3000"))

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not REDIS_URL, reason="needs Redis: set REDIS_URL"),
]

# The limit's script before it shared the activity (for comparison only).
LIMIT_ALONE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local current = redis.call('ZCARD', KEYS[1])
if current >= tonumber(ARGV[1]) then
  return current
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return -1
"""


def line(name: str, seconds: list[float]) -> str:
    seconds = sorted(seconds)
    p99 = seconds[int(len(seconds) * 0.99)]
    return f"{name:34s} p50 {statistics.median(seconds) * 1e3:7.3f} ms  p99 {p99 * 1e3:7.3f} ms"


async def test_it_measures_what_sharing_activity_and_client_counts_costs() -> None:
    prefix = f"arbiter-bench:{uuid.uuid4().hex}:"
    ours = SharedLimits(REDIS_URL, prefix, owner="bench")
    theirs = SharedLimits(REDIS_URL, prefix, owner="other")
    limit_alone = ours.redis.register_script(LIMIT_ALONE)
    try:
        for _ in range(32):  # another process's requests in flight
            await theirs.acquire("m", 10_000, service="svc", client="c")
        times: dict[str, list[float]] = {
            "limit alone: take": [],
            "limit alone: give back (ZREM)": [],
            "shared: take (+ in flight)": [],
            "shared: give back (+ finish)": [],
        }
        for i in range(ROUNDS):
            start = time.perf_counter()
            await limit_alone(keys=[ours.key("m")], args=[10_000, 900, f"old{i}"])
            middle = time.perf_counter()
            await ours.redis.zrem(ours.key("m"), f"old{i}")
            end = time.perf_counter()
            times["limit alone: take"].append(middle - start)
            times["limit alone: give back (ZREM)"].append(end - middle)
            start = time.perf_counter()
            slot = await ours.acquire("m", 10_000, service="svc", client="app")
            middle = time.perf_counter()
            await ours._release("m", slot)
            end = time.perf_counter()
            times["shared: take (+ in flight)"].append(middle - start)
            times["shared: give back (+ finish)"].append(end - middle)
        print()
        for name, seconds in times.items():
            print(line(name, seconds))

        reads = []
        for _ in range(300):
            start = time.perf_counter()
            assert await ours.others_activity() is not None
            reads.append(time.perf_counter() - start)
        print(line("planner read (one pipeline)", reads))

        plain, sending = Accounting(), Accounting()
        sending.on_pending = lambda: ours.flush_soon(sending)
        for name, books in (
            ("accounting alone", plain),
            ("accounting + counts for Redis", sending),
        ):
            start = time.perf_counter()
            for _ in range(100_000):
                books.finished(books.started("app"), 200, 100, "m")
            per_request = (time.perf_counter() - start) / 100_000
            print(f"{name:34s} {per_request * 1e6:7.2f} µs per request")
        start = time.perf_counter()
        await ours.flush_clients(sending)
        print(
            f"{'one flush (every process, 1/s)':34s} {(time.perf_counter() - start) * 1e3:7.3f} ms"
        )
        status = []
        for _ in range(50):
            start = time.perf_counter()
            assert read_clients(REDIS_URL, prefix) is not None
            status.append(time.perf_counter() - start)
        print(line("/api/status read (two round trips)", status))
    finally:
        keys = await ours.redis.keys(prefix + "*")
        if keys:
            await ours.redis.delete(*keys)
        await ours.aclose()
        await theirs.aclose()
        shared_limits.sync_client(REDIS_URL).close()

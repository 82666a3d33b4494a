"""What sharing the per-model limit through Redis costs a request (`shared_limits`).

Two lean broker processes (daphne serving `arbiter.broker.asgi:application`) on the
same SQLite database and simulated backend (token delay 0), one with REDIS_URL and one
without; the served Arbiter from `test_broker_bench` runs the prober for both. Small
chat completions are sent to them in turns (interleaved, as in `test_broker_bench`),
then at concurrency 32, one process at a time. Run it:

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m pytest -m benchmark \\
        tests/benchmarks/test_shared_limits_bench.py -s

Prints p50/p99 per process and the difference; writes test-artifacts/bench-shared-limits.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.benchmarks.conftest import start_child
from tests.benchmarks.test_broker_bench import (  # noqa: F401 (fixtures used by name)
    Target,
    arbiter,
    backend,
    concurrent,
    sequential,
    summary,
    wait_until_served,
)
from tests.live_arbiter import free_port

REDIS_URL = os.environ.get("REDIS_URL", "")
ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "bench-shared-limits.json"

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not REDIS_URL, reason="needs Redis: set REDIS_URL"),
]


def lean(arbiter: Target, name: str, redis_url: str) -> Iterator[Target]:  # noqa: F811
    port = free_port()
    argv = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
    assert arbiter.env is not None
    env = {**arbiter.env, "REDIS_URL": redis_url}
    child = start_child([*argv, "arbiter.broker.asgi:application"], env)
    target = Target(name, f"http://127.0.0.1:{port}", arbiter.headers)
    try:
        wait_until_served(child, target)
        yield target
    finally:
        child.stop()


@pytest.fixture(scope="module")
def local_limits(arbiter: Target) -> Iterator[Target]:  # noqa: F811
    yield from lean(arbiter, "per-process", "")


@pytest.fixture(scope="module")
def redis_limits(arbiter: Target) -> Iterator[Target]:  # noqa: F811
    yield from lean(arbiter, "redis", REDIS_URL)


def test_what_the_shared_limit_costs(local_limits: Target, redis_limits: Target) -> None:
    targets = {t.name: t for t in (local_limits, redis_limits)}
    figures: dict[str, dict[str, object]] = {}
    for name, latencies in sequential(targets).items():
        figures[name] = {"sequential": summary(latencies)}
    for name, target in targets.items():
        latencies, elapsed = asyncio.run(concurrent(target))
        figures[name]["concurrent_32"] = summary(latencies)
        figures[name]["requests_per_second_32"] = round(len(latencies) / elapsed, 1)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")
    print("\n" + json.dumps(figures, indent=2))
    local, shared = figures["per-process"]["sequential"], figures["redis"]["sequential"]
    assert isinstance(local, dict) and isinstance(shared, dict)
    print(f"added by Redis at concurrency 1: p50 {shared['p50_ms'] - local['p50_ms']:+.3f} ms")

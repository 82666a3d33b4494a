"""What sharing the per-model limit through Redis costs a request (`shared_limits`).

Two broker processes (daphne serving `arbiter.asgi:application`, whose broker paths
take the lean handler) on the same SQLite database and canned backend, one with
REDIS_URL and one without; the served Arbiter from `test_broker_bench` runs the
prober for both. wrk sends small chat completions at concurrency 1 and 64, the two
processes interleaved in rounds as in `test_broker_bench`. Run it:

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m pytest -m benchmark \\
        tests/benchmarks/test_shared_limits_bench.py -s

Prints p50/p99 per process and the difference; writes test-artifacts/bench-shared-limits.json.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.benchmarks.conftest import start_child
from tests.benchmarks.test_broker_bench import (  # noqa: F401 (fixtures used by name)
    SCENARIOS,
    ServedArbiter,
    arbiter,
    backend,
    wait_until_served,
)
from tests.benchmarks.wrk import Target, medians, run_rounds
from tests.helpers import free_port

REDIS_URL = os.environ.get("REDIS_URL", "")
SECONDS = 5
ROUNDS = 3
ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "bench-shared-limits.json"

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not REDIS_URL, reason="needs Redis: set REDIS_URL"),
]


def lean(arbiter: ServedArbiter, name: str, redis_url: str) -> Iterator[Target]:  # noqa: F811
    port = free_port()
    argv = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
    env = {**arbiter.env, "REDIS_URL": redis_url}
    child = start_child([*argv, "arbiter.asgi:application"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(child, url, arbiter.authorization)
        yield Target(name, url, url, arbiter.authorization)
    finally:
        child.stop()


@pytest.fixture(scope="module")
def local_limits(arbiter: ServedArbiter) -> Iterator[Target]:  # noqa: F811
    yield from lean(arbiter, "per-process", "")


@pytest.fixture(scope="module")
def redis_limits(arbiter: ServedArbiter) -> Iterator[Target]:  # noqa: F811
    yield from lean(arbiter, "redis", REDIS_URL)


def test_it_measures_what_the_shared_limit_costs(
    local_limits: Target, redis_limits: Target, tmp_path: Path
) -> None:
    scenarios = [s for s in SCENARIOS if not s.stream]  # concurrency 1 and 64
    runs = run_rounds([local_limits, redis_limits], scenarios, ROUNDS, SECONDS, tmp_path)
    figures = {s: {t: medians(r) for t, r in by_target.items()} for s, by_target in runs.items()}
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")
    for scenario, by_target in figures.items():
        for name, cell in by_target.items():
            print(
                f"{scenario} {name:<12} p50 {cell['p50_ms']:8.3f} ms "
                f"p99 {cell['p99_ms']:8.3f} ms {cell['rps']:8.1f} req/s"
            )
            assert cell["non2xx"] == 0, f"{name}: {cell['non2xx']} error statuses in {scenario}"
    local, shared = figures["c1"]["per-process"], figures["c1"]["redis"]
    print(f"added by Redis at concurrency 1: p50 {shared['p50_ms'] - local['p50_ms']:+.3f} ms")

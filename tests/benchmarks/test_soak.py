"""Soak: a real `manage.py serve` under moderate mixed load for ARBITER_SOAK_MINUTES (30).

The served Arbiter is the embedded default (`make run`): SQLite, the in-memory channel
layer, huey as threads of the serve process, and the simulated cluster (sim-a, sim-b,
sim-gb10) that serve starts as its child. With DATABASE_URL and REDIS_URL set, serve uses
a fresh PostgreSQL database made for the run on that server (dropped afterwards) and that
Redis (give it a database number nothing else uses: huey's queue and the channel groups
live there).

The load, all from this process:
- broker clients: CLIENTS, each with its own X-Client-Id, about two chat completions
  a second between them all, a third of them streamed, to the two models kept loaded
  (qwen3-600m on sim-a, qwen3-600m-ngc on sim-gb10); one client's key has quotas, so
  its KeyUsage rows are written (and pruned) too;
- a swap through the API every SWAP_EVERY_S, alternating two catalog models on sim-b,
  each followed until it ends;
- VIEWERS logged-in dashboard sockets (`/ws/dashboard/`), open all along, reading
  every push;
- a webhook endpoint (every event) at a receiver on loopback, checking signatures.

Every minute: VmRSS of every process in serve's tree (serve, the simulator, each
simulated container, named), the database size (SQLite file + WAL + huey's queue file,
or pg_database_size) and the row counts of the tables that grow. Printed as a table per
minute and written to test-artifacts/soak.json (ARBITER_SOAK_ARTIFACT to write it
elsewhere) with the growth per minute after warm-up.

What may be asserted about "flat": only what holds by design. GPU samples are kept
HISTORY (15 min, arbiter.engine.sampler) and grow until then; swap logs, webhook
deliveries and the audit trail are kept for days (ARBITER_*_RETENTION_DAYS) and grow
with every swap; KeyUsage minute rows are kept an hour (arbiter.broker.quotas). So the
test asserts that the load ran, that GPU samples stay within their retention, and a
generous bound on the RSS slope after warm-up; the rest is printed.

The load is in soak_load.py, the measuring and the printed figures in soak_report.py.
"""

import asyncio
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from arbiter.engine.sampler import HISTORY
from tests.benchmarks.conftest import start_child, wait_healthy
from tests.benchmarks.soak_load import (
    CLIENTS,
    MINUTES,
    REQUESTS_PER_S,
    SERVED,
    STREAM_EVERY,
    SWAP_EVERY_S,
    SWAP_HOST,
    SWAP_MODELS,
    VIEWERS,
    Tally,
    WebhookReceiver,
    broker_client,
    login_cookie,
    run_swap,
    swapper,
    viewer,
)
from tests.benchmarks.soak_report import (
    ARTIFACT,
    GROWS_BY_DESIGN,
    WARMUP_MINUTES,
    Database,
    SoakArbiter,
    print_minute,
    print_summary,
    simulated_containers,
    summarize,
    take_sample,
)
from tests.helpers import free_port
from tests.live_arbiter import MANAGE, inherited_env

SAMPLE_INTERVAL = 2.0  # ARBITER_SAMPLE_INTERVAL: the production default
# A leak of this much per minute after warm-up is a failure even on a busy machine.
RSS_SLOPE_BOUND_MIB_PER_MIN = 4.0
RSS_SLOPE_MIN_POINTS = 3  # a slope from fewer samples is printed, never judged
START_TIMEOUT = 120.0

pytestmark = [pytest.mark.soak, pytest.mark.timeout(MINUTES * 60 + 900)]


# -- the served Arbiter ----------------------------------------------------------------------
def soak_env(data_dir: Path, port: int, database_url: str | None) -> dict[str, str]:
    env = inherited_env()
    env.update(
        ARBITER_DATA_DIR=str(data_dir),
        ARBITER_PORT=str(port),
        ARBITER_SAMPLE_INTERVAL=str(SAMPLE_INTERVAL),
        # The webhook receiver listens on 127.0.0.1 (refused by default: SSRF).
        ARBITER_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8",
        DJANGO_SETTINGS_MODULE="arbiter.settings",
    )
    if database_url and os.environ.get("REDIS_URL"):
        env.update(DATABASE_URL=database_url, REDIS_URL=os.environ["REDIS_URL"])
    return env


@pytest.fixture
def postgres_url() -> Iterator[str | None]:
    """A fresh database on DATABASE_URL's server when DATABASE_URL and REDIS_URL are set."""
    base = os.environ.get("DATABASE_URL")
    if not (base and os.environ.get("REDIS_URL")):
        yield None
        return
    import psycopg

    name = f"arbiter_soak_{os.getpid()}"
    parts = urlsplit(base)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(base, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}"')
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def soak_arbiter(tmp_path: Path, postgres_url: str | None) -> Iterator[SoakArbiter]:
    """`manage.py serve` with no ARBITER_CONFIG: it starts the simulated cluster itself."""
    port = free_port()
    data_dir = tmp_path / "var"
    env = soak_env(data_dir, port, postgres_url)
    manage = [sys.executable, MANAGE]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True, timeout=180)
    child = start_child([sys.executable, "-u", MANAGE, "serve", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    database = (
        Database(postgres_url=postgres_url)
        if postgres_url
        else Database(data_dir / "arbiter.sqlite3", data_dir / "huey.sqlite3")
    )
    try:
        wait_healthy(child, url, START_TIMEOUT)
        match = re.search(r"password\n\s+(\S+)", "".join(child.output))
        assert match, "serve did not print the first admin's password:\n" + "".join(child.output)
        arbiter = SoakArbiter(child, url, data_dir, database, match.group(1))

        def key(*args: str) -> str:
            done = subprocess.run(
                [*manage, "create_api_key", *args],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            return done.stdout.strip().splitlines()[-1]

        arbiter.admin_key = key("soak admin", "--role", "admin")
        arbiter.inference_key = key("soak clients", "--role", "inference")
        arbiter.quota_key = key(
            "soak quota client",
            "--role",
            "inference",
            "--requests-per-minute",
            "10000",
            "--tokens-per-day",
            "100000000",
        )
        yield arbiter
    finally:
        child.stop()
        for pid in simulated_containers(data_dir):
            try:
                os.killpg(pid, 9)  # they outlive the simulator on purpose (like real ones)
            except OSError:
                pass


# -- the soak --------------------------------------------------------------------------------
async def soak(arbiter: SoakArbiter, tally: Tally, receiver: WebhookReceiver) -> list[dict]:
    admin = {"Authorization": f"Bearer {arbiter.admin_key}"}
    async with httpx.AsyncClient(base_url=arbiter.url, headers=admin, timeout=60) as http:
        response = await http.post("/api/webhooks", json={"url": receiver.url, "events": []})
        assert response.status_code == 201, response.text
        receiver.secret = response.json()["secret"]

        # Load the broker's models and the first of the swapped pair before the clock.
        setup = [run_swap(http, model, host, tally) for host, model in SERVED.items()]
        setup.append(run_swap(http, SWAP_MODELS[0], SWAP_HOST, tally))
        for record in await asyncio.gather(*setup):
            assert record["state"] == "complete", record

        stop = asyncio.Event()
        sessions = [await asyncio.to_thread(login_cookie, arbiter.url, arbiter.admin_password)]
        sessions += [
            await asyncio.to_thread(login_cookie, arbiter.url, arbiter.admin_password)
            for _ in range(VIEWERS - 1)
        ]
        models = list(SERVED.values())
        tasks = [
            asyncio.create_task(viewer(arbiter.url, s, f"viewer-{i}", stop, tally))
            for i, s in enumerate(sessions)
        ]
        for i in range(CLIENTS):
            key = arbiter.quota_key if i == 0 else arbiter.inference_key
            tasks.append(
                asyncio.create_task(
                    broker_client(arbiter.url, key, f"soak-client-{i}", models, stop, tally)
                )
            )
        swap_task = asyncio.create_task(swapper(http, stop, tally))

        samples: list[dict] = []
        began = time.monotonic()
        try:
            for minute in range(MINUTES + 1):
                await asyncio.sleep(max(0.0, began + minute * 60 - time.monotonic()))
                assert arbiter.child.alive(), "serve died:\n" + "".join(arbiter.child.output[-80:])
                assert not swap_task.done() or swap_task.exception() is None
                sample = await asyncio.to_thread(take_sample, minute, arbiter, tally)
                samples.append(sample)
                print_minute(sample, header=minute == 0)
        finally:
            stop.set()
            await asyncio.gather(swap_task, return_exceptions=False)
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        # A client or viewer that died (e.g. a refused socket) is a failure, not a gap.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        # Deliveries are sent by the worker after the swap's commit: let the last arrive.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all_delivered(tally):
            await asyncio.sleep(0.5)
    return samples


def all_delivered(tally: Tally) -> bool:
    delivered = {w["swap_id"] for w in tally.webhooks if w["type"] == "swap_complete"}
    return all(s["id"] in delivered for s in tally.swaps if s["state"] == "complete")


def test_it_stays_flat_under_mixed_load(soak_arbiter: SoakArbiter) -> None:
    tally = Tally()
    with WebhookReceiver(tally) as receiver:
        samples = asyncio.run(soak(soak_arbiter, tally, receiver))
    latencies = sorted(tally.broker_latency_s)
    growth_figures = summarize(samples)
    results = {
        "command": shlex.join(sys.orig_argv),
        "make_target": f"ARBITER_SOAK_MINUTES={MINUTES} make soak",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "loadavg_1m_at_end": float(Path("/proc/loadavg").read_text().split()[0]),
        },
        "setup": {
            "database": soak_arbiter.database.vendor,
            "channel_layer_and_huey": "redis" if os.environ.get("REDIS_URL") else "embedded",
            "hosts": ["sim-a", "sim-b", "sim-gb10"],
            "sample_interval_s": SAMPLE_INTERVAL,
            "minutes": MINUTES,
            "warmup_minutes": WARMUP_MINUTES,
            "broker_clients": CLIENTS,
            "broker_requests_per_s": REQUESTS_PER_S,
            "streamed_every": STREAM_EVERY,
            "swap_every_s": SWAP_EVERY_S,
            "swap_host": SWAP_HOST,
            "swap_models": SWAP_MODELS,
            "viewers": VIEWERS,
        },
        "load": {
            "broker_status": {str(k): v for k, v in sorted(tally.broker_status.items())},
            "broker_errors": dict(tally.broker_errors),
            "broker_streamed_ok": tally.broker_streamed_ok,
            "broker_latency_s_p50": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "broker_latency_s_max": round(latencies[-1], 3) if latencies else None,
            "swaps": len(tally.swaps),
            "swaps_complete": sum(s["state"] == "complete" for s in tally.swaps),
            "swap_seconds_max": max((s["seconds"] for s in tally.swaps), default=None),
            "swap_conflicts_409": tally.swap_conflicts,
            "webhooks_received": len(tally.webhooks),
            "webhooks_bad_signature": sum(not w["signed"] for w in tally.webhooks),
            "pushes_per_viewer": dict(tally.pushes),
            "push_mib_per_viewer": {k: round(v / 2**20, 1) for k, v in tally.push_bytes.items()},
            "viewer_reconnects": tally.viewer_reconnects,
        },
        "retention": {
            "gpu_sample_history_s": HISTORY.total_seconds(),
            "gpu_samples_max_per_gpu_by_design": gpu_sample_bound(),
            "gpu_samples_max_per_gpu_seen": max(
                s["rows"]["gpu_samples_max_per_gpu"] for s in samples
            ),
            "kept_for_days": "swaps, swap log lines, webhook deliveries, audit "
            "(ARBITER_*_RETENTION_DAYS): grow with every swap",
            "key_usage_minute_rows_kept_s": 3600,
        },
        "growth": growth_figures,
        "grows_by_design": GROWS_BY_DESIGN,
        "samples": samples,
        "swaps": tally.swaps,
    }
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results)

    # The load ran.
    assert soak_arbiter.child.alive()
    answered = tally.broker_total()
    assert answered >= MINUTES * 60 * REQUESTS_PER_S * 0.5, results["load"]
    assert tally.broker_status[200] == answered, results["load"]
    assert tally.broker_streamed_ok > 0
    assert len(tally.swaps) >= 3 + MINUTES * 60 // SWAP_EVERY_S - 1
    assert all(s["state"] == "complete" for s in tally.swaps), tally.swaps
    assert all_delivered(tally), (tally.swaps, tally.webhooks)
    assert all(w["signed"] for w in tally.webhooks)
    assert len(tally.pushes) == VIEWERS
    assert min(tally.pushes.values()) >= MINUTES * 10, dict(tally.pushes)
    # GPU samples stay within their retention (a tick of slack per prune pass).
    assert results["retention"]["gpu_samples_max_per_gpu_seen"] <= gpu_sample_bound()
    # A generous leak bound on every long-lived process, judged only on enough minutes.
    for name in ("serve", "simcluster"):
        g = growth_figures["rss_mib"][name]
        if g["points_after_warmup"] >= RSS_SLOPE_MIN_POINTS:
            assert g["per_min_after_warmup"] < RSS_SLOPE_BOUND_MIB_PER_MIN, (name, g)


def gpu_sample_bound() -> int:
    """Rows one GPU may have: HISTORY of ticks plus the prune's 10 s refresh, with half
    again for slack (ticks that run late and catch up)."""
    return int((HISTORY.total_seconds() + 10) / SAMPLE_INTERVAL * 1.5)

"""The broker against its peers: direct, nginx, Arbiter (one and two processes), LiteLLM.

One canned backend (nginx answering every POST with a fixed chat completion, or a fixed
64-chunk SSE stream: `peers.py`) stands in for vLLM, so what is measured is the proxy in
between. wrk (`wrk.py`) sends the same requests, with the same Lua script, to:

- direct: the backend itself, the floor;
- nginx: a reverse proxy in front of it (keep-alive upstream, `proxy_buffering off`);
- arbiter: one `manage.py serve` process (daphne, engine loops, huey worker; SQLite),
  its inventory listing one service per backend port; requests go to its `/v1/` broker
  with an API key;
- arbiter2: two `manage.py serve` processes on the same data directory (the first is
  the engine leader, `arbiter/engine/leader.py`; the second only serves), with nginx
  round-robin in front — the deployment `serve`'s docstring describes. One wrk then
  gives one latency distribution (two wrk runs side by side could not be merged into
  one p99), and what the nginx hop costs is the "nginx" row's difference from
  "direct", a few hundredths of a millisecond;
- litellm: LiteLLM's proxy (`litellm[proxy]`, its own virtual environment, one worker)
  with both models pointed at the same backend; skipped, with the reason printed, when
  it cannot be installed or started.

Scenarios: concurrency 1 (latency of a small chat completion), concurrency 64
(requests/s and p99), and 64-chunk streams at concurrency 16 (streams/s: wrk times a
request to the last byte). Each cell runs SECONDS (5) in each of ROUNDS (3) rounds, the
targets interleaved and rotated each round; a figure is the median of the rounds
(BROKER_BENCH_SECONDS and BROKER_BENCH_ROUNDS override both). The load generator shares
the machine's two cores with every server it measures, and nothing is pinned: other
people's tests may run meanwhile, which is what the interleaving is for.

The "lean" target of the former benchmark (daphne serving `arbiter.broker.asgi`) is
gone: `serve` routes `/v1/` through the same lean path, and the second process of
"arbiter2", which runs no engine loops, is that difference in deployed form.

Figures are printed and written to test-artifacts/bench-broker.json, not asserted;
the test asserts only that every target answered and that wrk saw no error status from
direct, nginx or Arbiter.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.benchmarks.conftest import ChildProcess, bench_env, start_child
from tests.benchmarks.peers import (
    CHAT_MODEL,
    LITELLM_KEY,
    STREAM_CHUNKS,
    STREAM_MODEL,
    Nginx,
    litellm_version,
    start_backend,
    start_litellm,
    start_reverse_proxy,
)
from tests.benchmarks.wrk import (
    CHAT_BODY,
    STREAM_BODY,
    Scenario,
    Target,
    medians,
    run_rounds,
    run_scenario,
    wrk_version,
)
from tests.helpers import free_port
from tests.live_arbiter import MANAGE

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(1800)]

ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "bench-broker.json"
SECONDS = float(os.environ.get("BROKER_BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BROKER_BENCH_ROUNDS", "3"))
WARMUP_SECONDS = 2.0
SCENARIOS = [
    Scenario("c1", 1, False, "concurrency 1: one small chat completion at a time"),
    Scenario("c64", 64, False, "concurrency 64: small chat completions"),
    Scenario("streams_c16", 16, True, f"{STREAM_CHUNKS}-chunk streams at concurrency 16"),
]
# Must answer every request of every run with a 2xx. LiteLLM is held only to
# `check_answers`: at concurrency 16 a short run may end before its first stream does.
MUST_NOT_ERR = ("direct", "nginx", "arbiter", "arbiter2")
# Issue 17's goals for the broker, shown beside the figures (not asserted).
GOALS = {
    "added_p50_c1_ms": 0.5,
    "p99_c1_ms": 5.0,
    "rps_c64_per_process": 3000,
    "streams_per_s_c16": 2000,
    "two_processes_over_one_c64": 1.6,
}


@dataclass
class ServedArbiter:
    """The `serve` processes on one data directory, their API key and environment."""

    urls: list[str]
    authorization: str
    env: dict[str, str]  # the first process's (data dir, inventory), for other processes


@pytest.fixture(scope="module")
def backend() -> Iterator[Nginx]:
    backend = start_backend()
    yield backend
    backend.stop()


def write_inventory(path: Path, backend: Nginx) -> Path:
    # One host nobody can SSH to (a closed port): sampling fails fast and quietly, the
    # prober still probes the services, and no simulated cluster competes for the CPU.
    path.write_text(
        textwrap.dedent(
            f"""\
            hosts:
              - name: bench
                address: 127.0.0.1
                ssh_port: {free_port()}
                sampling: ssh
                vram_budget_mib: 80000
            services:
              - name: bench-chat
                host: bench
                base_url: {backend.url("chat")}
                capabilities: [llm]
              - name: bench-stream
                host: bench
                base_url: {backend.url("stream")}
                capabilities: [llm]
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def arbiter(tmp_path_factory: pytest.TempPathFactory, backend: Nginx) -> Iterator[ServedArbiter]:
    """Two `manage.py serve` processes sharing one SQLite data directory."""
    root = tmp_path_factory.mktemp("broker-bench")
    ports = [free_port(), free_port()]
    env = bench_env(root / "var", ports[0], write_inventory(root / "cluster.yaml", backend))
    manage = [sys.executable, MANAGE]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True, timeout=120)
    created = subprocess.run(
        [*manage, "create_api_key", "bench"], env=env, check=True, timeout=60, capture_output=True
    )
    authorization = f"Bearer {created.stdout.decode().strip()}"
    children: list[ChildProcess] = []
    try:
        for port in ports:
            argv = [sys.executable, "-u", MANAGE, "serve", "--port", str(port)]
            children.append(start_child(argv, {**env, "ARBITER_PORT": str(port)}))
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for child, url in zip(children, urls, strict=True):
            wait_until_served(child, url, authorization)
        yield ServedArbiter(urls, authorization, env)
    finally:
        for child in children:
            child.stop()


def wait_until_served(
    child: ChildProcess, url: str, authorization: str, timeout: float = 90.0
) -> None:
    """Until the broker at `url` lists both benchmark models as loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert child.alive(), "the broker exited:\n" + "".join(child.output)
        try:
            response = httpx.get(f"{url}/v1/models", headers={"Authorization": authorization})
            states = {m["id"]: m["arbiter"]["state"] for m in response.json().get("data", [])}
            if states.get(CHAT_MODEL) == states.get(STREAM_MODEL) == "loaded":
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError("the broker never listed the models:\n" + "".join(child.output))


@pytest.fixture(scope="module")
def targets(
    tmp_path_factory: pytest.TempPathFactory, backend: Nginx, arbiter: ServedArbiter
) -> Iterator[tuple[list[Target], str]]:
    """(every target that started, why LiteLLM did not — "" when it did)."""
    proxy = start_reverse_proxy(
        {
            "chat": [f"127.0.0.1:{backend.ports['chat']}"],
            "stream": [f"127.0.0.1:{backend.ports['stream']}"],
        }
    )
    pair = start_reverse_proxy({"v1": [url.removeprefix("http://") for url in arbiter.urls]})
    litellm, litellm_url, skipped = start_litellm(tmp_path_factory.mktemp("litellm"), backend)
    one, two = arbiter.urls[0], pair.url("v1")
    found = [
        Target("direct", backend.url("chat"), backend.url("stream")),
        Target("nginx", proxy.url("chat"), proxy.url("stream")),
        Target("arbiter", one, one, arbiter.authorization),
        Target("arbiter2", two, two, arbiter.authorization),
    ]
    if litellm is not None:
        found.append(Target("litellm", litellm_url, litellm_url, f"Bearer {LITELLM_KEY}"))
    try:
        yield found, skipped
    finally:
        if litellm is not None:
            litellm.stop()
        pair.stop()
        proxy.stop()


def check_answers(target: Target) -> None:
    """One chat completion and one stream through `target`, as any client would see them."""
    headers = {"Authorization": target.authorization} if target.authorization else {}
    with httpx.Client(timeout=30, headers=headers) as client:
        chat = client.post(f"{target.chat_base}/v1/chat/completions", json=CHAT_BODY)
        assert chat.status_code == 200, f"{target.name}: {chat.status_code} {chat.text}"
        assert chat.json()["choices"][0]["message"]["content"] == "hi", target.name
        stream = client.post(f"{target.stream_base}/v1/chat/completions", json=STREAM_BODY)
        assert stream.status_code == 200, f"{target.name}: {stream.status_code} {stream.text}"
        events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]", f"{target.name}: {stream.text[-300:]}"
        assert len(events) >= STREAM_CHUNKS, f"{target.name}: {len(events)} events"


def test_it_measures_the_broker_against_its_peers(
    targets: tuple[list[Target], str], tmp_path: Path
) -> None:
    found, litellm_skipped = targets
    for target in found:
        check_answers(target)
    for target in found:  # open connections, fill caches, let the JIT-less paths settle
        run_scenario(target, SCENARIOS[1], WARMUP_SECONDS, tmp_path)
    runs = run_rounds(found, SCENARIOS, ROUNDS, SECONDS, tmp_path)
    cells = {s: {t: medians(r) for t, r in by_target.items()} for s, by_target in runs.items()}
    add_ratios(cells)
    goals = goal_rows(cells)

    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "wrk": wrk_version(),
        "litellm": litellm_version() if not litellm_skipped else f"skipped: {litellm_skipped}",
        "seconds_per_cell": SECONDS,
        "rounds": ROUNDS,
        "scenarios": {
            s.name: {"connections": s.connections, "stream": s.stream} for s in SCENARIOS
        },
        "results": cells,
        "goals": goals,
    }
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(result, indent=2) + "\n")
    print(table(cells, goals, litellm_skipped))

    for scenario, by_target in cells.items():
        for name in MUST_NOT_ERR:
            cell = by_target[name]
            assert cell["requests"] > 0, f"{name} answered nothing in {scenario}"
            assert cell["non2xx"] == 0, f"{name}: {cell['non2xx']} error statuses in {scenario}"


def add_ratios(cells: dict[str, dict[str, dict]]) -> None:
    """Each cell's requests/s over nginx's and LiteLLM's; at c1 also p50/p99 over direct."""
    for scenario, by_target in cells.items():
        for cell in by_target.values():
            for peer in ("nginx", "litellm"):
                base = by_target.get(peer, {}).get("rps")
                cell[f"rps_vs_{peer}"] = round(cell["rps"] / base, 3) if base else None
            if scenario == "c1":
                direct = by_target["direct"]
                cell["added_p50_ms"] = round(cell["p50_ms"] - direct["p50_ms"], 3)
                cell["added_p99_ms"] = round(cell["p99_ms"] - direct["p99_ms"], 3)


def goal_rows(cells: dict[str, dict[str, dict]]) -> list[dict]:
    one, two = cells["c64"]["arbiter"]["rps"], cells["c64"]["arbiter2"]["rps"]
    measured = [
        ("added p50 at c1 (ms)", "added_p50_c1_ms", cells["c1"]["arbiter"]["added_p50_ms"], "<="),
        ("p99 at c1 (ms)", "p99_c1_ms", cells["c1"]["arbiter"]["p99_ms"], "<="),
        ("req/s per process at c64", "rps_c64_per_process", one, ">="),
        ("streams/s at c16", "streams_per_s_c16", cells["streams_c16"]["arbiter"]["rps"], ">="),
        ("two processes / one at c64", "two_processes_over_one_c64", round(two / one, 2), ">="),
    ]
    rows = []
    for label, key, value, sense in measured:
        goal = GOALS[key]
        met = value <= goal if sense == "<=" else value >= goal
        rows.append(
            {"goal": key, "label": label, "value": value, "target": f"{sense} {goal}", "met": met}
        )
    return rows


def table(cells: dict[str, dict[str, dict]], goals: list[dict], litellm_skipped: str) -> str:
    def ratio(value: float | None) -> str:
        return f"{value:.3f}" if value is not None else "-"

    lines = [""]
    for scenario in SCENARIOS:
        lines.append(f"{scenario.title} (medians of {ROUNDS} x {SECONDS:g} s)")
        head = f"  {'target':<9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'/nginx':>7} "
        head += f"{'/litellm':>8}"
        added = f" {'+p50 ms':>8} {'+p99 ms':>8}" if scenario.name == "c1" else ""
        lines.append(f"{head}{added} {'errors':>6}")
        for name, cell in cells[scenario.name].items():
            line = (
                f"  {name:<9} {cell['p50_ms']:>8.2f} {cell['p99_ms']:>8.2f} {cell['rps']:>9.1f} "
                f"{ratio(cell['rps_vs_nginx']):>7} {ratio(cell['rps_vs_litellm']):>8}"
            )
            if scenario.name == "c1":
                line += f" {cell['added_p50_ms']:>+8.2f} {cell['added_p99_ms']:>+8.2f}"
            lines.append(f"{line} {cell['non2xx'] + cell['socket_errors']:>6}")
        lines.append("")
    lines.append(
        "/nginx, /litellm: req/s over theirs; +p50, +p99: over direct; errors: wrk's error "
        "statuses and socket errors, all rounds\n"
    )
    lines.append("Arbiter against issue 17's goals:")
    for row in goals:
        verdict = "met" if row["met"] else "not met"
        lines.append(f"  {row['label']:<28} {row['value']:>9} (goal {row['target']}): {verdict}")
    if litellm_skipped:
        lines.append(f"LiteLLM skipped: {litellm_skipped}")
    return "\n".join(lines)

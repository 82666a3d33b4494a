"""wrk, the load generator: one Lua script for every target, targets taken in rounds.

The script POSTs the same body with the same headers to every target (Authorization
only where the target asks for a key); its `done()` prints wrk's own counts and latency
percentiles as JSON, so nothing is parsed from wrk's human-readable summary. wrk
measures a request from its first byte written to the last byte of the response read,
so a stream's latency is the whole stream.

`run_rounds` measures every scenario on every target once per round, the targets in a
different order each round, and a cell's figure is the median over the rounds: whatever
else the machine does meanwhile (other people's tests share its two cores) falls on all
targets alike instead of on whichever was measured then. wrk itself runs on the same
cores as the servers it measures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from tests.benchmarks.peers import CHAT_MODEL, STREAM_CHUNKS, STREAM_MODEL, ensure_debian_package

CHAT_BODY = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
STREAM_BODY = {**CHAT_BODY, "model": STREAM_MODEL, "max_tokens": STREAM_CHUNKS, "stream": True}

RESULT_PREFIX = "WRK_RESULT "
SCRIPT = """\
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTHORIZATION")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    "RESULT_PREFIX", summary.requests, summary.duration, e.status, e.connect, e.read,
    e.write, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
""".replace("RESULT_PREFIX", RESULT_PREFIX)


@dataclass
class WrkRun:
    """One wrk run's figures. `non2xx` is wrk's count of statuses above 399."""

    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "rps": round(self.rps, 1)}


@cache
def wrk_binary() -> str:
    return ensure_debian_package("wrk", ("wrk",))


def wrk_version() -> str:
    done = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).splitlines()[0].strip() if done.stdout + done.stderr else ""


def run_wrk(
    url: str,
    body: dict,
    authorization: str,
    connections: int,
    seconds: float,
    script_dir: Path,
) -> WrkRun:
    """`connections` keep-alive connections POSTing `body` to `url` for `seconds`.

    Two wrk threads at most (one for one connection): the machine has two cores, and
    the servers being measured need them too.
    """
    script = script_dir / "bench.lua"
    if not script.exists():
        script.write_text(SCRIPT)
    threads = min(2, connections)
    argv = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
    ]
    env = {
        **os.environ,
        "BENCH_BODY": json.dumps(body, separators=(",", ":")),
        "BENCH_AUTHORIZATION": authorization,
    }
    done = subprocess.run(
        [*argv, "-s", str(script), url],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)), "")
    assert line, f"wrk printed no result (exit {done.returncode}):\n{done.stdout}{done.stderr}"
    raw = json.loads(line[len(RESULT_PREFIX) :])
    return WrkRun(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        non2xx=raw["non2xx"],
        socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
    )


@dataclass(frozen=True)
class Target:
    """Where wrk sends the chat and the streamed requests, and the key it presents."""

    name: str
    chat_base: str
    stream_base: str
    authorization: str = ""  # the whole header value ("Bearer ..."), or none


@dataclass(frozen=True)
class Scenario:
    """How many connections, and which request, for one column of the comparison."""

    name: str
    connections: int
    stream: bool
    title: str


def run_scenario(target: Target, scenario: Scenario, seconds: float, script_dir: Path) -> WrkRun:
    base, body = (
        (target.stream_base, STREAM_BODY) if scenario.stream else (target.chat_base, CHAT_BODY)
    )
    url = f"{base}/v1/chat/completions"
    return run_wrk(url, body, target.authorization, scenario.connections, seconds, script_dir)


def run_rounds(
    targets: list[Target],
    scenarios: list[Scenario],
    rounds: int,
    seconds: float,
    script_dir: Path,
) -> dict[str, dict[str, list[WrkRun]]]:
    """{scenario: {target: one run per round}}, targets rotated by one each round."""
    runs: dict[str, dict[str, list[WrkRun]]] = {
        s.name: {t.name: [] for t in targets} for s in scenarios
    }
    for i in range(rounds):
        turn = i % len(targets)
        for scenario in scenarios:
            for target in targets[turn:] + targets[:turn]:
                run = run_scenario(target, scenario, seconds, script_dir)
                runs[scenario.name][target.name].append(run)
    return runs


def medians(runs: list[WrkRun]) -> dict:
    """A cell: the median over rounds of each figure, errors summed, each round kept."""
    return {
        "p50_ms": round(statistics.median(r.p50_ms for r in runs), 3),
        "p99_ms": round(statistics.median(r.p99_ms for r in runs), 3),
        "rps": round(statistics.median(r.rps for r in runs), 1),
        "requests": sum(r.requests for r in runs),
        "non2xx": sum(r.non2xx for r in runs),
        "socket_errors": sum(r.socket_errors for r in runs),
        "rounds": [r.as_dict() for r in runs],
    }

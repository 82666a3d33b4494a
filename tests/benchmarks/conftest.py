"""Benchmark fixtures: a many-host simulated cluster and a served Arbiter, as production runs.

The simulator (`manage.py simcluster --hosts N`) and Arbiter (`manage.py serve` with
ARBITER_CONFIG pointing at the simulator's inventory) are separate processes, so the
serve process's CPU and memory are Arbiter's alone. Each runs in its own session and is
stopped by process group, whatever the test did.
"""

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # one set of browser launch args
from tests.helpers import free_port
from tests.live_arbiter import MANAGE

BENCH_HOSTS = 32
SAMPLE_INTERVAL = 2.0
START_TIMEOUT = 90.0

# Settings log at INFO; a line per control-API request would bury the results table.
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass
class ChildProcess:
    """A process started in its own session, with every line it printed."""

    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_line(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """The first printed line starting with `prefix` (without it), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.output):
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()
            if not self.alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line {prefix!r} within {timeout} s:\n" + "".join(self.output))

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL it if it lingers."""
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start_child(argv: list[str], env: dict[str, str]) -> ChildProcess:
    process = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: measured and stopped as one
    )
    child = ChildProcess(process)

    def collect() -> None:
        # Always drain the pipe: a full pipe would block the child mid-benchmark.
        assert process.stdout is not None
        for line in process.stdout:
            child.output.append(line)

    threading.Thread(target=collect, daemon=True).start()
    return child


def bench_env(data_dir: Path, port: int, config: Path | None = None) -> dict[str, str]:
    """The embedded default (SQLite, in-memory channel layer) at the benchmark's tick."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ARBITER_", "DJANGO_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        ARBITER_DATA_DIR=str(data_dir),
        ARBITER_PORT=str(port),
        ARBITER_SAMPLE_INTERVAL=str(SAMPLE_INTERVAL),
        DJANGO_SETTINGS_MODULE="arbiter.settings",
    )
    if config is not None:
        env["ARBITER_CONFIG"] = str(config)
    return env


@dataclass
class BenchCluster:
    """The running simulator: its process, inventory file and control API."""

    child: ChildProcess
    config_path: Path
    control_url: str


@dataclass
class BenchArbiter:
    """The running `manage.py serve`: its process, URL, database and admin password."""

    child: ChildProcess
    url: str
    database: Path
    admin_password: str


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def bench_cluster(bench_dir: Path) -> Iterator[BenchCluster]:
    """`manage.py simcluster --hosts 32` in its own process."""
    env = bench_env(bench_dir / "var", free_port())
    argv = [sys.executable, "-u", MANAGE, "simcluster", "--hosts", str(BENCH_HOSTS)]
    child = start_child([*argv, "--data-dir", str(bench_dir / "sim")], env)
    try:
        config = Path(child.wait_for_line("simulated cluster ready: "))
        control_url = child.wait_for_line("control API: ")
        yield BenchCluster(child, config, control_url)
    finally:
        child.stop()


@pytest.fixture(scope="session")
def bench_arbiter(bench_dir: Path, bench_cluster: BenchCluster) -> Iterator[BenchArbiter]:
    """`manage.py serve` on a fresh database, sampling the simulator's hosts."""
    port = free_port()
    data_dir = bench_dir / "var"
    env = bench_env(data_dir, port, config=bench_cluster.config_path)
    subprocess.run(
        [sys.executable, MANAGE, "migrate", "--noinput", "-v0"], env=env, check=True, timeout=120
    )
    child = start_child([sys.executable, "-u", MANAGE, "serve", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(child, url)
        match = re.search(r"password\n\s+(\S+)", "".join(child.output))
        assert match, "serve did not print the first admin's password:\n" + "".join(child.output)
        yield BenchArbiter(child, url, data_dir / "arbiter.sqlite3", match.group(1))
    finally:
        child.stop()


def wait_healthy(child: ChildProcess, url: str, timeout: float = START_TIMEOUT) -> None:
    """Until the served Arbiter answers /healthz (it fails at once if the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert child.alive(), "serve exited:\n" + "".join(child.output)
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become healthy:\n" + "".join(child.output))


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()

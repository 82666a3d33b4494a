"""A real `manage.py serve` process on a free port, as `make run` starts it.

It runs with its own data dir and no ARBITER_CONFIG, so it starts the simulated cluster
itself: the same path a newcomer takes.
"""

import json
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

from tests.helpers import free_port

BASE_DIR = Path(__file__).resolve().parent.parent
MANAGE = str(BASE_DIR / "manage.py")


@dataclass
class LiveArbiter:
    """A served Arbiter: its URL, data dir, admin password and everything it printed."""

    url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)
    admin_password: str = ""

    def manage(self, *args: str) -> str:
        """Run another manage.py command against the same instance; return its stdout."""
        done = subprocess.run(
            [sys.executable, MANAGE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout

    def kill_and_restart(self, timeout: float = 60.0) -> None:
        """`kill -9` the whole serve process tree (no cleanup code of Arbiter's runs), then
        start serve again on the same port and data dir and wait until it is healthy."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)
        self.output.append("=== killed with SIGKILL, restarting ===\n")
        self.process = _spawn_serve(self.env, self.output)
        self.wait_for(lambda: healthy(self.url) or self.process.poll() is not None, timeout)
        assert self.process.poll() is None, "serve exited:\n" + "".join(self.output)

    def wait_for(self, predicate, timeout: float = 20.0, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


def inherited_env() -> dict[str, str]:
    """This process's environment without any Arbiter setting, for a served child."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ARBITER_", "DJANGO_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }


def _clean_env(data_dir: Path, port: int) -> dict[str, str]:
    # The embedded default, as `make run` gives it: SQLite in its own data dir, no Redis.
    env = inherited_env()
    env.update(
        ARBITER_DATA_DIR=str(data_dir),
        ARBITER_PORT=str(port),
        ARBITER_SAMPLE_INTERVAL="0.5",
        # The orphan scan's `docker ps` would land in the SSH command counts of the live
        # dashboard's tests: it runs once at start; tests ask for a scan through the API.
        ARBITER_ORPHAN_SCAN_INTERVAL="3600",
        # Browser tests' webhook receivers listen on 127.0.0.1 (refused by default: SSRF).
        ARBITER_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8",
        DJANGO_SETTINGS_MODULE="arbiter.settings",
    )
    return env


@pytest.fixture(scope="module")
def live_arbiter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveArbiter]:
    """One served instance per test module (starting one takes a few seconds)."""
    port = free_port()
    data_dir = tmp_path_factory.mktemp("live") / "var"
    env = _clean_env(data_dir, port)
    subprocess.run(
        [sys.executable, MANAGE, "migrate", "--noinput", "-v0"], env=env, check=True, timeout=120
    )
    output: list[str] = []
    process = _spawn_serve(env, output)
    arbiter = LiveArbiter(f"http://127.0.0.1:{port}", data_dir, env, process, output)
    try:
        arbiter.wait_for(lambda: healthy(arbiter.url) or process.poll() is not None, 60)
        assert process.poll() is None, "serve exited:\n" + "".join(arbiter.output)
        text = "".join(arbiter.output)
        match = re.search(r"password\n\s+(\S+)", text)
        assert match, "serve did not print the first admin's password:\n" + text
        arbiter.admin_password = match.group(1)
        yield arbiter
    finally:
        process = arbiter.process  # kill_and_restart() may have replaced the first one
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        _kill_leftover_containers(data_dir)


def _spawn_serve(env: dict[str, str], output: list[str]) -> subprocess.Popen:
    """`manage.py serve` in its own session; what it prints is appended to `output`."""
    process = subprocess.Popen(
        [sys.executable, "-u", MANAGE, "serve", "--port", env["ARBITER_PORT"]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def collect() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=collect, daemon=True).start()
    return process


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def simulated_container_records(data_dir: Path) -> Iterator[tuple[str, dict]]:
    """(host, record) of every container the simulated dockers under `data_dir` know
    (sim/hosts/<host>/docker/containers.json; a file being rewritten is skipped)."""
    for registry in (data_dir / "sim").rglob("containers.json"):
        try:
            containers = json.loads(registry.read_text()).get("containers", [])
        except (OSError, ValueError):
            continue
        for container in containers:
            yield registry.parent.parent.name, container


def _kill_leftover_containers(data_dir: Path) -> None:
    """Simulated containers outlive the simulator on purpose (like real ones); not tests'."""
    for _host, container in simulated_container_records(data_dir):
        if container.get("pid"):
            try:
                os.killpg(container["pid"], signal.SIGKILL)
            except OSError:
                pass

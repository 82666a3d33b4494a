"""Several `manage.py serve --no-huey` processes on the PostgreSQL test database and
Redis, against the simulated cluster running in the test process (so it outlives any
process a test kills, as a real host outlives a crashed Arbiter)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import free_port
from tests.live_arbiter import healthy
from tests.ship.sources import ROOT
from tests.ship.test_cross_process import served_env


@contextmanager
def serve_processes(
    sim_cluster, tmp_path: Path, count: int = 3, **extra_env: str
) -> Iterator[dict[int, str]]:
    """{pid: base URL} of `count` serve processes, started together, once all answer;
    stopped afterwards (those still running)."""
    processes: list[subprocess.Popen] = []
    urls: dict[int, str] = {}
    logs: list[Path] = []
    try:
        for index in range(count):
            port = free_port()
            env = served_env(tmp_path / f"serve{index}", sim_cluster.config_path)
            env.update(
                ARBITER_SWAP_HEALTH_TIMEOUT="30",
                ARBITER_SWAP_MEMORY_FREE_TIMEOUT="10",
                ARBITER_HF_TOKEN="",
                **extra_env,
            )
            logs.append(tmp_path / f"serve{index}.log")
            process = subprocess.Popen(
                [sys.executable, "manage.py", "serve", "--no-huey", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=logs[-1].open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            processes.append(process)
            urls[process.pid] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while not all(healthy(url) for url in urls.values()):
            exited = [p.pid for p in processes if p.poll() is not None]
            assert not exited and time.monotonic() < deadline, "\n".join(
                f"--- {log.name}:\n{log.read_text()}" for log in logs
            )
            time.sleep(0.2)
        yield urls
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

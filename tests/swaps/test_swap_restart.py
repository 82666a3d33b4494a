"""Arbiter killed (SIGKILL) in the middle of a swap and started again: the swap completes.

A real `manage.py serve` with its simulated cluster, as `make run` starts it. The kill
takes down the whole process tree (Arbiter and the simulator's SSH servers); the
container, like a real detached one, survives. The restarted engine re-attaches: it
follows the container's log again without repeating stored lines, and waits for health.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port
from tests.live_arbiter import MANAGE, _clean_env, _kill_leftover_containers, healthy

MODEL_SHELL = (
    "from catalog.models import CatalogModel; "
    "CatalogModel.objects.get_or_create(key='restart-test', defaults=dict("
    "hub_repo='Qwen/Qwen3-0.6B', served_name='restart-test', gpu_memory_utilization=0.3))"
)


class Served:
    """One `manage.py serve` process (its whole session) and what it printed."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-u", MANAGE, "serve", "--port", str(port), "--no-huey"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._collect, daemon=True).start()
        self.url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(self.url) or self.process.poll() is not None, 60)
        assert self.process.poll() is None, "serve exited:\n" + "".join(self.output)

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def kill(self) -> None:
        """SIGKILL to the whole tree: no cleanup code of Arbiter's runs."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def wait_for(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


@pytest.fixture
def instance(tmp_path):
    port = free_port()
    data_dir = tmp_path / "var"
    env = _clean_env(data_dir, port)
    env.update(ARBITER_SWAP_HEALTH_TIMEOUT="60", ARBITER_PROBE_INTERVAL="1")

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, MANAGE, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    manage("migrate", "--noinput", "-v0")
    served: list[Served] = []
    try:
        yield data_dir, env, port, manage, served
    finally:
        for server in served:
            server.stop()
        _kill_leftover_containers(data_dir)


def test_it_completes_after_a_restart_a_swap_that_was_in_flight_when_arbiter_was_killed(instance):
    data_dir, env, port, manage, served = instance
    served.append(Served(env, port))
    key = manage("create_api_key", "restart test").strip()
    manage("shell", "-c", MODEL_SHELL)
    api = httpx.Client(base_url=served[0].url, headers={"Authorization": f"Bearer {key}"})
    control = json.loads((data_dir / "sim" / "control.json").read_text())["url"]
    httpx.post(f"{control}/hosts/sim-b/faults", json={"slow_start": 8}).raise_for_status()

    response = api.post("/api/swap", json={"model": "restart-test", "host": "sim-b"})
    assert response.status_code == 202, response.text
    swap_id = response.json()["id"]

    def stdout_lines() -> list[str]:
        lines = api.get(f"/api/swap/{swap_id}/log").json()["lines"]
        return [line["text"] for line in lines if line["stream"] == "stdout"]

    wait_for(lambda: api.get(f"/api/swap/{swap_id}").json()["state"] == "waiting_healthy", 30)
    wait_for(lambda: len(stdout_lines()) >= 4, 30)
    served[0].kill()

    served.append(Served(env, port))
    api = httpx.Client(base_url=served[1].url, headers={"Authorization": f"Bearer {key}"})
    swap = wait_for(
        lambda: (s := api.get(f"/api/swap/{swap_id}").json())["final"] and s, timeout=60
    )
    assert swap["state"] == "complete", swap["error"]
    states = [t["state"] for t in swap["transitions"]]
    assert states == [
        "pending",
        "preflight",
        "stopping",
        "launching",
        "waiting_healthy",
        "complete",
    ]

    log = [line["text"] for line in api.get(f"/api/swap/{swap_id}/log").json()["lines"]]
    assert "Arbiter restarted: resuming this swap in state waiting_healthy" in log
    (stdout_file,) = (data_dir / "sim" / "hosts" / "sim-b" / "docker" / "containers").glob(
        "*.stdout.log"
    )
    printed = Path(stdout_file).read_text().splitlines()
    stored = stdout_lines()
    assert stored == printed[: len(stored)]  # every line once, in order
    assert "INFO:     Application startup complete." in stored

    service = next(
        s for s in api.get("/api/status").json()["services"] if s["name"] == "sim-b-vllm"
    )
    models = httpx.get(f"{service['base_url']}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["restart-test"]

"""A sleeping simulated vLLM and the host's memory readings.

Level-1 sleep offloads the weights to CPU RAM and discards the KV cache; level 2
discards both (docs.vllm.ai, "Sleep Mode"). On a unified-memory GB10 CPU RAM is the same
pool, so level 1 frees only the KV cache in /proc/meminfo's MemAvailable; on a discrete
GPU nvidia-smi shows the memory freed while host RAM takes the weights. The container is
a real process logging to a file, as under the simulated docker daemon, which reads its
sleep state from that log (arbiter/simulator/sleep_state.py).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from arbiter.simulator.dockerd import container_argv
from arbiter.simulator.gpus import GB10, RTX_6000_ADA, GpuBoard, HostMemory
from arbiter.simulator.sleep_state import held, read_sleep
from tests.helpers import free_port
from tests.live_arbiter import BASE_DIR

VRAM = 40_000  # what the container claims; half of it is taken as its weights
TOTAL_KB = 128 * 1024 * 1024


class Container:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                container_argv(
                    [
                        "--served-model-name=m",
                        f"--port={self.port}",
                        "--startup-delay=0",
                        f"--vram-mib={VRAM}",
                    ]
                ),
                cwd=BASE_DIR,
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def container(tmp_path):
    running = Container(tmp_path / "c1.stdout.log")
    yield running
    running.stop()


def board_for(spec, container: Container) -> GpuBoard:
    board = GpuBoard("h", [spec], HostMemory(TOTAL_KB))
    pid = container.process.pid
    board.loads = lambda: [
        held((0,), VRAM, pid, read_sleep(f"c-{spec.name}", pid, container.log), board)
    ]
    return board


def available_mib(board: GpuBoard) -> int:
    return board.available_kb() // 1024


def test_it_frees_only_the_kv_cache_at_level_1_on_unified_memory(container):
    board = board_for(GB10, container)
    awake = available_mib(board)
    assert httpx.post(f"{container.url}/sleep").status_code == 200
    assert available_mib(board) == awake + VRAM // 2  # the weights stay in the pool
    assert board.readings()[0].memory_used_mib is None  # a GB10 reports [N/A]
    assert httpx.post(f"{container.url}/wake_up").status_code == 200
    assert available_mib(board) == awake


def test_it_frees_everything_at_level_2_on_unified_memory(container):
    board = board_for(GB10, container)
    awake = available_mib(board)
    assert httpx.post(f"{container.url}/sleep?level=2").status_code == 200
    assert available_mib(board) == awake + VRAM


def test_it_frees_a_discrete_gpu_and_takes_host_ram_at_level_1(container):
    board = board_for(RTX_6000_ADA, container)
    used, ram = board.readings()[0].memory_used_mib, available_mib(board)
    assert httpx.post(f"{container.url}/sleep").status_code == 200
    assert board.readings()[0].memory_used_mib == used - VRAM
    assert available_mib(board) == ram - VRAM // 2  # the weights went to host RAM
    assert "Sleep mode freed" in container.log.read_text()  # vLLM's own line


def test_it_needs_no_host_ram_at_level_2_on_a_discrete_gpu(container):
    board = board_for(RTX_6000_ADA, container)
    ram = available_mib(board)
    assert httpx.post(f"{container.url}/sleep?level=2").status_code == 200
    assert available_mib(board) == ram
    assert board.readings()[0].memory_used_mib == 3  # the driver's own, as idle

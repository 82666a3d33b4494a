"""GPU memory a stopped container's process keeps (the `hold_memory_after_stop` fault),
as `nvidia-smi --query-compute-apps` and /proc/meminfo show it, and labels in `docker ps`.

The real tool's shape: `pid, process_name, used_gpu_memory [MiB]` as the header for
`--query-compute-apps=pid,process_name,used_memory --format=csv`, vLLM's engine process
listed as `VLLM::EngineCore`, its share reported per process even on a GB10 (whose
per-GPU memory fields are `[N/A]`), and nothing at all under `noheader` once no process
holds memory (arbiter/simulator/gpus.py cites the sources).
"""

from __future__ import annotations

import asyncio
import json
import re

from tests.helpers import free_port
from tests.simulator.client import run, wait_until
from tests.simulator.test_docker import vllm_run, wait_healthy

APPS_WITH_HEADER = [
    "nvidia-smi",
    "--query-compute-apps=pid,process_name,used_memory",
    "--format=csv",
]
APPS = [
    "nvidia-smi",
    "--query-compute-apps=pid,gpu_uuid,used_memory,process_name",
    "--format=csv,noheader,nounits",
]


async def mem_available_kb(conn) -> int:
    text = (await run(conn, ["cat", "/proc/meminfo"])).stdout
    return int(re.search(r"MemAvailable:\s+(\d+) kB", text).group(1))


async def test_it_keeps_a_stopped_containers_gpu_process_until_it_is_freed(sim, ssh) -> None:
    host = sim.hosts["sim-gb10"]
    conn = await ssh("sim-gb10")
    idle = await mem_available_kb(conn)
    host.inject(hold_memory_after_stop=True)
    port = free_port()
    assert (await run(conn, vllm_run("leaky", port, util="0.5"))).exit_status == 0
    await wait_healthy(port)
    await wait_until(lambda: host.container("leaky").ready)
    pid = host.container("leaky").pid
    mib = int(0.5 * (125_000_000 // 1024))

    listed = await run(conn, APPS_WITH_HEADER)
    assert listed.stdout == (
        f"pid, process_name, used_gpu_memory [MiB]\n{pid}, VLLM::EngineCore, {mib} MiB\n"
    )
    [uuid] = (
        await run(conn, ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"])
    ).stdout.split()
    assert (await run(conn, APPS)).stdout == f"{pid}, {uuid}, {mib}, VLLM::EngineCore\n"

    assert (await run(conn, ["docker", "stop", "leaky"])).exit_status == 0
    assert (await run(conn, ["docker", "rm", "leaky"])).exit_status == 0
    await asyncio.sleep(host.daemon.release_delay + 0.2)  # past when memory would come back
    assert (await run(conn, APPS)).stdout == f"{pid}, {uuid}, {mib}, VLLM::EngineCore\n"
    assert idle - await mem_available_kb(conn) == mib * 1024  # the pool stays taken

    assert host.free_held_memory() == 1
    assert (await run(conn, APPS)).stdout == ""  # noheader and no process: nothing
    assert (
        await run(conn, APPS_WITH_HEADER)
    ).stdout == "pid, process_name, used_gpu_memory [MiB]\n"
    assert await mem_available_kb(conn) == idle


async def test_it_returns_a_stopped_containers_memory_without_the_fault(sim, ssh) -> None:
    host = sim.hosts["sim-b"]
    conn = await ssh("sim-b")
    port = free_port()
    assert (await run(conn, vllm_run("tidy", port, util="0.3"))).exit_status == 0
    await wait_healthy(port)
    await wait_until(lambda: host.container("tidy").ready)
    assert (await run(conn, APPS)).stdout.count("VLLM::EngineCore") == 1
    assert (await run(conn, ["docker", "rm", "--force", "tidy"])).exit_status == 0
    await asyncio.sleep(host.daemon.release_delay + 0.2)
    assert (await run(conn, APPS)).stdout == ""
    assert host.free_held_memory() == 0


async def test_it_filters_docker_ps_by_label_like_docker(sim, ssh) -> None:
    conn = await ssh("sim-b")
    for name, labels in (("ours", ["--label", "arbiter.managed=true"]), ("theirs", [])):
        argv = vllm_run(name, free_port(), *labels, util="0.1")
        assert (await run(conn, argv)).exit_status == 0
    listed = await run(
        conn,
        [
            "docker",
            "ps",
            "--all",
            "--filter",
            "label=arbiter.managed=true",
            "--format",
            "{{json .}}",
        ],
    )
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [row["Names"] for row in rows] == ["ours"]
    assert rows[0]["Labels"] == "arbiter.managed=true"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC", rows[0]["CreatedAt"])

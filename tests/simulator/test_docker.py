"""The simulated `docker` over SSH: real container processes, Docker's own refusals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from arbiter.simulator import dockerd
from arbiter.simulator.cluster import SimulatedCluster
from arbiter.simulator.gpus import IDLE_MIB
from tests.helpers import free_port
from tests.simulator.client import connect, run, wait_until

IMAGE = "vllm/vllm-openai:v0.11.0"
RTX_TOTAL = 49140


def vllm_run(
    name: str, port: int, *extra: str, model: str = "org/tiny", util: str = "0.9"
) -> list[str]:
    return [
        "docker",
        "run",
        "-d",
        "--name",
        name,
        "--gpus",
        "all",
        "-p",
        f"{port}:8000",
        *extra,
        IMAGE,
        "--model",
        model,
        "--served-model-name",
        name,
        "--gpu-memory-utilization",
        util,
    ]


async def health(port: int) -> int | None:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"http://127.0.0.1:{port}/health")).status_code
    except httpx.TransportError:
        return None


async def wait_healthy(port: int, timeout: float = 10) -> float:
    deadline = time.monotonic() + timeout
    while await health(port) != 200:
        assert time.monotonic() < deadline, f"nothing healthy on port {port}"
        await asyncio.sleep(0.05)
    return time.monotonic()


async def memory_used(conn, fields: str = "memory.used") -> list[int]:
    result = await run(
        conn, ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"]
    )
    return [int(line) for line in result.stdout.split()]


async def inspect(conn, name: str) -> dict:
    result = await run(conn, ["docker", "inspect", name])
    assert result.exit_status == 0, result.stderr
    return json.loads(result.stdout)[0]


async def wait_exited(sim: SimulatedCluster, host: str, name: str, timeout: float = 10) -> None:
    def exited() -> bool:
        container = sim.hosts[host].container(name)
        return container is not None and container.status == "exited"

    await wait_until(exited, timeout)


async def test_it_runs_serves_stops_and_removes_a_container(sim, ssh) -> None:
    conn = await ssh("sim-a")
    port = free_port()
    argv = vllm_run(
        "llm",
        port,
        "-e",
        "HF_TOKEN",
        "-v",
        "/models:/models:ro",
        "--ipc",
        "host",
        "--shm-size",
        "16g",
        "--restart",
        "unless-stopped",
    )
    sim.hosts["sim-a"].set_sshd(accept_env=["LANG", "LC_*", "HF_TOKEN"])  # else dropped
    started = await run(conn, argv, env={"HF_TOKEN": "hf_very_secret"})
    assert started.exit_status == 0, started.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", started.stdout)
    assert "Unable to find image 'vllm/vllm-openai:v0.11.0' locally" in started.stderr
    assert sim.hosts["sim-a"].commands[-1].argv == argv

    await wait_healthy(port)
    async with httpx.AsyncClient() as client:
        models = (await client.get(f"http://127.0.0.1:{port}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["llm"]
    await wait_until(lambda: sim.hosts["sim-a"].container("llm").ready)
    assert await memory_used(conn) == [IDLE_MIB + int(0.9 * RTX_TOTAL)] * 2
    assert await memory_used(conn, "utilization.gpu") == [1, 1]

    listed = await run(conn, ["docker", "ps", "--format", "{{.Names}}\\t{{.State}}\\t{{.Status}}"])
    assert re.fullmatch(r"llm\trunning\tUp .+\n", listed.stdout)
    data = await inspect(conn, "llm")
    assert (data["Name"], data["State"]["Status"], data["State"]["Running"]) == (
        "/llm",
        "running",
        True,
    )
    assert data["Config"]["Env"] == ["HF_TOKEN=***"]
    assert data["HostConfig"]["PortBindings"] == {
        "8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]  # noqa: S104 (docker's text)
    }
    environ = Path(f"/proc/{data['State']['Pid']}/environ").read_bytes().split(b"\0")
    assert b"HF_TOKEN=hf_very_secret" in environ  # the container got the value...
    registry = (sim.data_dir / "hosts" / "sim-a" / "docker" / "containers.json").read_text()
    assert "hf_very_secret" not in registry  # ...and the simulator kept only the name
    status = await run(
        conn, ["docker", "inspect", "--format", "{{.State.Status}} {{.State.Running}}", "llm"]
    )
    assert status.stdout == "running true\n"

    stopped = await run(conn, ["docker", "stop", "-t", "5", "llm"])
    assert (stopped.exit_status, stopped.stdout) == (0, "llm\n")
    data = await inspect(conn, "llm")
    assert (data["State"]["Status"], data["State"]["ExitCode"], data["State"]["Pid"]) == (
        "exited",
        0,
        0,
    )
    assert await memory_used(conn) == [IDLE_MIB + int(0.9 * RTX_TOTAL)] * 2  # not freed yet
    await asyncio.sleep(sim.hosts["sim-a"].daemon.release_delay + 0.1)
    assert await memory_used(conn) == [IDLE_MIB, IDLE_MIB]

    logs = await run(conn, ["docker", "logs", "llm"])
    assert "Application startup complete." in logs.stdout
    assert "Shutting down" in logs.stdout
    tail = await run(conn, ["docker", "logs", "--tail", "1", "llm"])
    assert len(tail.stdout.splitlines()) == 1

    removed = await run(conn, ["docker", "rm", "llm"])
    assert (removed.exit_status, removed.stdout) == (0, "llm\n")
    assert (await run(conn, ["docker", "ps", "-a", "-q"])).stdout == ""
    gone = await run(conn, ["docker", "inspect", "llm"])
    assert (gone.exit_status, gone.stdout, gone.stderr) == (
        1,
        "[]\n",
        "Error: No such object: llm\n",
    )


async def test_it_streams_logs_with_follow_until_the_container_exits(sim, ssh) -> None:
    conn = await ssh("sim-a")
    port = free_port()
    assert (await run(conn, vllm_run("follow", port, util="0.3"))).exit_status == 0
    follower = await conn.create_process("docker logs -f follow")
    seen = ""
    while "Application startup complete." not in seen:
        seen += await asyncio.wait_for(follower.stdout.readline(), 10)
    other = await connect(sim, "sim-a")
    async with other:
        assert (await run(other, ["docker", "stop", "follow"])).exit_status == 0
    rest = await asyncio.wait_for(follower.stdout.read(), 10)
    await follower.wait()
    assert follower.exit_status == 0
    assert "Shutting down" in rest
    assert "Finished server process" in rest


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (
            ["docker", "run", "--bogus", "x", IMAGE],
            125,
            "unknown flag: --bogus\nSee 'docker run --help'.\n",
        ),
        (
            ["docker", "run", "-d", "--name", "bad name!", IMAGE],
            125,
            "docker: Error response from daemon: Invalid container name (bad name!), only "
            "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed.\nSee 'docker run --help'.\n",
        ),
        (
            ["docker", "run", "-d", "--name", "x", "Vllm/Bad:latest"],
            125,
            "docker: invalid reference format: repository name (Vllm/Bad) must be lowercase.\n",
        ),
        (
            ["docker", "run", "-d", "--name", "x", "vllm/vllm-openai:"],
            125,
            "docker: invalid reference format.\nSee 'docker run --help'.\n",
        ),
        (["docker", "run"], 1, '"docker run" requires at least 1 argument.\n'),
        (
            ["docker", "run", "-d", "-v", "models:/models:ro", "-v", "rel/dir:/x", IMAGE],
            125,
            'create rel/dir: "rel/dir" includes invalid characters for a local volume name',
        ),
        (["docker", "run", "-d", "-v", "/models:/models:rx", IMAGE], 125, "invalid mode: rx"),
        (["docker", "run", "-d", "-p", "80:http", IMAGE], 125, "invalid containerPort: http"),
        (
            ["docker", "run", "-d", "--gpus", "lots", IMAGE],
            125,
            'invalid argument "lots" for "--gpus" flag: count must be an integer',
        ),
        (
            ["docker", "run", "-d", "--gpus", '"device=0,7"', IMAGE],
            125,
            "nvidia-container-cli: device error: 7: unknown device",
        ),
        (
            ["docker", "run", "-d", "-e", "=oops", IMAGE],
            125,
            'invalid argument "=oops" for "-e, --env" flag',
        ),
        (
            ["docker", "run", "-d", "--restart", "sometimes", IMAGE],
            125,
            "invalid restart policy: unknown policy 'sometimes'",
        ),
        (
            ["docker", "run", "-d", "--runtime", "nvidai", IMAGE],
            125,
            "unknown or invalid runtime name: nvidai",
        ),
        (["docker", "logs", "nope"], 1, "Error response from daemon: No such container: nope\n"),
        (["docker", "stop", "nope"], 1, "Error response from daemon: No such container: nope\n"),
        (
            ["docker", "rm", "-f", "nope"],
            1,
            "Error response from daemon: No such container: nope\n",
        ),
        (["docker", "ps", "--filter", "colour=red"], 1, "invalid filter 'colour'"),
        (["docker", "frobnicate"], 1, "docker: 'frobnicate' is not a docker command."),
    ],
)
async def test_it_rejects_what_docker_rejects(
    ssh, argv: list[str], status: int, message: str
) -> None:
    conn = await ssh("sim-a")
    result = await run(conn, argv)
    assert result.exit_status == status
    assert message in result.stderr
    assert result.stdout == ""
    listed = await run(conn, ["docker", "ps", "-a", "--format", "{{.Names}} {{.State}}"])
    # Only the GPU request fails once the container exists (as nvidia's hook does): never run.
    assert all(line.endswith(" created") for line in listed.stdout.splitlines())


async def test_it_refuses_a_name_in_use_and_needs_force_to_remove_a_running_container(
    sim, ssh
) -> None:
    conn = await ssh("sim-b")
    assert (await run(conn, vllm_run("dup", free_port()))).exit_status == 0
    container_id = sim.hosts["sim-b"].container("dup").id
    again = await run(conn, vllm_run("dup", free_port()))
    assert again.exit_status == 125
    assert again.stderr == (
        f'docker: Error response from daemon: Conflict. The container name "/dup" is already in '
        f'use by container "{container_id}". You have to remove (or rename) that container to be '
        "able to reuse that name.\nSee 'docker run --help'.\n"
    )
    refused = await run(conn, ["docker", "rm", "dup"])
    assert (refused.exit_status, refused.stderr) == (
        1,
        'Error response from daemon: cannot remove container "/dup": container is running: '
        "stop the container before removing or force remove\n",
    )
    forced = await run(conn, ["docker", "rm", "-f", "dup"])
    assert (forced.exit_status, forced.stdout) == (0, "dup\n")
    assert sim.hosts["sim-b"].containers == []


async def test_it_leaves_the_container_created_when_the_host_port_is_taken(sim, ssh) -> None:
    conn = await ssh("sim-b")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = await run(conn, vllm_run("blocked", port))
    assert result.exit_status == 125
    assert f"Bind for 0.0.0.0:{port} failed: port is already allocated." in result.stderr
    listed = await run(conn, ["docker", "ps", "-a", "--format", "{{.Names}} {{.Status}}"])
    assert listed.stdout == "blocked Created\n"


async def test_it_exits_1_with_the_error_in_the_logs_on_a_fail_start_fault(sim, ssh) -> None:
    conn = await ssh("sim-a")
    sim.hosts["sim-a"].inject(fail_start=True)
    assert (await run(conn, vllm_run("failing", free_port()))).exit_status == 0
    await wait_exited(sim, "sim-a", "failing")
    assert (await inspect(conn, "failing"))["State"]["ExitCode"] == 1
    logs = await run(conn, ["docker", "logs", "failing"])
    assert "Engine core initialization failed" in logs.stderr
    assert "EngineCore failed to start." in logs.stdout
    assert sim.hosts["sim-a"].faults.fail_start is False  # one run only
    assert await memory_used(conn) == [IDLE_MIB, IDLE_MIB]


async def test_it_fails_a_bad_model_like_a_missing_hub_repo(sim, ssh) -> None:
    conn = await ssh("sim-a")
    sim.hosts["sim-a"].inject(bad_model=True)
    assert (await run(conn, vllm_run("badmodel", free_port(), model="org/nope"))).exit_status == 0
    await wait_exited(sim, "sim-a", "badmodel")
    listed = await run(
        conn, ["docker", "ps", "-a", "--filter", "name=^badmodel$", "--format", "{{.Status}}"]
    )
    assert listed.stdout.startswith("Exited (1) ")
    logs = await run(conn, ["docker", "logs", "badmodel"])
    assert (
        "OSError: org/nope is not a local folder and is not a valid model identifier" in logs.stderr
    )


async def test_it_delays_readiness_on_a_slow_start(sim, ssh) -> None:
    conn = await ssh("sim-b")
    sim.hosts["sim-b"].inject(slow_start=1.2)
    port = free_port()
    launched = time.monotonic()
    assert (await run(conn, vllm_run("slow", port))).exit_status == 0
    ready = await wait_healthy(port)
    assert ready - launched >= 1.1


async def test_it_exits_with_the_engine_error_on_a_crash_after_ready(sim, ssh) -> None:
    conn = await ssh("sim-b")
    sim.hosts["sim-b"].inject(crash_after_ready=0.2)
    port = free_port()
    assert (await run(conn, vllm_run("crashy", port))).exit_status == 0
    await wait_healthy(port)
    await wait_exited(sim, "sim-b", "crashy")
    data = await inspect(conn, "crashy")
    assert (data["State"]["Status"], data["State"]["ExitCode"]) == ("exited", 1)
    assert (
        "EngineCore encountered a fatal error"
        in (await run(conn, ["docker", "logs", "crashy"])).stdout
    )


async def test_it_fails_a_launch_before_memory_is_freed_like_vllm(sim, ssh) -> None:
    conn = await ssh("sim-b")
    first = free_port()
    assert (await run(conn, vllm_run("first", first))).exit_status == 0
    await wait_healthy(first)
    await wait_until(lambda: sim.hosts["sim-b"].container("first").ready)
    assert (await run(conn, ["docker", "stop", "first"])).exit_status == 0
    assert (await run(conn, vllm_run("second", free_port()))).exit_status == 0  # too early
    await wait_exited(sim, "sim-b", "second")
    logs = await run(conn, ["docker", "logs", "second"])
    assert "ValueError: Free memory on device cuda:0" in logs.stderr
    await asyncio.sleep(sim.hosts["sim-b"].daemon.release_delay)
    third = free_port()
    assert (await run(conn, vllm_run("third", third))).exit_status == 0
    await wait_healthy(third)


async def test_it_shows_unified_memory_loads_in_mem_available(sim, ssh) -> None:
    conn = await ssh("sim-gb10")
    port = free_port()

    async def available() -> int:
        text = (await run(conn, ["cat", "/proc/meminfo"])).stdout
        return int(re.search(r"MemAvailable:\s+(\d+) kB", text).group(1))

    before = await available()
    assert (await run(conn, vllm_run("spark", port, util="0.5"))).exit_status == 0
    await wait_healthy(port)
    await wait_until(lambda: sim.hosts["sim-gb10"].container("spark").ready)
    expected = int(0.5 * (125_000_000 // 1024)) * 1024
    assert before - await available() == expected
    used = await run(
        conn,
        ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits"],
    )
    assert used.stdout == "[N/A], 1\n"


async def test_it_runs_with_the_host_network_an_env_file_and_attached_names(sim, ssh) -> None:
    conn = await ssh("sim-a")
    port = free_port()
    argv = [
        "docker",
        "run",
        "-d",
        "--network=host",
        "--env-file",
        "/dev/stdin",
        "-e",
        "B",
        "--name",
        "hostnet",
        "--gpus",
        '"device=1"',
        IMAGE,  # its entrypoint is `vllm serve`: the model follows as the positional
        "org/positional",
        "--port",
        str(port),
    ]
    sim.hosts["sim-a"].set_sshd(accept_env=["LANG", "LC_*", "B"])  # sshd passes B on
    result = await run(conn, argv, input="A=1\n# comment\nB=from-file\n", env={"B": "from-env"})
    assert result.exit_status == 0, result.stderr
    await wait_healthy(port)
    container = sim.hosts["sim-a"].container("hostnet")
    assert (container.env_names, container.gpu_indices, container.network) == (
        ["A", "B"],
        [1],
        "host",
    )
    pid = (await inspect(conn, "hostnet"))["State"]["Pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"B=from-env" in environ and b"A=1" in environ
    async with httpx.AsyncClient() as client:
        models = (await client.get(f"http://127.0.0.1:{port}/v1/models")).json()
    assert models["data"][0]["id"] == "org/positional"


async def test_it_readopts_running_containers_after_a_restart(tmp_path) -> None:
    first = SimulatedCluster(tmp_path, startup_delay=0.2, control=False)
    await first.start()
    port = free_port()
    async with await connect(first, "sim-a") as conn:
        assert (await run(conn, vllm_run("survivor", port))).exit_status == 0
    pid = first.hosts["sim-a"].container("survivor").pid
    await first.stop()  # like a real host's sshd restarting: containers keep running
    assert await wait_healthy(port)
    second = SimulatedCluster(tmp_path, startup_delay=0.2, control=False)
    await second.start()
    try:
        async with await connect(second, "sim-a") as conn:
            listed = await run(conn, ["docker", "ps", "--format", "{{.Names}} {{.State}}"])
            assert listed.stdout == "survivor running\n"
            assert (await inspect(conn, "survivor"))["State"]["Pid"] == pid
            os.kill(pid, signal.SIGKILL)
            await wait_exited(second, "sim-a", "survivor")
            assert (await inspect(conn, "survivor"))["State"]["ExitCode"] == 137
    finally:
        await second.stop(kill_containers=True)


async def test_it_reports_a_dead_container_exited_after_a_restart(tmp_path) -> None:
    first = SimulatedCluster(tmp_path, startup_delay=0.2, control=False)
    await first.start()
    async with await connect(first, "sim-b") as conn:
        assert (await run(conn, vllm_run("ghost", free_port()))).exit_status == 0
    await first.stop()
    registry = tmp_path / "hosts" / "sim-b" / "docker" / "containers.json"
    pid = json.loads(registry.read_text())["containers"][0]["pid"]
    # A new simulator process would not know this child, and init would have reaped it.
    child = dockerd._CHILDREN.pop(pid)
    os.kill(pid, signal.SIGKILL)
    child.wait()
    second = SimulatedCluster(tmp_path, startup_delay=0.2, control=False)
    await second.start()
    try:
        container = second.hosts["sim-b"].container("ghost")
        assert (container.status, container.exit_code) == ("exited", 255)
    finally:
        await second.stop(kill_containers=True)

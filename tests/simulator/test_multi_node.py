"""One model over two simulated hosts: vLLM's native multi-node launch through docker.

Each node is a real container process started by the host's own `docker run` over SSH;
the head listens for its worker nodes on --master-port, the `--headless` worker connects
there and serves nothing. Also: `--device` paths a host lacks, and the
`spark-control-pair` scenario that a launcher script set up before Arbiter.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import yaml
from django.core.management import CommandError, call_command

from arbiter.simulator.cluster import ClusterThread, SimulatedCluster
from arbiter.simulator.gpus import IDLE_MIB
from arbiter.simulator.scenarios import SPARK_CONTAINER, SPARK_IMAGE, SPARK_MODEL
from tests.helpers import free_port
from tests.simulator.client import run, wait_until
from tests.simulator.conftest import STARTUP_DELAY
from tests.simulator.test_docker import health, wait_healthy

IMAGE = "vllm/vllm-openai:v0.11.0"
MODEL = "org/two-node-model"
SERVED = "pair-model"
NAME = "vllm-pair"


def node_run(
    rank: int,
    port: int,
    master_port: int,
    *docker_extra: str,
    headless: bool | None = None,
    spaced: bool = False,
    engine_extra: tuple[str, ...] = (),
) -> list[str]:
    """One node's `docker run`, as the spec's launch has it; `spaced` writes the vLLM
    flags as `--flag value` (and -tp) instead of `--flag=value`: vLLM takes both."""
    flags = {
        "--served-model-name": SERVED,
        "--port": str(port),
        "--tensor-parallel-size": "2",
        "--distributed-executor-backend": "mp",
        "--nnodes": "2",
        "--node-rank": str(rank),
        "--master-addr": "127.0.0.1",
        "--master-port": str(master_port),
        "--gpu-memory-utilization": "0.5",
    }
    engine: list[str] = []
    for flag, value in flags.items():
        if spaced:
            engine += ["-tp" if flag == "--tensor-parallel-size" else flag, value]
        else:
            engine.append(f"{flag}={value}")
    if headless if headless is not None else rank > 0:
        engine.append("--headless")
    return [
        "docker",
        "run",
        "--detach",
        f"--name={NAME}",
        "--gpus=all",
        "--network=host",
        "--ipc=host",
        "--env=VLLM_HOST_IP=127.0.0.1",
        *docker_extra,
        IMAGE,
        MODEL,
        *engine,
        *engine_extra,
    ]


async def memory_used(conn) -> list[int]:
    query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
    return [int(line) for line in (await run(conn, query)).stdout.split()]


async def logs(conn, name: str = NAME) -> str:
    result = await run(conn, ["docker", "logs", name])
    return result.stdout + result.stderr


def state(sim: SimulatedCluster, host: str, name: str = NAME) -> tuple[str, int]:
    container = sim.hosts[host].container(name)
    assert container is not None
    return container.status, container.exit_code


async def start(conn, argv: list[str]) -> None:
    started = await run(conn, argv)
    assert started.exit_status == 0, started.stderr


async def test_it_serves_from_the_head_only_once_its_worker_joined(sim, ssh) -> None:
    head, worker = await ssh("sim-b"), await ssh("sim-a")
    port, master_port = free_port(), free_port()
    await start(head, node_run(0, port, master_port, spaced=True))

    # Alone, the head waits for its worker: no API (connections refused), no memory held.
    await asyncio.sleep(4 * STARTUP_DELAY)
    assert await health(port) is None
    assert state(sim, "sim-b") == ("running", 0)
    assert not sim.hosts["sim-b"].container(NAME).ready
    assert await memory_used(head) == [IDLE_MIB]
    assert "world_size=2 rank=0 local_rank=0" in await logs(head)

    await start(worker, node_run(1, port, master_port))
    await wait_healthy(port)
    async with httpx.AsyncClient() as client:
        models = (await client.get(f"http://127.0.0.1:{port}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [SERVED]

    # Each node holds its share on its own host.
    await wait_until(lambda: sim.hosts["sim-a"].container(NAME).ready)
    assert all(used > IDLE_MIB for used in await memory_used(head))
    assert all(used > IDLE_MIB for used in await memory_used(worker))
    worker_log = await logs(worker)
    assert (
        f"Launching vLLM (v0.11.0) headless multiproc executor, with head node address "
        f"127.0.0.1:{master_port} for torch.distributed process group." in worker_log
    )
    assert "Application startup complete." not in worker_log  # a worker serves nothing
    assert state(sim, "sim-a") == ("running", 0)


async def test_it_retries_a_worker_started_first_until_its_head_listens(sim, ssh) -> None:
    head, worker = await ssh("sim-b"), await ssh("sim-a")
    port, master_port = free_port(), free_port()
    await start(worker, node_run(1, port, master_port, spaced=True))

    refused = (
        f"[c10d] The client socket has failed to connect to [127.0.0.1]:{master_port} "
        "(errno: 111 - Connection refused)."
    )
    deadline = time.monotonic() + 10
    while refused not in await logs(worker):
        assert time.monotonic() < deadline, "the worker never tried its head"
        await asyncio.sleep(0.05)
    assert state(sim, "sim-a") == ("running", 0)

    await start(head, node_run(0, port, master_port))
    await wait_healthy(port)
    assert state(sim, "sim-a") == ("running", 0)


async def test_it_takes_the_head_down_with_status_1_when_the_worker_dies(sim, ssh) -> None:
    head, worker = await ssh("sim-b"), await ssh("sim-a")
    port, master_port = free_port(), free_port()
    await start(worker, node_run(1, port, master_port))
    await start(head, node_run(0, port, master_port))
    await wait_healthy(port)

    stopped = await run(worker, ["docker", "stop", "-t", "2", NAME])
    assert stopped.exit_status == 0, stopped.stderr

    statuses: list[int | None] = []
    deadline = time.monotonic() + 10
    while state(sim, "sim-b")[0] == "running":
        assert time.monotonic() < deadline, "the head kept running without its worker"
        statuses.append(await health(port))
        await asyncio.sleep(0.05)
    assert 503 in statuses  # /health said so before the server went away
    assert 200 not in statuses[statuses.index(503) :]
    assert state(sim, "sim-b") == ("exited", 1)
    head_log = await logs(head)
    assert "AsyncLLM output_handler failed: EngineDeadError" in head_log
    assert "NCCL error: remote process exited or there was a network error" in head_log


async def test_it_takes_the_worker_down_with_status_1_when_the_head_dies(sim, ssh) -> None:
    head, worker = await ssh("sim-b"), await ssh("sim-a")
    port, master_port = free_port(), free_port()
    await start(worker, node_run(1, port, master_port))
    await start(head, node_run(0, port, master_port))
    await wait_healthy(port)
    await wait_until(lambda: sim.hosts["sim-a"].container(NAME).ready)

    removed = await run(head, ["docker", "rm", "--force", NAME])  # SIGKILL, no goodbye
    assert removed.exit_status == 0, removed.stderr
    await wait_until(lambda: state(sim, "sim-a")[0] == "exited")
    assert state(sim, "sim-a") == ("exited", 1)
    assert "Failed to recv, got 0 bytes" in await logs(worker)


async def test_it_times_out_a_head_whose_worker_never_comes(sim, ssh) -> None:
    sim.hosts["sim-b"].docker.join_timeout = 1.0
    head = await ssh("sim-b")
    port, master_port = free_port(), free_port()
    await start(head, node_run(0, port, master_port))
    await wait_until(lambda: state(sim, "sim-b")[0] == "exited", timeout=10)
    assert state(sim, "sim-b") == ("exited", 1)
    assert (
        "torch.distributed.DistStoreError: Timed out after 601 seconds waiting for clients. "
        "1/2 clients joined." in await logs(head)
    )
    assert await health(port) is None  # it never listened


async def test_it_fails_a_second_node_without_headless_like_vllm(sim, ssh) -> None:
    sim.hosts["sim-b"].docker.join_timeout = 2.0
    head, worker = await ssh("sim-b"), await ssh("sim-a")
    port, master_port = free_port(), free_port()
    await start(head, node_run(0, port, master_port))
    await start(worker, node_run(1, port, master_port, headless=False))

    # It joins and loads, then its own engine trips vLLM's follower assertion...
    await wait_until(lambda: state(sim, "sim-a")[0] == "exited", timeout=10)
    assert state(sim, "sim-a") == ("exited", 1)
    assert "AssertionError: collective_rpc should not be called on follower node" in (
        await logs(worker)
    )
    # ...and the head, stuck in a collective with the dead node, never becomes healthy.
    assert await health(port) != 200
    await wait_until(lambda: state(sim, "sim-b")[0] == "exited", timeout=10)
    assert state(sim, "sim-b") == ("exited", 1)
    assert "Watchdog caught collective operation timeout" in await logs(head)


async def test_it_fails_a_head_whose_store_port_is_taken(sim, ssh) -> None:
    head = await ssh("sim-b")
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        master_port = taken.getsockname()[1]
        await start(head, node_run(0, port, master_port))
        await wait_until(lambda: state(sim, "sim-b")[0] == "exited", timeout=10)
    assert state(sim, "sim-b") == ("exited", 1)
    assert f"failed to bind to 0.0.0.0:{master_port} (errno: 98" in await logs(head)


@pytest.mark.parametrize(
    ("engine_extra", "expected", "status"),
    [
        (
            ("--distributed-executor-backend=ray",),
            "ValueError: nnodes > 1 can only be set when distributed executor backend is "
            "mp, uni or external_launcher.",
            1,
        ),
        (
            ("--nnodes", "two"),
            "vllm serve: error: argument --nnodes/-n: invalid int value: 'two'",
            2,
        ),
    ],
)
async def test_it_refuses_a_launch_vllm_cannot_run(
    sim, ssh, engine_extra, expected, status
) -> None:
    head = await ssh("sim-b")
    await start(head, node_run(0, free_port(), free_port(), engine_extra=engine_extra))
    await wait_until(lambda: state(sim, "sim-b")[0] == "exited", timeout=10)
    assert state(sim, "sim-b") == ("exited", status)
    assert expected in await logs(head)


async def test_it_fails_the_run_like_docker_on_a_device_the_host_lacks(sim, ssh) -> None:
    conn = await ssh("sim-a")
    argv = node_run(0, free_port(), free_port(), "--device=/dev/infiniband")
    refused = await run(conn, argv)
    assert (refused.exit_status, refused.stdout, refused.stderr.splitlines()[-2:]) == (
        125,
        "",
        [
            "docker: Error response from daemon: error gathering device information while "
            'adding custom device "/dev/infiniband": no such file or directory.',
            "See 'docker run --help'.",
        ],
    )
    # dockerd refuses the start, not the create: the container is left created.
    listed = await run(conn, ["docker", "ps", "--all", "--format", "{{.Names}} {{.State}}"])
    assert listed.stdout == f"{NAME} created\n"

    bad = await run(conn, [*argv[:2], "--device=infiniband", *argv[2:]])
    assert (bad.exit_status, bad.stderr.splitlines()[0]) == (
        125,
        'invalid argument "infiniband" for "--device" flag: infiniband is not an absolute path',
    )


async def test_it_gives_a_spark_its_connectx_devices(sim, ssh) -> None:
    conn = await ssh("sim-gb10")
    ok = await run(conn, ["docker", "run", "-d", "--name=ib", "--device=/dev/infiniband", IMAGE])
    assert ok.exit_status == 0, ok.stderr
    one = ["docker", "run", "-d", "--name=uverbs", "--device=/dev/infiniband/uverbs0:rw", IMAGE]
    assert (await run(conn, one)).exit_status == 0
    shown = await run(conn, ["docker", "inspect", "--format", "{{json .HostConfig.Devices}}", "ib"])
    assert json.loads(shown.stdout) == [
        {
            "PathOnHost": "/dev/infiniband",
            "PathInContainer": "/dev/infiniband",
            "CgroupPermissions": "rwm",
        }
    ]
    missing = await run(
        conn, ["docker", "run", "-d", "--name=nine", "--device=/dev/infiniband/uverbs9", IMAGE]
    )
    assert missing.exit_status == 125
    assert 'adding custom device "/dev/infiniband/uverbs9": no such file' in missing.stderr


@pytest.fixture
def control_pair(tmp_path):
    cluster = ClusterThread(
        tmp_path / "sim", startup_delay=STARTUP_DELAY, scenario="spark-control-pair"
    ).start()
    try:
        yield cluster
    finally:
        cluster.stop(kill_containers=True)


def test_it_runs_one_model_across_both_sparks_in_the_control_pair_scenario(control_pair, tmp_path):
    config = yaml.safe_load(control_pair.config_path.read_text())
    hosts = {h["name"]: h for h in config["hosts"]}
    assert list(hosts) == ["spark-1", "spark-2"]
    for host in hosts.values():
        assert (host["cluster_address"], host["cluster_interface"]) == ("127.0.0.1", "enp1s0f1np1")
    services = {s["host"]: s for s in config["services"]}
    port = int(services["spark-1"]["base_url"].rsplit(":", 1)[1])

    head = control_pair.container("spark-1", SPARK_CONTAINER)
    worker = control_pair.container("spark-2", SPARK_CONTAINER)
    assert head is not None and worker is not None
    assert worker.created <= head.created  # the launcher starts the worker first
    for node in (head, worker):
        assert (node.image, node.network, node.labels, node.ports, node.status) == (
            SPARK_IMAGE,
            "host",
            {},
            [],
            "running",
        )
        assert node.options["devices"][0]["path_on_host"] == "/dev/infiniband"
        assert "VLLM_HOST_IP" in node.env_names
    assert "--headless" in worker.args and "--headless" not in head.args
    assert worker.args[worker.args.index("--node-rank") + 1] == "1"
    assert head.args[head.args.index("--node-rank") + 1] == "0"
    assert head.args[head.args.index("--port") + 1] == str(port)

    deadline = time.monotonic() + 15
    while True:
        try:
            models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            if models.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the head never served"
        time.sleep(0.1)
    assert [m["id"] for m in models.json()["data"]] == [SPARK_MODEL]
    # Both nodes hold memory on their own Spark (unified memory: MemAvailable drops).
    for name in ("spark-1", "spark-2"):
        board = control_pair.hosts[name].board
        wait_for(lambda b=board: b.available_kb() < 100_000_000)

    # A restarted simulator does not run the launcher again.
    control_pair.stop()
    again = ClusterThread(
        tmp_path / "sim", startup_delay=STARTUP_DELAY, scenario="spark-control-pair"
    ).start()
    try:
        assert [c.name for c in again.containers("spark-2")] == [SPARK_CONTAINER]
    finally:
        again.stop(kill_containers=True)


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_it_offers_the_control_pair_scenario_in_simcluster():
    # The choice is accepted (it fails later, on the host count it cannot combine with).
    with pytest.raises(CommandError, match="--hosts and --scenario cannot be combined"):
        call_command("simcluster", "--scenario", "spark-control-pair", "--hosts", "2")


async def test_it_passes_a_launcher_env_devices_and_flags_through_the_control_api(tmp_path) -> None:
    cluster = SimulatedCluster(tmp_path / "sim", startup_delay=STARTUP_DELAY, control=True)
    await cluster.start()
    try:
        body = {
            "name": "node",
            "image": SPARK_IMAGE,
            "port": free_port(),
            "env": ["NCCL_SOCKET_IFNAME=enp1s0f1np1"],
            "devices": ["/dev/infiniband"],
            "serve_args": ["--enforce-eager"],
        }
        async with httpx.AsyncClient(base_url=cluster.control_url, timeout=30) as client:
            refused = await client.post("/hosts/sim-a/containers", json=body)
            assert refused.status_code == 409
            assert "error gathering device information" in refused.json()["error"]
            started = await client.post("/hosts/sim-gb10/containers", json=body)
            assert started.status_code == 200, started.text
            bad = await client.post("/hosts/sim-gb10/containers", json={**body, "env": ["X"]})
            assert bad.status_code == 400
        node = cluster.hosts["sim-gb10"].container("node")
        assert node is not None and node.args[-1] == "--enforce-eager"
        assert node.env_names == ["NCCL_SOCKET_IFNAME"]
    finally:
        await cluster.stop(kill_containers=True)

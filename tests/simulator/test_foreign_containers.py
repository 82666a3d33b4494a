"""Containers a script started: the control API, and what `docker ps` shows of them.

A Spark launcher runs `docker run --network host ... vllm serve MODEL --port 8888`: such
a container publishes nothing (docker/cli lists published ports only), carries no
label, and still answers on its port. `docker stop` takes the flags of the simulated
release (docker/cli cli/command/container/stop.go).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml
from django.core.management import CommandError, call_command

from arbiter.engine.swaps.docker_argv import parse_ps
from arbiter.simulator import docker_lifecycle
from arbiter.simulator.cluster import ClusterThread, reservable_port
from arbiter.simulator.scenarios import SPARK_CONTAINER, SPARK_IMAGE
from arbiter.simulator.scripted import ScriptedRun, start_scripted
from tests.simulator.client import connect, run, wait_until

IMAGE = "nvcr.io/nvidia/vllm:25.09-py3"


def wait_served(port: int, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"nothing answered on port {port}"
        time.sleep(0.1)


def test_it_starts_and_lists_a_host_network_container_through_the_control_api(
    sim_cluster: ClusterThread,
):
    url = sim_cluster.control_url
    port = reservable_port()
    body = {"name": "vllm_node", "image": IMAGE, "network": "host", "port": port}
    started = httpx.post(f"{url}/hosts/sim-b/containers", json=body, timeout=30)
    assert started.status_code == 200, started.text
    assert started.json() | {"id": "x"} == {
        "name": "vllm_node",
        "id": "x",
        "image": IMAGE,
        "state": "running",
        "labels": {},
        "network": "host",
        "ports": [port],
        "published": [],
        "managed_by_arbiter": False,
    }
    # A real (simulated) vLLM answers on the port itself: nothing maps it.
    assert [m["id"] for m in wait_served(port)["data"]] == ["Qwen/Qwen3-0.6B"]

    listed = httpx.get(f"{url}/hosts/sim-b/containers", timeout=10).json()["containers"]
    assert [(c["name"], c["state"], c["network"]) for c in listed] == [
        ("vllm_node", "running", "host")
    ]
    # The script's command line went through the host's docker, like any other.
    node = sim_cluster.container("sim-b", "vllm_node")
    assert node is not None
    assert node.args == [
        "vllm",
        "serve",
        "Qwen/Qwen3-0.6B",
        "--port",
        str(port),
        "--gpu-memory-utilization",
        "0.5",
    ]
    assert (node.network, node.ports, node.labels) == ("host", [], {})


def test_it_says_no_like_docker_through_the_control_api(sim_cluster: ClusterThread):
    url = sim_cluster.control_url
    port = reservable_port()
    body = {"name": "vllm_node", "image": IMAGE, "port": port}
    assert httpx.post(f"{url}/hosts/sim-a/containers", json=body, timeout=30).status_code == 200
    again = httpx.post(f"{url}/hosts/sim-a/containers", json=body, timeout=30)
    assert again.status_code == 409
    assert 'The container name "/vllm_node" is already in use' in again.json()["error"]
    bad = httpx.post(f"{url}/hosts/sim-a/containers", json={**body, "port": "8888"}, timeout=5)
    assert bad.status_code == 400 and "port" in bad.json()["error"]
    unknown = httpx.post(f"{url}/hosts/sim-a/containers", json={**body, "gpus": 1}, timeout=5)
    assert unknown.status_code == 400 and "unknown fields: gpus" in unknown.json()["error"]
    assert httpx.get(f"{url}/hosts/nope/containers", timeout=5).status_code == 404


async def test_it_shows_no_ports_and_the_host_network_in_docker_ps(sim) -> None:
    port = reservable_port()
    host = sim.hosts["sim-a"]
    await start_scripted(host, ScriptedRun("vllm_node", IMAGE, port, "host"))
    conn = await connect(sim, "sim-a")
    try:
        listed = await run(conn, ["docker", "ps", "--all", "--no-trunc", "--format={{json .}}"])
        row = json.loads(listed.stdout.splitlines()[0])
        assert (row["Names"], row["Networks"], row["Ports"], row["Labels"]) == (
            "vllm_node",
            "host",
            "",
            "",
        )
        [info] = parse_ps(listed.stdout)
        assert info.host_network and info.host_ports == () and not info.managed
        assert f"--port {port}" in json.loads(info.command)
        labelled = await run(
            conn,
            [
                "docker",
                "run",
                "--detach",
                "--name=mine",
                "--label=arbiter.swap=7",
                "--label=arbiter.managed=true",
                IMAGE,
                "vllm",
                "serve",
                "m",
            ],
        )
        assert labelled.exit_status == 0, labelled.stderr
        await wait_until(lambda: host.container("mine") is not None)
        listed = await run(
            conn, ["docker", "ps", "--filter=name=mine", "--no-trunc", "--format={{.Labels}}"]
        )
        # docker/cli sorts the k=v pairs (formatter/container.go ContainerContext.Labels).
        assert listed.stdout == "arbiter.managed=true,arbiter.swap=7\n"
    finally:
        conn.close()


async def test_it_takes_the_docker_stop_flags_of_the_simulated_release(sim, monkeypatch) -> None:
    host = sim.hosts["sim-a"]
    conn = await connect(sim, "sim-a")
    try:
        for name in ("ca", "cb", "cc"):
            started = await run(
                conn, ["docker", "run", "-d", f"--name={name}", IMAGE, "vllm", "serve", "m"]
            )
            assert started.exit_status == 0, started.stderr
        # 27.x: -t is --time; --timeout does not exist yet.
        stopped = await run(conn, ["docker", "stop", "-t", "1", "--", "ca"])
        assert (stopped.exit_status, stopped.stdout) == (0, "ca\n")
        unknown = await run(conn, ["docker", "stop", "--timeout=1", "cb"])
        assert unknown.exit_status == 125
        assert unknown.stderr.startswith("unknown flag: --timeout\n")
        # 28.0 on: -t is --timeout; --time still works but says it is deprecated.
        monkeypatch.setattr(docker_lifecycle, "ENGINE_VERSION", "28.5.1")
        old = await run(conn, ["docker", "stop", "--time=1", "cb"])
        assert (old.exit_status, old.stdout) == (
            0,
            "Flag --time has been deprecated, use --timeout instead\ncb\n",
        )
        both = await run(conn, ["docker", "stop", "--time=1", "--timeout=1", "cc"])
        assert both.exit_status == 1
        assert both.stderr == "conflicting options: cannot specify both --timeout and --time\n"
        assert host.container("cc").running
        assert (await run(conn, ["docker", "stop", "-t", "1", "cc"])).exit_status == 0
    finally:
        conn.close()


@pytest.fixture
def spark_pair(tmp_path):
    cluster = ClusterThread(tmp_path / "sim", startup_delay=0.3, scenario="spark-pair").start()
    try:
        yield cluster
    finally:
        cluster.stop(kill_containers=True)


def test_it_runs_vllm_node_on_each_service_port_in_the_spark_pair_scenario(spark_pair, tmp_path):
    config = yaml.safe_load(spark_pair.config_path.read_text())
    assert [h["name"] for h in config["hosts"]] == ["spark-1", "spark-2"]
    for service in config["services"]:
        port = int(service["base_url"].rsplit(":", 1)[1])
        node = spark_pair.container(service["host"], SPARK_CONTAINER)
        assert node is not None and node.running
        assert (node.image, node.network, node.labels, node.ports) == (
            SPARK_IMAGE,
            "host",
            {},
            [],
        )
        assert wait_served(port)["data"][0]["id"] == "Qwen/Qwen3-0.6B"
        host = spark_pair.hosts[service["host"]]
        assert [g.spec.name for g in host.board.readings()] == ["NVIDIA GB10"]
        assert (host.spec.uname_machine, host.daemon.image_archs[SPARK_IMAGE]) == (
            "aarch64",
            "arm64",
        )
        assert "adopt_containers" not in service  # Arbiter is not told to take them over yet
    # A restarted simulator does not run the scripts again.
    spark_pair.stop()
    again = ClusterThread(tmp_path / "sim", startup_delay=0.3, scenario="spark-pair").start()
    try:
        assert [c.name for c in again.containers("spark-1")] == [SPARK_CONTAINER]
    finally:
        again.stop(kill_containers=True)


def test_it_lets_simcluster_take_a_scenario_but_not_with_a_host_count():
    with pytest.raises(CommandError, match="--hosts and --scenario cannot be combined"):
        call_command("simcluster", "--scenario", "spark-pair", "--hosts", "2")
    with pytest.raises(CommandError, match="invalid choice: 'spark-trio'"):
        call_command("simcluster", "--scenario", "spark-trio")

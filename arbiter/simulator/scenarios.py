"""Ready-made clusters: which hosts, and what already runs on them before Arbiter comes.

`spark-pair` ("Spark Control pair"): two DGX Sparks (GB10, 128 GB unified memory,
aarch64) that a cluster launcher script set up before Arbiter: each runs a `vllm_node`
container from NVIDIA's NGC vLLM image with `--network host`, serving on the port the
host's vLLM service in the inventory points at. The containers carry no `arbiter.*`
label, so a swap there fails pre-flight until the inventory adopts them
(`adopt_containers: [vllm_node]`).

On real Sparks that port is 8888 on both hosts. The simulated hosts share one loopback
interface, so each gets its own free port instead; `docker ps` still shows no ports for
the containers, and the services' base URLs point at the ports the containers listen on.

`spark-control-pair`: the same two Sparks, but the launcher runs ONE model across both
with vLLM's native multi-node mode (docs.vllm.ai "Parallelism and Scaling": `vllm serve
MODEL --tensor-parallel-size 2 --nnodes 2 --node-rank R --master-addr HEAD --master-port
P`, `--headless` on the worker): `vllm_node` on spark-2 is the worker (node rank 1,
started first), `vllm_node` on spark-1 the head, serving on spark-1's vLLM service port.
Each node gets its address and the ConnectX-7 interface in the environment and
/dev/infiniband, as two-Spark launchers pass them. Both hosts' inventory entries carry
`cluster_address` and `cluster_interface`, in both scenarios.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from arbiter.simulator.gpus import GB10
from arbiter.simulator.host import SPARK_CLUSTER_INTERFACE, HostSpec, ServiceSpec
from arbiter.simulator.scripted import ScriptedRun, start_scripted

if TYPE_CHECKING:
    from arbiter.simulator.cluster import SimulatedCluster

SPARK_PAIR = "spark-pair"
SPARK_CONTROL_PAIR = "spark-control-pair"
SCENARIOS = ("default", SPARK_PAIR, SPARK_CONTROL_PAIR)
SPARK_CONTAINER = "vllm_node"
# The image of NVIDIA's DGX Spark vLLM playbook (build.nvidia.com/spark/vllm).
SPARK_IMAGE = "nvcr.io/nvidia/vllm:25.09-py3"
SPARK_MODEL = "Qwen/Qwen3-0.6B"
SPARK_UTILIZATION = 0.5
SPARK_MEM_TOTAL_KB = 125_000_000  # what /proc/meminfo shows on a DGX Spark
SCENE_MARKER = "scenario.json"  # in the data dir: the scene was set there once
CLUSTER_ADDRESS = "127.0.0.1"  # every simulated host listens on loopback
SPARK_HEAD, SPARK_WORKER = "spark-1", "spark-2"


def spark_pair_hosts() -> list[HostSpec]:
    """spark-1 and spark-2: one GB10 each beside an Arm CPU, one vLLM service each."""
    return [
        HostSpec(
            name,
            (GB10,),
            mem_total_kb=SPARK_MEM_TOTAL_KB,
            machine="aarch64",
            services=(ServiceSpec(f"{name}-vllm"),),
            cluster_address=CLUSTER_ADDRESS,
            cluster_interface=SPARK_CLUSTER_INTERFACE,
        )
        for name in (SPARK_HEAD, SPARK_WORKER)
    ]


def hosts_for(scenario: str | None) -> list[HostSpec] | None:
    """The hosts a scenario brings (None: the default hosts)."""
    if scenario in (None, "", "default"):
        return None
    if scenario in (SPARK_PAIR, SPARK_CONTROL_PAIR):
        return spark_pair_hosts()
    raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")


async def set_scene(cluster: SimulatedCluster, scenario: str | None) -> None:
    """Start what the scenario's scripts started, once per data dir: a restarted
    simulator finds them running, or finds them gone when Arbiter took them over."""
    marker = cluster.data_dir / SCENE_MARKER
    if scenario not in (SPARK_PAIR, SPARK_CONTROL_PAIR) or marker.exists():
        return
    if scenario == SPARK_CONTROL_PAIR:
        await start_control_pair(cluster)
        marker.write_text(json.dumps({"scenario": scenario}) + "\n")
        return
    for name, host in cluster.hosts.items():
        port = cluster.service_ports[f"{name}-vllm"]
        await start_scripted(
            host,
            ScriptedRun(
                SPARK_CONTAINER,
                SPARK_IMAGE,
                port,
                network="host",
                model=SPARK_MODEL,
                gpu_memory_utilization=SPARK_UTILIZATION,
            ),
        )
    marker.write_text(json.dumps({"scenario": scenario}) + "\n")


def control_pair_runs(port: int, master_port: int) -> list[tuple[str, ScriptedRun]]:
    """(host, run) of the launcher's two-node command, worker first as launchers do."""
    runs = []
    for rank, name in enumerate((SPARK_HEAD, SPARK_WORKER)):
        serve_args = ["--tensor-parallel-size", "2", "--distributed-executor-backend", "mp"]
        serve_args += ["--nnodes", "2", "--node-rank", str(rank)]
        serve_args += ["--master-addr", CLUSTER_ADDRESS, "--master-port", str(master_port)]
        if rank:
            serve_args.append("--headless")
        env = [f"VLLM_HOST_IP={CLUSTER_ADDRESS}"]
        env += [
            f"{var}={SPARK_CLUSTER_INTERFACE}"
            for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
        ]
        run = ScriptedRun(
            SPARK_CONTAINER,
            SPARK_IMAGE,
            port,
            network="host",
            model=SPARK_MODEL,
            gpu_memory_utilization=SPARK_UTILIZATION,
            env=tuple(env),
            devices=("/dev/infiniband",),
            serve_args=tuple(serve_args),
        )
        runs.append((name, run))
    return runs[::-1]


async def start_control_pair(cluster: SimulatedCluster) -> None:
    # The head's rendezvous port is any free one: simulated clusters share loopback.
    runs = control_pair_runs(cluster.service_ports[f"{SPARK_HEAD}-vllm"], cluster.unused_port())
    for name, run in runs:
        await start_scripted(cluster.hosts[name], run)

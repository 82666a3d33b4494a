"""Multi-node models: one model served across several hosts as one unit (two DGX Sparks).

A catalog model with `tensor_parallel_hosts: [head, worker, ...]` runs one container per
host, in vLLM's native multi-node mode (vLLM docs, "Parallelism and Scaling", multi-node
deployment with native multiprocessing):

    vllm serve MODEL --tensor-parallel-size N --nnodes K --node-rank R \\
        --master-addr HEAD_IP --master-port P [--headless]

Rank 0, the head, runs the API server on the head host's vLLM service port; the other
ranks run `--headless` (no API server) and join the head over the interconnect. Every
container runs with host networking (the ranks talk over the QSFP link, not through
published ports), with the host's interconnect address and interface in its environment
(`VLLM_HOST_IP`, `NCCL_SOCKET_IFNAME`, `GLOO_SOCKET_IFNAME`, `UCX_NET_DEVICES`), as
NVIDIA's DGX Spark multi-node playbook sets them (build.nvidia.com/spark/vllm/multi-node).

`tensor_parallel_size` is the total over all hosts (vLLM's `--tensor-parallel-size` counts
every rank), so each host gives `tensor_parallel_size / K` GPUs.

A swap of such a model holds every host of the pair (`SwapHost`), and a pair that runs
is one unit: a swap that would touch only some of its hosts is refused (409) while it
runs, so a worker is never pulled out from under a head.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from arbiter.engine.host_memory import model_sleeps
from arbiter.errors import Conflict, InvalidInput
from arbiter.models import Host, Service, Swap, SwapHost
from catalog.launch_rules import INTERFACE_ENV
from catalog.models import CatalogModel

# The environment a node's container gets from its host's inventory entry (the catalog
# may not set these: catalog.launch_rules).
HOST_IP_ENV = "VLLM_HOST_IP"


@dataclass(frozen=True)
class NodeRole:
    """One host's part in a multi-node launch."""

    rank: int
    nnodes: int
    master_addr: str  # the head's cluster_address
    master_port: int
    host_ip: str  # this host's cluster_address
    interface: str  # this host's cluster_interface ("" when not set)
    api_port: int  # the head service's port: where the head's API server listens

    @property
    def head(self) -> bool:
        return self.rank == 0

    def container_env(self) -> list[str]:
        """`--env=NAME=VALUE` items for this host (values from the inventory, validated)."""
        items = [f"--env={HOST_IP_ENV}={self.host_ip}"]
        if self.interface:
            items += [f"--env={name}={self.interface}" for name in INTERFACE_ENV]
        return items

    def engine_flags(self) -> list[str]:
        flags = [
            "--distributed-executor-backend=mp",
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.rank}",
            f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}",
        ]
        if not self.head:
            flags.append("--headless")
        return flags


def is_multi_node(model: CatalogModel) -> bool:
    return len(model.tensor_parallel_hosts or []) > 1


def sleep_refusal(model: CatalogModel) -> str:
    """Why a multi-node model may not sleep ("" when it does not ask to)."""
    if not model_sleeps(model):
        return ""
    return (
        f"{model.key} asks for sleep mode (--enable-sleep-mode or idle_unload_seconds) but "
        "runs across hosts: Arbiter loads and unloads a multi-node model only by swapping "
        "the whole pair, never by sleeping its head; remove it"
    )


def pair_host_rows(model: CatalogModel) -> list[Host]:
    """The model's hosts in rank order; 422 when one is gone from the inventory."""
    names = list(model.tensor_parallel_hosts or [])
    rows = {h.name: h for h in Host.objects.filter(name__in=names, in_inventory=True)}
    missing = [name for name in names if name not in rows]
    if missing:
        raise InvalidInput(
            f"tensor_parallel_hosts: {model.key} runs across {', '.join(names)}, but "
            f"{', '.join(missing)} is not in the inventory",
            field="tensor_parallel_hosts",
        )
    return [rows[name] for name in names]


def node_roles(model: CatalogModel, hosts: list[Host], api_port: int) -> list[NodeRole]:
    """The role of each host (rank order); 422 when a host has no cluster_address."""
    for host in hosts:
        if not host.cluster_address:
            raise InvalidInput(
                f"tensor_parallel_hosts: host {host.name} has no cluster_address in the "
                "inventory (its address on the interconnect between the hosts)",
                field="tensor_parallel_hosts",
            )
    head = hosts[0]
    return [
        NodeRole(
            rank=rank,
            nnodes=len(hosts),
            master_addr=head.cluster_address,
            master_port=int(settings.ARBITER_MULTI_NODE_MASTER_PORT),
            host_ip=host.cluster_address,
            interface=host.cluster_interface,
            api_port=api_port,
        )
        for rank, host in enumerate(hosts)
    ]


@dataclass(frozen=True)
class RunningPair:
    """The multi-node model a host last served as part of a pair, while it still runs."""

    swap_id: int
    model_key: str
    served_name: str
    hosts: tuple[str, ...]
    service_name: str


def running_pair_on(host: Host) -> RunningPair | None:
    """The pair this host serves in, if its last complete swap was a multi-node one and
    that pair's head service has not been seen down or serving something else since."""
    # Asked for every host card on every sampling tick: the common answer (the last swap
    # ran on this host alone) costs two narrow queries; the swap itself is read only
    # for a pair.
    last_swap_id = (
        SwapHost.objects.filter(host=host, swap__state=Swap.COMPLETE, swap__dry_run=False)
        .order_by("-swap__finished_at")
        .values_list("swap_id", flat=True)
        .first()
    )
    if last_swap_id is None:
        return None
    hosts = list(
        SwapHost.objects.filter(swap_id=last_swap_id)
        .order_by("node_rank")
        .values_list("host__name", flat=True)
    )
    if len(hosts) < 2:
        return None
    swap = Swap.objects.select_related("service", "model").get(pk=last_swap_id)
    service: Service | None = swap.service
    served = swap.model.served_name if swap.model else ""
    if service is None or service.health == "down":
        return None
    if service.loaded_model and served and service.loaded_model != served:
        return None  # the head's service serves another model now
    return RunningPair(
        swap.pk, swap.model_key, served, tuple(hosts), service.name if service else ""
    )


def pair_conflict(model: CatalogModel, hosts: list[Host]) -> Conflict | None:
    """409 when the swap would touch some, not all, hosts of a pair that runs."""
    wanted = {h.name for h in hosts}
    for host in hosts:
        pair = running_pair_on(host)
        if pair is None or set(pair.hosts) <= wanted:
            continue
        return Conflict(
            f"host {host.name} serves {pair.model_key!r} together with "
            f"{', '.join(h for h in pair.hosts if h != host.name)} (service "
            f"{pair.service_name}, swap {pair.swap_id}): a swap must replace the whole "
            f"pair ({', '.join(pair.hosts)}) — swap a model that runs across those hosts",
            field="host",
            pair_swap_id=pair.swap_id,
            service=pair.service_name,
        )
    return None

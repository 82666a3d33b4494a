"""The simulated cluster: a few `SimulatedHost`s and the files Arbiter needs to reach them.

On start it writes, under the data dir: the client key pair (made once, kept),
`known_hosts` for the hosts' keys, `cluster.yaml` (the inventory Arbiter loads,
marked `simulated: true`) and `control.json` (the control API's URL). SSH ports and
service ports are remembered in `ports.json`, so a restarted simulator comes back
where Arbiter and the still-running containers expect it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import yaml

from arbiter.simulator.control import ControlServer
from arbiter.simulator.demo_catalog import write_demo_catalog
from arbiter.simulator.dockerd import Container
from arbiter.simulator.gpus import GB10, H100_80GB, RTX_6000_ADA
from arbiter.simulator.host import CommandRecord, HostSpec, ServiceSpec, SimulatedHost
from arbiter.simulator.scenarios import hosts_for, set_scene
from arbiter.simulator.scripted import ScriptedRun, start_scripted
from arbiter.simulator.timing import scale_from_env

T = TypeVar("T")
VRAM_MARGIN_MIB = 2048
# Every default host has a cluster_address (all simulated hosts share loopback), so any
# two of them can run one multi-node model; none names a cluster_interface (no NCCL
# interface pinning), as on hosts joined by one ordinary network.
LOOPBACK = "127.0.0.1"
DEFAULT_HOSTS = [
    HostSpec(
        "sim-a", (RTX_6000_ADA, RTX_6000_ADA), mem_total_kb=263_808_756, cluster_address=LOOPBACK
    ),
    HostSpec(
        "sim-b",
        (H100_80GB,),
        mem_total_kb=527_938_608,
        services=(
            ServiceSpec("sim-b-vllm"),
            ServiceSpec("sim-b-tts", "http", ("tts",), ("/v1/audio/speech",), disabled=True),
        ),
        cluster_address=LOOPBACK,
    ),
    # DGX Spark: 128 GB of unified memory, shared by the CPU and the GB10's GPU.
    HostSpec("sim-gb10", (GB10,), mem_total_kb=125_000_000, cluster_address=LOOPBACK),
]
GB10_EVERY = 8  # generated clusters: every 8th host is a DGX Spark


def generated_hosts(count: int) -> list[HostSpec]:
    """`count` bare hosts for load tests: `sim-001`, `sim-002`, ... with one GPU each.

    Every 8th is GB10-like (unified memory), the rest have one discrete GPU. They list
    no services, so a benchmark measures sampling without probes or containers.
    """
    return [
        HostSpec(f"sim-{n:03d}", (GB10,), mem_total_kb=125_000_000, services=())
        if n % GB10_EVERY == 0
        else HostSpec(f"sim-{n:03d}", (RTX_6000_ADA,), mem_total_kb=263_808_756, services=())
        for n in range(1, count + 1)
    ]


# Where the kernel takes the source ports of outgoing connections. A service port is
# reserved long before a swap starts a container listening on it; were it in this range,
# any outgoing connection meanwhile (a probe, an SSH session, a test's HTTP client) could
# take it, and the swap would fail with docker's "port is already allocated".
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_SERVICE_PORT = 20000


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = EPHEMERAL_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def reservable_port() -> int:
    """A free port outside the ephemeral range (any free port if that range is all)."""
    low, high = ephemeral_range()
    outside = [
        *range(LOWEST_SERVICE_PORT, min(low, 65536)),
        *range(max(high + 1, LOWEST_SERVICE_PORT), 65536),
    ]
    for port in random.sample(outside, min(len(outside), 200)):
        if port_is_free(port):
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _IndentedDumper(yaml.SafeDumper):
    """Lists indented under their key (`hosts:\\n  - name:`), as people write YAML."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    # Short lists of scalars read best inline (`capabilities: [llm]`); mappings stay block.
    flow = all(not isinstance(item, dict | list) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_IndentedDumper.add_representer(list, _represent_list)


class SimulatedCluster:
    """The simulated hosts of one data dir, plus the files that describe them."""

    def __init__(
        self,
        data_dir: Path,
        hosts: list[HostSpec] | None = None,
        startup_delay: float = 2.0,
        release_delay: float = 0.5,
        control: bool = True,
        scenario: str | None = None,
        time_scale: float | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        # A scenario (arbiter.simulator.scenarios, e.g. "spark-pair") brings its hosts and
        # what its scripts already started there.
        self.scenario = scenario
        self.specs = list(hosts or hosts_for(scenario) or DEFAULT_HOSTS)
        self.startup_delay = startup_delay
        self.release_delay = release_delay
        # Realistic pull / download / load durations × this (ARBITER_SIM_TIME_SCALE when
        # not given); None keeps every tool quick (arbiter.simulator.timing).
        self.time_scale = time_scale if time_scale is not None else scale_from_env()
        self.with_control = control
        self.client_key_path = self.data_dir / "client_key"
        self.known_hosts_path = self.data_dir / "known_hosts"
        self.config_path = self.data_dir / "cluster.yaml"
        self.ports_path = self.data_dir / "ports.json"
        self.catalog_path = self.data_dir / "catalog.yaml"  # the demo catalog, see start()
        self.hosts: dict[str, SimulatedHost] = {}
        self.service_ports: dict[str, int] = {}
        self.control: ControlServer | None = None

    @property
    def control_url(self) -> str | None:
        return self.control.url if self.control else None

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_client_key()
        remembered = self._read_ports()
        for spec in self.specs:
            port = remembered.get("ssh", {}).get(spec.name, 0)
            host = SimulatedHost(
                spec,
                self.data_dir,
                startup_delay=self.startup_delay,
                release_delay=self.release_delay,
                port=port if port and port_is_free(port) else 0,
                time_scale=self.time_scale,
            )
            await host.start()
            self.hosts[spec.name] = host
            for service in spec.service_specs():
                # A remembered port may be busy with our own running container: keep it.
                kept = remembered.get("services", {}).get(service.name)
                self.service_ports[service.name] = kept or self.unused_port()
        self._write_ports()
        self.write_known_hosts()
        self.write_config()
        self.catalog_path = write_demo_catalog(self.data_dir, self.hosts)
        await set_scene(self, self.scenario)
        if self.with_control:
            self.control = ControlServer(self, asyncio.get_running_loop())
            self.control.start()
            (self.data_dir / "control.json").write_text(json.dumps({"url": self.control.url}))

    def unused_port(self) -> int:
        """A free port no other service of this cluster was given: nothing listens on a
        reserved port yet, so the OS may hand the same free port out twice in a row."""
        taken = set(self.service_ports.values())
        while (port := reservable_port()) in taken:
            pass
        return port

    async def stop(self, kill_containers: bool = False) -> None:
        if self.control is not None:
            self.control.stop()
            self.control = None
        await asyncio.gather(*(h.stop(kill_containers) for h in self.hosts.values()))

    async def __aenter__(self) -> SimulatedCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(kill_containers=True)

    # -- files -------------------------------------------------------------------------
    def _ensure_client_key(self) -> None:
        if self.client_key_path.exists():
            return
        key = asyncssh.generate_private_key("ssh-ed25519", comment="arbiter@simulated-cluster")
        key.write_private_key(self.client_key_path)
        os.chmod(self.client_key_path, 0o600)
        key.write_public_key(self.client_key_path.with_name("client_key.pub"))

    def _read_ports(self) -> dict[str, dict[str, int]]:
        try:
            return json.loads(self.ports_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _write_ports(self) -> None:
        ports = {
            "ssh": {name: host.port for name, host in self.hosts.items()},
            "services": self.service_ports,
        }
        self.ports_path.write_text(json.dumps(ports, indent=1))

    def write_known_hosts(self) -> None:
        """One `[127.0.0.1]:PORT ssh-ed25519 AAAA...` line per host (current keys)."""
        lines = [f"[127.0.0.1]:{h.port} {h.host_key_line()}\n" for h in self.hosts.values()]
        self.known_hosts_path.write_text("".join(lines))

    def write_config(self) -> None:
        hosts, services = [], []
        for spec in self.specs:
            host = self.hosts[spec.name]
            hosts.append(
                {
                    "name": spec.name,
                    "address": "127.0.0.1",
                    "ssh_user": spec.ssh_user,
                    "ssh_port": host.port,
                    "ssh_key": str(self.client_key_path),
                    "known_hosts": str(self.known_hosts_path),
                    "sampling": "ssh",
                    "vram_budget_mib": spec.vram_budget_mib,
                    "vram_margin_mib": VRAM_MARGIN_MIB,
                }
            )
            if spec.cluster_address:
                hosts[-1]["cluster_address"] = spec.cluster_address
            if spec.cluster_interface:
                hosts[-1]["cluster_interface"] = spec.cluster_interface
            for service in spec.service_specs():
                services.append(
                    {
                        "name": service.name,
                        "host": spec.name,
                        "kind": service.kind,
                        "base_url": f"http://127.0.0.1:{self.service_ports[service.name]}",
                        "health_path": "/health",
                        "capabilities": list(service.capabilities),
                        "request_paths": list(service.request_paths),
                        "vram_resident_mib": 0,
                        "can_coexist_with": [],
                        "disabled": service.disabled,
                    }
                )
        document = {"simulated": True, "hosts": hosts, "services": services}
        text = yaml.dump(
            document, Dumper=_IndentedDumper, sort_keys=False, default_flow_style=False, width=1000
        )
        header = (
            "# Written by the simulated cluster (arbiter.simulator); rewritten on each start.\n"
        )
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(header + text)
        tmp.replace(self.config_path)


class ClusterThread:
    """A `SimulatedCluster` on its own event loop in a daemon thread, for sync callers."""

    def __init__(self, data_dir: Path, **kwargs: Any) -> None:
        self.cluster = SimulatedCluster(data_dir, **kwargs)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30) -> ClusterThread:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            try:
                loop.run_until_complete(self.cluster.start())
            except BaseException as error:  # reported to the starting thread
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            # Sessions of dropped connections may still be winding down: end them here.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=main, name="simulated-cluster", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the simulated cluster did not start in time")
        if failure:
            raise failure[0]
        return self

    def stop(self, kill_containers: bool = False) -> None:
        if self.loop is None or self._thread is None:
            return
        self.run(self.cluster.stop(kill_containers))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        """Run a coroutine on the cluster's loop and wait for its result."""
        assert self.loop is not None, "ClusterThread is not started"
        return asyncio.run_coroutine_threadsafe(_awaited(coro), self.loop).result(timeout)

    def call(self, host: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a SimulatedHost method on the loop (awaiting it when it is a coroutine)."""

        async def invoke() -> Any:
            result = getattr(self.cluster.hosts[host], method)(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return self.run(invoke())

    # Thin, explicit proxies for the common controls.
    def set_gpu(self, host: str, index: int, **values: Any) -> None:
        self.call(host, "set_gpu", index, **values)

    def go_down(self, host: str) -> None:
        self.call(host, "go_down")

    def come_up(self, host: str) -> None:
        self.call(host, "come_up")

    def rotate_host_key(self, host: str) -> None:
        self.call(host, "rotate_host_key")

    def inject(self, host: str, **faults: Any) -> None:
        self.call(host, "inject", **faults)

    def driver_fault(self, host: str, fault: str) -> None:
        """Break the host's GPU driver ("version_mismatch", ...) or mend it ("none")."""
        self.call(host, "set_driver_fault", fault)

    def set_sshd(self, host: str, **values: Any) -> dict[str, Any]:
        """The host's sshd policy: accept_env, max_sessions, hf_on_path, hub_module,
        docker_group, nvidia_runtime (see arbiter.simulator.sshd)."""
        return self.call(host, "set_sshd", **values)

    def accept_hf_token(self, *hosts: str) -> None:
        """`AcceptEnv LANG LC_* HF_TOKEN` on these hosts (all when none are named)."""
        for name in hosts or tuple(self.cluster.hosts):
            self.set_sshd(name, accept_env=["LANG", "LC_*", "HF_TOKEN"])

    def commands(self, host: str) -> list[CommandRecord]:
        return list(self.cluster.hosts[host].commands)

    def start_container(
        self, host: str, name: str, image: str, port: int, network: str = "host", **extra: Any
    ) -> Container:
        """Start a container the way a script would (no Arbiter labels; scripted.py)."""
        run = ScriptedRun(name, image, port, network, **extra)
        return self.run(start_scripted(self.cluster.hosts[host], run))

    def container(self, host: str, name: str) -> Container | None:
        """The named container as `docker ps --all` lists it now (None: there is none)."""
        return self.call(host, "container", name)

    def containers(self, host: str) -> list[Container]:
        async def snapshot() -> list[Container]:
            return self.cluster.hosts[host].containers

        return self.run(snapshot())

    @property
    def hosts(self) -> dict[str, SimulatedHost]:
        return self.cluster.hosts

    @property
    def data_dir(self) -> Path:
        return self.cluster.data_dir

    @property
    def config_path(self) -> Path:
        return self.cluster.config_path

    @property
    def known_hosts_path(self) -> Path:
        return self.cluster.known_hosts_path

    @property
    def client_key_path(self) -> Path:
        return self.cluster.client_key_path

    @property
    def control_url(self) -> str | None:
        return self.cluster.control_url


async def _awaited(coro: Awaitable[T]) -> T:
    return await coro

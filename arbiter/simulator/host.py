"""One simulated GPU host: a real SSH server on loopback that answers Arbiter's commands.

Exec requests go through `shell.py` exactly as a real sshd hands them to `sh -c`, and
then to the host's tools: nvidia-smi, df, du, docker and a few shell builtins. Every
request is recorded (raw string, parsed argvs, time, env names) so tests can count
round trips and assert the exact argv that arrived. Faults: the host can go down
(listener closed, live connections dropped), come back on the same port with the same
key, change its host key, and fail or slow down its next `docker run`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from arbiter.simulator import docker_info, files_cmds, hub
from arbiter.simulator.docker import DockerCli, Faults
from arbiter.simulator.docker_images import MACHINE_ARCH
from arbiter.simulator.dockerd import Container, Daemon
from arbiter.simulator.fs import DiskSpec, HostFiles, SimFs, df, du, find
from arbiter.simulator.gpus import GpuBoard, GpuSpec, HostMemory, nvidia_smi
from arbiter.simulator.shell import Handler, Io, Shell, ShellSyntaxError, ShellUnsupported, parse
from arbiter.simulator.sshd import SshdPolicy, session_env
from arbiter.simulator.timing import SimTiming, check_scale

log = logging.getLogger(__name__)
REAP_INTERVAL = 0.2
TOOLS = ("docker", "nvidia-smi", "df", "du", "cat", "echo", "test", "sh", "hostname", "uname")
TOOLS += ("realpath", "rm", "hf")  # the catalog's disk commands (files_cmds, hub)
TOOLS += ("printenv", "python3", "find")  # host checks (arbiter.engine.host_checks)
# Device nodes of any Linux host with NVIDIA's driver loaded (the per-GPU /dev/nvidiaN
# are added by HostSpec.device_paths).
LINUX_DEVICES = (
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/fuse",
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
)
# A DGX Spark's ConnectX-7 (two ports, each seen as two RDMA devices): the verbs devices
# and the RDMA connection manager under /dev/infiniband, what NCCL's IB transport opens.
INFINIBAND_DEVICES = (
    "/dev/infiniband/rdma_cm",
    "/dev/infiniband/uverbs0",
    "/dev/infiniband/uverbs1",
    "/dev/infiniband/uverbs2",
    "/dev/infiniband/uverbs3",
)
# The DGX Spark's ConnectX-7 interface that its two-node playbooks name for NCCL and Gloo.
SPARK_CLUSTER_INTERFACE = "enp1s0f1np1"


@dataclass(frozen=True)
class ServiceSpec:
    """An inference service the cluster file lists for a host."""

    name: str
    kind: str = "vllm"
    capabilities: tuple[str, ...] = ("llm",)
    request_paths: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions")
    disabled: bool = False


@dataclass(frozen=True)
class HostSpec:
    """A simulated host's hardware."""

    name: str
    gpus: tuple[GpuSpec, ...]
    mem_total_kb: int
    disk: DiskSpec = field(default_factory=DiskSpec)
    ssh_user: str = "arbiter"
    services: tuple[ServiceSpec, ...] | None = None  # None: one vLLM service
    machine: str = ""  # `uname -m`; "" = aarch64 for a GB10 (see uname_machine)
    # The inventory's cluster_address / cluster_interface ("" = not written): the
    # address other nodes of a multi-node launch reach this host at, and its NIC.
    cluster_address: str = ""
    cluster_interface: str = ""

    @property
    def is_spark(self) -> bool:
        """A DGX Spark: a GB10 beside a Grace CPU, with a ConnectX-7 on board."""
        return any("GB10" in gpu.name for gpu in self.gpus)

    @property
    def device_paths(self) -> frozenset[str]:
        """What `docker run --device` finds on this host (a Spark has /dev/infiniband)."""
        gpus = tuple(f"/dev/nvidia{index}" for index in range(len(self.gpus)))
        return frozenset(LINUX_DEVICES + gpus + (INFINIBAND_DEVICES if self.is_spark else ()))

    @property
    def uname_machine(self) -> str:
        """`uname -m`: a DGX Spark's GB10 sits beside an Arm (Grace) CPU, so aarch64."""
        if self.machine:
            return self.machine
        return "aarch64" if self.is_spark else "x86_64"

    @property
    def vram_budget_mib(self) -> int:
        if any(gpu.unified for gpu in self.gpus):
            return self.mem_total_kb // 1024
        return sum(gpu.memory_mib or 0 for gpu in self.gpus)

    def service_specs(self) -> tuple[ServiceSpec, ...]:
        return self.services if self.services is not None else (ServiceSpec(f"{self.name}-vllm"),)


@dataclass
class CommandRecord:
    """One exec request as it arrived; `argvs` holds each simple command's argv."""

    raw: str
    argvs: list[list[str]]
    time: float
    env_names: list[str]  # the client's variables sshd accepted (AcceptEnv)
    exit_status: int | None = None
    env_dropped: list[str] = field(default_factory=list)  # sent, silently dropped

    @property
    def argv(self) -> list[str]:
        """The argv of the first simple command ([] when the string did not parse)."""
        return self.argvs[0] if self.argvs else []


class ProcessIo:
    """The `Io` of one SSH session; writes after the client left are dropped."""

    def __init__(self, process: asyncssh.SSHServerProcess, env: dict[str, str]) -> None:
        self.process = process
        self.env: dict[str, str] = env  # login env + the accepted client variables

    def out(self, text: str) -> None:
        if not self.closed():
            self.process.stdout.write(text)

    def err(self, text: str) -> None:
        if not self.closed():
            self.process.stderr.write(text)

    async def drain(self) -> None:
        try:
            await self.process.stdout.drain()
            await self.process.stderr.drain()
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            pass

    async def read_stdin(self) -> str:
        return await self.process.stdin.read()

    def closed(self) -> bool:
        return self.process.is_closing()


class _SshServer(asyncssh.SSHServer):
    """Public-key auth for the configured user and the cluster's client key only."""

    def __init__(self, host: SimulatedHost) -> None:
        self.host = host
        self.conn: asyncssh.SSHServerConnection | None = None
        self.sessions = 0  # open session channels on this connection

    def session_requested(self) -> asyncssh.SSHServerSession:
        # OpenSSH counts sessions per connection and refuses the one past MaxSessions at
        # channel open, leaving the connection up (session.c session_new; serverloop.c
        # server_input_channel_open: reason SSH2_OPEN_CONNECT_FAILED, "open failed").
        if self.sessions >= self.host.sshd.max_sessions:
            self.host.session_stats["refused"] += 1
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "open failed")
        self.sessions += 1
        stats = self.host.session_stats
        stats["peak"] = max(stats["peak"], self.sessions)
        return _CountedProcess(self, self.host._session)

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.host._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.host._connections.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self.host.spec.ssh_user and self.host.authorized(key)


class _CountedProcess(asyncssh.SSHServerProcess):
    """A session that gives its MaxSessions slot back when its channel closes."""

    def __init__(self, server: _SshServer, factory: Any) -> None:
        super().__init__(factory, None, 0, False)
        self._server: _SshServer | None = server

    def connection_lost(self, exc: Exception | None) -> None:
        if self._server is not None:
            self._server.sessions -= 1
            self._server = None
        super().connection_lost(exc)


class SimulatedHost:
    """A GPU host: SSH server, GPUs, file system and docker daemon, under one data dir."""

    def __init__(
        self,
        spec: HostSpec,
        data_dir: Path,
        startup_delay: float = 2.0,
        release_delay: float = 0.5,
        port: int = 0,
        time_scale: float | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.data_dir = data_dir
        self.root = data_dir / "hosts" / spec.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_path = self.root / "ssh_host_key"
        self.client_key_pub = data_dir / "client_key.pub"
        self.port = port
        self.fs = SimFs(self.root / "fs", spec.disk, user=spec.ssh_user)
        self.board = GpuBoard(spec.name, list(spec.gpus), HostMemory(spec.mem_total_kb))
        self.daemon = Daemon(self.root / "docker", self.board, release_delay)
        self.daemon.arch = MACHINE_ARCH.get(spec.uname_machine, spec.uname_machine)
        self.daemon.devices = spec.device_paths
        self.board.loads = self.daemon.loads
        self.timing = self.daemon.timing = SimTiming(time_scale)  # pulls, loads: timing.py
        self.faults = Faults()
        self.sshd = SshdPolicy()  # AcceptEnv, MaxSessions, PATH, docker group: sshd.py
        self.session_stats = {"peak": 0, "refused": 0}
        self.docker = DockerCli(self.daemon, self.fs, self.take_faults, startup_delay)
        self.commands: list[CommandRecord] = []
        self.files = HostFiles(
            self.fs,
            {"/proc/meminfo": self.board.meminfo, "/etc/hostname": lambda: f"{self.name}\n"},
        )
        self.handlers: dict[str, Handler] = {
            "docker": self._docker,
            "nvidia-smi": self._tool(nvidia_smi, self.board),
            "df": self._tool(df, self.fs),
            "du": self._tool(du, self.fs),
            "hostname": self._hostname,
            "uname": self._uname,
            "which": self._which,
            "command": self._command,
            "sleep": self._sleep,
            # The catalog's disk commands (arbiter.engine.disk): confined to the simulated fs.
            "realpath": lambda argv, io: files_cmds.realpath(argv, io, self.fs),
            "rm": lambda argv, io: files_cmds.rm(argv, io, self.fs),
            "hf": lambda argv, io: hub.hf(argv, io, self.fs, self.timing),
            "python3": lambda argv, io: hub.python3(
                argv, io, self.fs, self.sshd.hub_module, self.timing
            ),
            "find": self._tool(find, self.fs),
        }
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._host_key: asyncssh.SSHKey | None = None
        self._authorized: bytes | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._host_key = self._load_or_create_key()
        await self.come_up()
        self._reaper = asyncio.create_task(self._reap(), name=f"sim-reaper-{self.name}")

    async def stop(self, kill_containers: bool = False) -> None:
        await self.go_down()
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        if kill_containers:
            await self.daemon.kill_all()

    @property
    def up(self) -> bool:
        return self._acceptor is not None

    async def go_down(self) -> None:
        """Stop listening and drop every live connection (clients see refused / reset)."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()
        if acceptor is not None:
            await acceptor.wait_closed()

    async def come_up(self) -> None:
        """Listen again, on the same port (the first time: the given one, or a free one)."""
        if self._acceptor is not None:
            return
        self._acceptor = await asyncssh.create_server(
            lambda: _SshServer(self),
            "127.0.0.1",
            self.port,
            server_host_keys=[self._host_key],
            encoding="utf-8",  # sessions come from _SshServer.session_requested
            reuse_address=True,
            config=None,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            gss_host=None,
            keepalive_interval=0,
        )
        self.port = self._acceptor.get_port()

    async def rotate_host_key(self) -> None:
        """A new host key (like a reinstalled host); known_hosts is left as it was."""
        self.key_path.unlink(missing_ok=True)
        self._host_key = self._load_or_create_key()
        was_up = self.up
        await self.go_down()
        if was_up:
            await self.come_up()

    def _load_or_create_key(self) -> asyncssh.SSHKey:
        if self.key_path.exists():
            return asyncssh.read_private_key(self.key_path)
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"sim@{self.name}")
        key.write_private_key(self.key_path)
        os.chmod(self.key_path, 0o600)
        return key

    def host_key_line(self) -> str:
        """`ssh-ed25519 AAAA...`, the host key as known_hosts lists it."""
        assert self._host_key is not None
        exported = self._host_key.convert_to_public().export_public_key().decode()
        return " ".join(exported.split()[:2])

    def authorized(self, key: asyncssh.SSHKey) -> bool:
        if self._authorized is None:
            self._authorized = asyncssh.read_public_key(self.client_key_pub).public_data
        return key.public_data == self._authorized

    async def _reap(self) -> None:
        # Notice exits promptly (and free GPU memory on time) even when nobody asks.
        while True:
            try:
                self.daemon.refresh()
            except Exception:  # a bad registry write must not kill the loop
                log.exception("simulated host %s: refresh failed", self.name)
            await asyncio.sleep(REAP_INTERVAL)

    # -- controls for tests ------------------------------------------------------------
    def set_gpu(self, index: int, reset: bool = False, **values: float | int | None) -> None:
        self.board.set_gpu(index, reset=reset, **values)

    def set_time_scale(self, scale: float | None) -> None:
        """Realistic pull / download / load durations × `scale`; None: quick (timing.py)."""
        self.timing = self.daemon.timing = SimTiming(check_scale(scale))

    def set_driver_fault(self, fault: str) -> None:
        """none / version_mismatch / no_devices / driver_not_loaded: nvidia-smi answers
        like the real tool; SSH, docker and /proc/meminfo keep working."""
        self.board.set_driver_fault(fault)

    def inject(self, **faults: Any) -> None:
        """Arm faults for the next `docker run`.

        slow_start=S, fail_start=True, crash_after_ready=S, bad_model=True,
        log_flood_mib=M, bad_completion=True, hold_memory_after_stop=True.
        """
        for name, value in faults.items():
            if not hasattr(self.faults, name):
                raise TypeError(f"unknown fault: {name}")
            setattr(self.faults, name, value)

    def set_sshd(self, **values: Any) -> dict[str, Any]:
        """Change the sshd policy (accept_env, max_sessions, hf_on_path, ...; sshd.py)."""
        self.sshd.update(**values)
        return self.sshd.as_dict()

    def free_held_memory(self) -> int:
        """End the processes that kept GPU memory after their container stopped
        (hold_memory_after_stop); how many there were."""
        return self.daemon.free_held_memory()

    def take_faults(self) -> Faults:
        faults, self.faults = self.faults, Faults()
        return faults

    @property
    def containers(self) -> list[Container]:
        self.daemon.refresh()
        return list(self.daemon.containers.values())

    def container(self, name: str) -> Container | None:
        self.daemon.refresh()
        return self.daemon.find(name)

    def state(self) -> dict[str, Any]:
        """What the control API shows: GPUs, memory, containers (env names only)."""
        return {
            "name": self.name,
            "up": self.up,
            "ssh_port": self.port,
            "gpus": [
                {
                    "index": r.index,
                    "name": r.spec.name,
                    "uuid": r.uuid,
                    "utilization": r.utilization,
                    "memory_used_mib": r.memory_used_mib,
                    "memory_total_mib": r.memory_total_mib,
                    "temperature": r.temperature,
                    "power": r.power,
                }
                for r in self.board.readings()
            ],
            "mem_total_kb": self.spec.mem_total_kb,
            "mem_available_kb": self.board.available_kb(),
            "containers": [asdict(c) for c in self.containers],
            "pending_faults": asdict(self.faults),
            "driver_fault": self.board.driver_fault,
            "sshd": self.sshd.as_dict(),
            "sessions": dict(self.session_stats),
            "commands": len(self.commands),
        }

    # -- sessions ----------------------------------------------------------------------
    async def _session(self, process: asyncssh.SSHServerProcess) -> None:
        sent = dict(process.env)
        env, kept, dropped = session_env(self.sshd, self.spec.ssh_user, self.fs.home, sent)
        io = ProcessIo(process, env)
        command = process.command
        if command is None:  # a shell request: the script comes on stdin
            command = await process.stdin.read()
        try:
            argvs = [c.argv for c in parse(command)]
        except (ShellUnsupported, ShellSyntaxError):
            argvs = []
        record = CommandRecord(command, argvs, time.time(), kept, env_dropped=dropped)
        self.commands.append(record)
        try:
            status = await Shell(self._on_path(), self.files, io).run(command)
        except Exception as error:  # the simulator's bug must still end the session cleanly
            log.exception("simulated host %s failed on %r", self.name, command)
            io.err(f"sim: internal error: {error}\n")
            status = 70
        record.exit_status = status
        await io.drain()
        if not io.closed():
            process.exit(status)

    @staticmethod
    def _tool(func: Any, target: Any) -> Handler:
        async def run(argv: list[str], io: Io) -> int:
            return func(argv, target, io.out, io.err)

        return run

    async def _hostname(self, argv: list[str], io: Io) -> int:
        io.out(f"{self.name}\n")
        return 0

    async def _uname(self, argv: list[str], io: Io) -> int:
        if "-a" in argv:
            machine = self.spec.uname_machine
            io.out(
                f"Linux {self.name} 6.8.0-sim #1 SMP PREEMPT_DYNAMIC {machine} {machine} "
                f"{machine} GNU/Linux\n"
            )
        elif "-m" in argv:
            io.out(f"{self.spec.uname_machine}\n")
        else:
            io.out("Linux\n")
        return 0

    def _on_path(self) -> dict[str, Handler]:
        """The commands a non-interactive session finds: `hf` only when on the PATH."""
        if self.sshd.hf_on_path:
            return self.handlers
        return {name: h for name, h in self.handlers.items() if name != "hf"}

    async def _docker(self, argv: list[str], io: Io) -> int:
        # Outside the docker group the CLI cannot open /var/run/docker.sock.
        if not self.sshd.docker_group and argv[1:2] not in (["-v"], ["--version"], ["--help"]):
            io.err(docker_info.PERMISSION_DENIED)
            return 1
        if argv[1:2] == ["info"] or argv[1:3] == ["system", "info"]:
            skip = 2 if argv[1] == "info" else 3
            return docker_info.info(argv[skip:], io, self.sshd.nvidia_runtime)
        status = await self.docker(argv, io)
        if status == 0 and (argv[1:2] == ["run"] or argv[1:3] == ["container", "run"]):
            # vLLM in the container fetches the weights into the mounted cache, as root.
            hub.container_download(self.fs, argv[2:] if argv[1] == "run" else argv[3:])
        return status

    async def _which(self, argv: list[str], io: Io) -> int:
        missing = 0
        for name in argv[1:]:
            if name == "hf" and not self.sshd.hf_on_path:
                missing = 1
            elif name in TOOLS:
                io.out(f"/usr/bin/{name}\n")
            else:
                missing = 1
        return missing

    async def _command(self, argv: list[str], io: Io) -> int:
        if argv[1:2] != ["-v"]:
            io.err("sim: command: only `command -v NAME` is simulated\n")
            return 2
        return await self._which(["which", *argv[2:]], io)

    async def _sleep(self, argv: list[str], io: Io) -> int:
        try:
            seconds = float(argv[1])
        except (IndexError, ValueError):
            io.err("sleep: invalid time interval\n")
            return 1
        await asyncio.sleep(min(seconds, 3600))
        return 0

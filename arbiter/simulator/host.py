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

from arbiter.simulator import files_cmds, hub
from arbiter.simulator.docker import DockerCli, Faults
from arbiter.simulator.dockerd import Container, Daemon
from arbiter.simulator.fs import DiskSpec, HostFiles, SimFs, df, du
from arbiter.simulator.gpus import GpuBoard, GpuSpec, HostMemory, nvidia_smi
from arbiter.simulator.shell import Handler, Io, Shell, ShellSyntaxError, ShellUnsupported, parse

log = logging.getLogger(__name__)
REAP_INTERVAL = 0.2
TOOLS = ("docker", "nvidia-smi", "df", "du", "cat", "echo", "test", "sh", "hostname", "uname")
TOOLS += ("realpath", "rm", "hf")  # the catalog's disk commands (files_cmds, hub)


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
    env_names: list[str]
    exit_status: int | None = None

    @property
    def argv(self) -> list[str]:
        """The argv of the first simple command ([] when the string did not parse)."""
        return self.argvs[0] if self.argvs else []


class ProcessIo:
    """The `Io` of one SSH session; writes after the client left are dropped."""

    def __init__(self, process: asyncssh.SSHServerProcess) -> None:
        self.process = process
        self.env: dict[str, str] = dict(process.env)

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


class SimulatedHost:
    """A GPU host: SSH server, GPUs, file system and docker daemon, under one data dir."""

    def __init__(
        self,
        spec: HostSpec,
        data_dir: Path,
        startup_delay: float = 2.0,
        release_delay: float = 0.5,
        port: int = 0,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.data_dir = data_dir
        self.root = data_dir / "hosts" / spec.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_path = self.root / "ssh_host_key"
        self.client_key_pub = data_dir / "client_key.pub"
        self.port = port
        self.fs = SimFs(self.root / "fs", spec.disk)
        self.board = GpuBoard(spec.name, list(spec.gpus), HostMemory(spec.mem_total_kb))
        self.daemon = Daemon(self.root / "docker", self.board, release_delay)
        self.board.loads = self.daemon.loads
        self.faults = Faults()
        self.docker = DockerCli(self.daemon, self.fs, self.take_faults, startup_delay)
        self.commands: list[CommandRecord] = []
        self.files = HostFiles(
            self.fs,
            {"/proc/meminfo": self.board.meminfo, "/etc/hostname": lambda: f"{self.name}\n"},
        )
        self.handlers: dict[str, Handler] = {
            "docker": self.docker,
            "nvidia-smi": self._tool(nvidia_smi, self.board),
            "df": self._tool(df, self.fs),
            "du": self._tool(du, self.fs),
            "hostname": self._hostname,
            "uname": self._uname,
            "which": self._which,
            "command": self._command,
            "sleep": self._sleep,
            # The catalog's disk commands (catalog.disk): confined to the simulated fs.
            "realpath": lambda argv, io: files_cmds.realpath(argv, io, self.fs),
            "rm": lambda argv, io: files_cmds.rm(argv, io, self.fs),
            "hf": lambda argv, io: hub.hf(argv, io, self.fs),
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
            process_factory=self._session,
            encoding="utf-8",
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

    def inject(self, **faults: Any) -> None:
        """Arm faults for the next `docker run`.

        slow_start=S, fail_start=True, crash_after_ready=S, bad_model=True.
        """
        for name, value in faults.items():
            if not hasattr(self.faults, name):
                raise TypeError(f"unknown fault: {name}")
            setattr(self.faults, name, value)

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
            "commands": len(self.commands),
        }

    # -- sessions ----------------------------------------------------------------------
    async def _session(self, process: asyncssh.SSHServerProcess) -> None:
        io = ProcessIo(process)
        command = process.command
        if command is None:  # a shell request: the script comes on stdin
            command = await process.stdin.read()
        try:
            argvs = [c.argv for c in parse(command)]
        except (ShellUnsupported, ShellSyntaxError):
            argvs = []
        record = CommandRecord(command, argvs, time.time(), sorted(io.env))
        self.commands.append(record)
        try:
            status = await Shell(self.handlers, self.files, io).run(command)
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
            io.out(f"Linux {self.name} 6.8.0-sim #1 SMP PREEMPT_DYNAMIC x86_64 GNU/Linux\n")
        elif "-m" in argv:
            io.out("x86_64\n")
        else:
            io.out("Linux\n")
        return 0

    async def _which(self, argv: list[str], io: Io) -> int:
        missing = 0
        for name in argv[1:]:
            if name in TOOLS:
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

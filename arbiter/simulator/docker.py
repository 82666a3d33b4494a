"""The simulated `docker` command: argv in, Docker's output, messages and exit codes out.

`docker run` is validated the way docker/cli and dockerd validate it (flags, image
reference, container name, volumes, ports, GPUs) and then starts a real process:
whatever the image, the arguments after it are read as vLLM's (`--model`,
`--served-model-name`, `--port`, `--gpu-memory-utilization`, ...) and handed to
`python -m arbiter.simulator.container`. Like vLLM, a container refuses to start when
its GPUs do not have the memory it asks for, which is how a caller that launches
before the previous model's memory is really freed finds out.

Not simulated: restart policies (accepted and recorded, never acted on), `docker
start` (env values are never stored, so a stopped container cannot be revived).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from arbiter.simulator import docker_images as images
from arbiter.simulator import docker_lifecycle as lifecycle
from arbiter.simulator import docker_query as query
from arbiter.simulator.docker_opts import (
    IPC_MODES,
    NETWORKS,
    RUN_FLAGS,
    RUN_USAGE,
    RUNTIMES,
    DockerError,
    check_env,
    check_name,
    check_restart,
    parse_env_file,
    parse_gpus,
    parse_publish,
    parse_reference,
    parse_size,
    parse_volume,
)
from arbiter.simulator.dockerd import Container, Daemon
from arbiter.simulator.fs import SimFs
from arbiter.simulator.pflags import FlagError, Parsed, parse
from arbiter.simulator.shell import Io
from arbiter.simulator.vllm_args import VllmLaunch, launch_argv

_ADJECTIVES = ("brave", "eager", "focused", "gifted", "jolly", "keen", "lucid", "quirky")
_NAMES = ("curie", "hopper", "lovelace", "noether", "ritchie", "shannon", "turing", "wozniak")


@dataclass
class Faults:
    """Faults for the next `docker run` on a host (consumed by it)."""

    slow_start: float | None = None
    fail_start: bool = False
    crash_after_ready: float | None = None
    bad_model: bool = False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        # The container's HTTP server sets SO_REUSEADDR too, so TIME_WAIT does not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class DockerCli:
    """One host's `docker` command, backed by that host's `Daemon`."""

    def __init__(
        self,
        daemon: Daemon,
        fs: SimFs,
        take_faults: Callable[[], Faults],
        startup_delay: float,
    ) -> None:
        self.daemon = daemon
        self.fs = fs
        self.take_faults = take_faults
        self.startup_delay = startup_delay
        Command = Callable[[list[str], Io], Awaitable[int]]
        d = daemon
        self.commands: dict[str, Command] = {
            "run": self.run,
            "ps": lambda a, io: query.ps(d, a, io),
            "logs": lambda a, io: lifecycle.logs(d, a, io),
            "stop": lambda a, io: lifecycle.stop(d, a, io),
            "rm": lambda a, io: lifecycle.rm(d, a, io),
            "inspect": lambda a, io: query.inspect(d, a, io),
            "pull": lambda a, io: images.pull(d, a, io),
            "images": lambda a, io: images.images(d, a, io),
            "version": lambda a, io: images.version(d, a, io),
        }
        self.groups: dict[str, dict[str, str]] = {
            "container": {
                "run": "run",
                "ls": "ps",
                "ps": "ps",
                "list": "ps",
                "logs": "logs",
                "stop": "stop",
                "rm": "rm",
                "remove": "rm",
                "inspect": "inspect",
            },
            "image": {"pull": "pull", "ls": "images", "list": "images"},
        }

    async def __call__(self, argv: list[str], io: Io) -> int:
        args = argv[1:]
        if not args or args[0] in ("--help", "help"):
            io.out(
                "Usage:  docker [OPTIONS] COMMAND\n\nA self-sufficient runtime for containers "
                "(simulated)\n"
            )
            return 0
        if args[0] in ("-v", "--version"):
            io.out(f"Docker version {images.ENGINE_VERSION}, build sim\n")
            return 0
        if args[0].startswith("-"):
            io.err(f"unknown flag: {args[0].split('=')[0]}\nSee 'docker --help'.\n")
            return 125
        name, rest = args[0], args[1:]
        if name == "image" and rest[:1] == ["inspect"]:
            return await images.image_inspect(self.daemon, rest[1:], io)
        if name in self.groups:
            group = self.groups[name]
            if not rest or rest[0] not in group:
                io.err(
                    f"docker: '{name} {' '.join(rest[:1])}' is not a docker command.\n"
                    "See 'docker --help'\n"
                )
                return 1
            name, rest = group[rest[0]], rest[1:]
        command = self.commands.get(name)
        if command is None:
            io.err(f"docker: '{name}' is not a docker command.\nSee 'docker --help'\n")
            return 1
        return await command(rest, io)

    async def run(self, args: list[str], io: Io) -> int:
        try:
            parsed = parse(args, RUN_FLAGS, interspersed=False)
        except FlagError as error:
            io.err(f"{error}\nSee 'docker run --help'.\n")
            return 125
        if parsed.flag("help"):
            io.out(f"\n{RUN_USAGE}\n\nCreate and run a new container from an image\n")
            return 0
        if not parsed.args:
            io.err(
                "\"docker run\" requires at least 1 argument.\nSee 'docker run --help'.\n\n"
                f"{RUN_USAGE}\n\nCreate and run a new container from an image\n"
            )
            return 1
        try:
            container, env = await self.create(parsed, io)
            launch = self.prepare_start(container)
        except FlagError as error:
            io.err(f"{error}\nSee 'docker run --help'.\n")
            return 125
        except DockerError as error:
            io.err(f"docker: {str(error).rstrip('.')}.\nSee 'docker run --help'.\n")
            return error.status
        process, container.vram_mib = launch_argv(
            launch, self.take_faults(), self.daemon.board, self.startup_delay
        )
        self.daemon.start(container, process, env)
        if parsed.flag("detach"):
            io.out(f"{container.id}\n")
            return 0
        await lifecycle.stream_logs(self.daemon, container, io, True, None, False)
        return container.exit_code

    async def create(self, parsed: Parsed, io: Io) -> tuple[Container, dict[str, str]]:
        """Everything `docker create` checks, in docker's order; the env values on the side."""
        gpus = parse_gpus(parsed.last("gpus")) if parsed.given("gpus") else None
        env: dict[str, str] = {}
        for item in parsed.all("env"):
            check_env(item)
        shm_size = (
            parse_size(parsed.last("shm-size"), "--shm-size") if parsed.given("shm-size") else None
        )
        pull_mode = parsed.last("pull", "missing")
        if pull_mode not in ("always", "missing", "never"):
            raise DockerError(
                f"invalid pull option: '{pull_mode}': must be one of \"always\", "
                '"missing" or "never"'
            )
        for path in parsed.all("env-file"):
            env.update(parse_env_file(await self.read_env_file(path, io), dict(io.env)))
        for item in parsed.all("env"):  # -e wins over --env-file, as in docker
            key, eq, value = item.partition("=")
            if eq:
                env[key] = value
            elif key in io.env:
                env[key] = io.env[key]
        binds = [parse_volume(spec) for spec in parsed.all("volume")]
        ports = [binding for spec in parsed.all("publish") for binding in parse_publish(spec)]
        auto_remove = parsed.flag("rm")
        check_restart(parsed.last("restart", "no") or "no", auto_remove)
        network = parsed.last("network") or parsed.last("net") or "bridge"
        if network not in NETWORKS:
            raise DockerError(f"Error response from daemon: network {network} not found")
        network = "bridge" if network == "default" else network
        ipc = parsed.last("ipc", "") or ""
        if ipc not in IPC_MODES and not ipc.startswith("container:"):
            raise DockerError(f"Error response from daemon: invalid IPC mode: {ipc}")
        runtime = parsed.last("runtime")
        if runtime is not None and runtime not in RUNTIMES:
            raise DockerError(
                f"Error response from daemon: unknown or invalid runtime name: {runtime}"
            )
        image_text, app_args = parsed.args[0], parsed.args[1:]
        ref = parse_reference(image_text)
        name = parsed.last("name") or self.generated_name()
        check_name(name)
        name = name.removeprefix("/")
        if ref.familiar not in self.daemon.images or pull_mode == "always":
            if pull_mode == "never":
                raise DockerError(f"Error response from daemon: No such image: {ref.familiar}")
            if ref.familiar not in self.daemon.images:
                io.err(f"Unable to find image '{ref.familiar}' locally\n")
            if not parsed.flag("quiet"):
                await images.pull_progress(ref, io.err, ref.familiar in self.daemon.images)
            self.daemon.images.add(ref.familiar)
        self.daemon.refresh()
        existing = self.daemon.by_name(name)
        if existing is not None:
            raise DockerError(
                f'Error response from daemon: Conflict. The container name "/{name}" is already '
                f'in use by container "{existing.id}". You have to remove (or rename) that '
                "container to be able to reuse that name"
            )
        if network == "host" and ports:
            io.err("WARNING: Published ports are discarded when using host network mode\n")
            ports = []
        container = Container(
            id=self.daemon.new_id(),
            name=name,
            image=image_text,
            args=app_args,
            env_names=sorted(env),
            labels=dict(item.partition("=")[::2] for item in parsed.all("label")),
            ports=ports,
            binds=binds,
            network=network,
            gpus=parsed.last("gpus"),
            options={
                "auto_remove": auto_remove,
                "restart": parsed.last("restart", "no"),
                "ipc": ipc or None,
                "shm_size": shm_size,
                "runtime": runtime,
                "init": parsed.flag("init") if parsed.given("init") else None,
                "entrypoint": parsed.last("entrypoint"),
                "gpu_request": None
                if gpus is None
                else {"count": gpus.count, "devices": list(gpus.devices)},
            },
        )
        container.gpu_indices = self.gpu_indices(gpus) if gpus is not None else []
        self.daemon.add(container)
        return container, env

    async def read_env_file(self, path: str, io: Io) -> str:
        if path in ("/dev/stdin", "-"):
            return await io.read_stdin()
        try:
            return self.fs.read_text(path)
        except (FileNotFoundError, IsADirectoryError):
            raise DockerError(f"open {path}: no such file or directory") from None

    def gpu_indices(self, request: object) -> list[int]:
        """Which GPUs `--gpus` selects; an impossible request fails like nvidia's hook does."""
        readings = self.daemon.board.readings()
        count = len(readings)
        by_uuid = {r.uuid: r.index for r in readings}
        devices: tuple[str, ...] = getattr(request, "devices", ())
        wanted = getattr(request, "count", 0)
        if devices:
            indices = []
            for device in devices:
                index = int(device) if device.isdigit() else by_uuid.get(device, count)
                if index >= count:
                    raise self.nvidia_error(f"device error: {device}: unknown device")
                indices.append(index)
            return indices
        if wanted == -1:
            return list(range(count))
        if wanted > count:
            raise self.nvidia_error(f"device error: {count}: unknown device")
        return list(range(wanted))

    @staticmethod
    def nvidia_error(detail: str) -> DockerError:
        return DockerError(
            "Error response from daemon: failed to create task for container: failed to create "
            "shim task: OCI runtime create failed: runc create failed: unable to start container "
            "process: error during container init: error running prestart hook #0: exit status 1, "
            f"stdout: , stderr: Auto-detected mode as 'legacy' nvidia-container-cli: {detail}: "
            "unknown"
        )

    def prepare_start(self, container: Container) -> VllmLaunch:
        """What `docker start` settles: host ports, then the process's own settings."""
        launch = VllmLaunch.from_args(container.args)
        container.app_port = launch.port
        if container.network == "host":
            container.bind_port = launch.port
        else:
            taken = {
                p["host_port"]
                for other in self.daemon.containers.values()
                if other.running and other.id != container.id
                for p in other.ports
            }
            for binding in container.ports:
                if not binding["host_port"]:
                    binding["host_port"] = free_port()
                elif binding["host_port"] in taken or port_in_use(binding["host_port"]):
                    ip = binding["host_ip"] or "0.0.0.0"  # noqa: S104 (what docker prints)
                    raise DockerError(
                        "Error response from daemon: driver failed programming external "
                        f"connectivity on endpoint {container.name} ({container.id}): Bind for "
                        f"{ip}:{binding['host_port']} failed: port is already allocated"
                    )
            # Only a mapping to the port the server listens on reaches it; anything else
            # leaves it listening on a port nobody knows, as a wrong -p would in docker.
            mapped = [p["host_port"] for p in container.ports if p["container_port"] == launch.port]
            container.bind_port = mapped[0] if mapped else free_port()
        launch.bind_port = container.bind_port
        launch.gpus = list(container.gpu_indices)
        return launch

    def generated_name(self) -> str:
        return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NAMES)}{secrets.randbelow(100)}"

"""The simulated `docker` command: argv in, Docker's output, messages and exit codes out.

`docker run` is validated the way docker/cli and dockerd validate it (flags, image
reference, container name, volumes, ports, GPUs) and then starts a real process:
whatever the image, the arguments after it are read as vLLM's (`--model`,
`--served-model-name`, `--port`, `--gpu-memory-utilization`, ...) and handed to
`python -m arbiter.simulator.container`. Like vLLM, a container refuses to start when
its GPUs do not have the memory it asks for, which is how a caller that launches
before the previous model's memory is really freed finds out.

`--device` paths must exist on the host (`Daemon.devices`): a DGX Spark has its
ConnectX-7's /dev/infiniband, other simulated hosts do not, and dockerd refuses the
start as it does on a real host without the device.

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
from arbiter.simulator import image_exec
from arbiter.simulator.container.options import DEFAULT_DISTRIBUTED_TIMEOUT
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
    parse_device,
    parse_env_file,
    parse_gpus,
    parse_publish,
    parse_reference,
    parse_size,
    parse_volume,
)
from arbiter.simulator.dockerd import Container, Daemon, failing_argv
from arbiter.simulator.fs import SimFs
from arbiter.simulator.pflags import FlagError, Parsed, parse
from arbiter.simulator.shell import Io
from arbiter.simulator.vllm_args import VllmLaunch, launch_argv

_ADJECTIVES = ("brave", "eager", "focused", "gifted", "jolly", "keen", "lucid", "quirky")
_NAMES = ("curie", "hopper", "lovelace", "noether", "ritchie", "shannon", "turing", "wozniak")
# How long a node of a multi-node launch waits for the others when tools are quick
# (timing.py): long enough for any test's nodes to meet, short of hanging a test forever.
QUICK_JOIN_TIMEOUT = 120.0


@dataclass
class Faults:
    """Faults for the next `docker run` on a host (consumed by it)."""

    slow_start: float | None = None
    fail_start: bool = False
    crash_after_ready: float | None = None
    bad_model: bool = False
    # MiB of log lines the container prints as it starts (and one line of 1 MiB without
    # a break): how Arbiter bears a container that floods its log.
    log_flood_mib: float | None = None
    # The model is listed by /v1/models but every completion (or embedding) fails with
    # vLLM's 500 error body: a broken model that looks ready (container.server).
    bad_completion: bool = False
    # When the container stops, its GPU process stays behind holding its memory until the
    # control API frees it (`POST /hosts/{name}/free-memory`): memory that is not returned.
    hold_memory_after_stop: bool = False


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
        self.join_timeout = QUICK_JOIN_TIMEOUT  # tests shorten it to see a node time out
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
            outcome = self.process_outcome(container)
            launch = self.prepare_start(container, outcome)
        except FlagError as error:
            io.err(f"{error}\nSee 'docker run --help'.\n")
            return 125
        except DockerError as error:
            io.err(f"docker: {str(error).rstrip('.')}.\nSee 'docker run --help'.\n")
            return error.status
        if isinstance(outcome, image_exec.Exited):  # the entrypoint or vLLM's CLI says no
            process = failing_argv(outcome.stdout, outcome.stderr, 0.05, outcome.status)
            container.vram_mib = 0
        else:
            # Quick by default; realistic × the time scale when the cluster has one (timing).
            delay = self.daemon.timing.load_seconds(launch.model, self.startup_delay)
            text = launch.distributed_timeout_text or ""
            timeout = int(text) if text.isdigit() else DEFAULT_DISTRIBUTED_TIMEOUT
            join = self.daemon.timing.join_seconds(timeout, self.join_timeout)
            faults = self.take_faults()
            process, container.vram_mib = launch_argv(
                launch, faults, self.daemon.board, delay, join
            )
            container.hold_memory_after_stop = faults.hold_memory_after_stop
            if outcome.preamble:  # the entrypoint's banner, vLLM's warnings: logged first
                stdout_log, _ = self.daemon.log_paths(container)
                stdout_log.write_text("".join(line + "\n" for line in outcome.preamble))
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
        devices = [parse_device(spec) for spec in parsed.all("device")]
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
        # A pull takes the host's platform, or the one --platform names (docker_images).
        platform = parsed.last("platform")
        wanted = images.requested_arch(platform)
        present = ref.familiar in self.daemon.images
        other_platform = present and wanted not in (
            None,
            self.daemon.image_archs.get(ref.familiar, self.daemon.arch),
        )
        if not present or pull_mode == "always" or other_platform:
            if pull_mode == "never":
                raise DockerError(f"Error response from daemon: No such image: {ref.familiar}")
            if not present:
                io.err(f"Unable to find image '{ref.familiar}' locally\n")
            arch = images.pulled_arch(self.daemon, ref, platform)
            write = io.err if not parsed.flag("quiet") else (lambda _t: None)
            await images.pull_progress(
                ref, write, present and not other_platform, self.daemon.timing
            )
            images.add_image(self.daemon, ref, arch)
        spec = images.image_spec(ref)
        entrypoint, command = image_exec.container_argv(spec, parsed.last("entrypoint"), app_args)
        if not entrypoint + command:
            raise DockerError("Error response from daemon: no command specified")
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
        warning = images.arch_warning(self.daemon, ref.familiar, platform)
        if warning:
            io.err(warning)
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
                # The image's config, which `docker inspect` shows and the process runs.
                "image_entrypoint": list(spec.entrypoint) if spec.entrypoint else None,
                "image_cmd": list(spec.cmd) if spec.cmd else None,
                "image_arch": self.daemon.image_archs.get(ref.familiar, self.daemon.arch),
                "devices": devices,
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

    def process_outcome(self, container: Container) -> image_exec.Serve | image_exec.Exited:
        """What the container's process does: `vllm serve`'s arguments, or how it fails.

        A program the image does not have fails `docker run` itself (runc, status 127).
        """
        spec = images.image_spec(parse_reference(container.image))
        entrypoint, command = image_exec.container_argv(
            spec, container.options.get("entrypoint"), container.args
        )
        argv = entrypoint + command
        arch_matches = container.options.get("image_arch", self.daemon.arch) == self.daemon.arch
        if arch_matches:
            error = image_exec.start_error(argv, spec.workdir)
            if error is not None:
                raise DockerError(error, 127)
        mounts = [bind.split(":")[1] for bind in container.binds if ":" in bind]
        return image_exec.run(argv, workdir=spec.workdir, mounts=mounts, arch_matches=arch_matches)

    def prepare_start(
        self, container: Container, outcome: image_exec.Serve | image_exec.Exited
    ) -> VllmLaunch:
        """What `docker start` settles: host ports, then the process's own settings."""
        launch = VllmLaunch.from_args(outcome.args if isinstance(outcome, image_exec.Serve) else [])
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
        # After the network, as dockerd builds the OCI spec (moby daemon/oci_linux.go
        # WithDevices -> oci/devices_linux.go DevicesFromPath); the container stays
        # created. A directory counts when devices lie under it, as there.
        for device in container.options.get("devices") or []:
            host_path = device["path_on_host"]
            if not self.daemon.has_device(host_path):
                raise DockerError(
                    "Error response from daemon: error gathering device information while "
                    f'adding custom device "{host_path}": no such file or directory'
                )
        launch.bind_port = container.bind_port
        launch.gpus = list(container.gpu_indices)
        return launch

    def generated_name(self) -> str:
        return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NAMES)}{secrets.randbelow(100)}"

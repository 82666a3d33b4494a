"""Containers that someone else started on a simulated host: a script, not Arbiter.

DGX Spark setups run vLLM from scripts, typically `docker run -d --name vllm_node
--network host --gpus all --ipc host nvcr.io/nvidia/vllm:TAG vllm serve MODEL --port
8888` (NVIDIA's Spark playbooks run the NGC image with `vllm serve` as the command;
cluster launchers name the container `vllm_node`). `start_scripted` sends that very
command line through the host's own `docker` (so it is validated, pulled, started and
listed exactly like any other container) and carries no `arbiter.*` label.

A two-node launcher adds per node what vLLM's multi-node docs ask for: the node's
address and NIC in the environment (`-e VLLM_HOST_IP=... -e NCCL_SOCKET_IFNAME=...`),
the ConnectX-7 (`--device /dev/infiniband`) and the `vllm serve` flags of its rank
(`--nnodes 2 --node-rank 1 --master-addr ... --headless`): `env`, `devices`, `serve_args`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arbiter.simulator.docker_images import image_spec
from arbiter.simulator.docker_opts import NAME_PATTERN, DockerError, parse_reference
from arbiter.simulator.dockerd import Container
from arbiter.simulator.shell import BufferIo

if TYPE_CHECKING:
    from arbiter.simulator.host import SimulatedHost

NETWORKS = ("host", "bridge")
DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
DEFAULT_UTILIZATION = 0.5
SERVE = ("vllm", "serve")


class ScriptError(Exception):
    """The request cannot be turned into a command line (400), or docker refused it (409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ScriptedRun:
    """What a script asks docker for (the control API's body)."""

    name: str
    image: str
    port: int
    network: str = "host"
    model: str = DEFAULT_MODEL
    gpu_memory_utilization: float = DEFAULT_UTILIZATION
    env: tuple[str, ...] = ()  # NAME=VALUE, each a `--env`
    devices: tuple[str, ...] = ()  # each a `--device`
    serve_args: tuple[str, ...] = ()  # more `vllm serve` flags, after the usual ones
    labels: tuple[str, ...] = ()  # KEY=VALUE, each a `--label` (e.g. arbiter.managed=true)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ScriptedRun:
        allowed = {"name", "image", "port", "network", "model", "gpu_memory_utilization"}
        allowed |= {"env", "devices", "serve_args", "labels"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ScriptError(f"unknown fields: {', '.join(unknown)}; allowed: {sorted(allowed)}")
        name, image, port = body.get("name"), body.get("image"), body.get("port")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ScriptError("name must be a container name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)")
        if not isinstance(image, str) or not image or image.startswith("-"):
            raise ScriptError("image must be an image reference")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ScriptError("port must be an integer 1-65535")
        network = body.get("network", "host")
        if network not in NETWORKS:
            raise ScriptError(f"network must be one of {list(NETWORKS)}")
        model = body.get("model", DEFAULT_MODEL)
        if not isinstance(model, str) or not model or model.startswith("-"):
            raise ScriptError("model must be a model name")
        utilization = body.get("gpu_memory_utilization", DEFAULT_UTILIZATION)
        if not isinstance(utilization, int | float) or isinstance(utilization, bool):
            raise ScriptError("gpu_memory_utilization must be a number")
        lists = {key: _strings(body, key) for key in ("env", "devices", "serve_args", "labels")}
        if any("=" not in item or item.startswith("=") for item in lists["env"]):
            raise ScriptError("env items must be NAME=VALUE")
        if any("=" not in item or item.startswith("=") for item in lists["labels"]):
            raise ScriptError("labels items must be KEY=VALUE")
        return cls(name, image, port, network, model, float(utilization), **lists)

    def argv(self) -> list[str]:
        """The script's `docker run` line."""
        argv = ["docker", "run", "--detach", "--name", self.name, "--gpus", "all"]
        argv += ["--ipc", "host"]
        for item in self.env:
            argv += ["--env", item]
        for device in self.devices:
            argv += ["--device", device]
        for label in self.labels:
            argv += ["--label", label]
        if self.network == "host":
            argv += ["--network", "host"]
        else:
            argv += ["--publish", f"{self.port}:{self.port}"]
        # An image whose entrypoint already is `vllm serve` (vllm/vllm-openai) takes the
        # model and flags only; the others (NGC's runs its arguments) need the command.
        try:
            entrypoint = image_spec(parse_reference(self.image)).entrypoint
        except DockerError:
            entrypoint = None  # docker run itself reports the bad reference
        command = [] if entrypoint == SERVE else list(SERVE)
        return [
            *argv,
            self.image,
            *command,
            self.model,
            "--port",
            str(self.port),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:g}",
            *self.serve_args,
        ]


def _strings(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ScriptError(f"{key} must be a list of non-empty strings")
    return tuple(value)


async def start_scripted(host: SimulatedHost, run: ScriptedRun) -> Container:
    """Run the script's command on the host's docker; the container it started."""
    io = BufferIo()
    status = await host.docker(run.argv(), io)
    if status != 0:
        raise ScriptError(f"docker run failed with status {status}: {io.stderr_text.strip()}", 409)
    container = host.container(run.name)
    if container is None:  # pragma: no cover - docker said it started it
        raise ScriptError(f"docker run reported success but {run.name} is not listed")
    return container


def summary(container: Container) -> dict[str, Any]:
    """A container as the control API lists it."""
    published = [p["host_port"] for p in container.ports] if container.network != "host" else []
    return {
        "name": container.name,
        "id": container.id,
        "image": container.image,
        "state": container.status,
        "labels": dict(container.labels),
        "network": container.network,
        # Host networking publishes nothing: the port is the one the server listens on.
        "ports": [container.bind_port] if container.network == "host" else published,
        "published": published,
        "managed_by_arbiter": container.labels.get("arbiter.managed") == "true",
    }

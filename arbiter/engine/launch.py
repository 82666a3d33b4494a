"""The docker command lines of a swap, built as argv lists from catalog fields.

Every value that comes from the catalog travels in the `--option=value` form, so no
value can ever be read as an option of its own (a served name `--foo` stays a value),
and the lists are joined with shell quoting only by `arbiter.engine.ssh`. The catalog
fields are re-validated here right before use: a row may predate today's rules.

The hub token never appears in an argv: `docker run --env=HF_TOKEN` (the name only)
makes docker copy the value from its own environment, which the SSH session sets
(`ssh.run(..., env={"HF_TOKEN": token})`).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings

from arbiter.errors import InvalidInput
from catalog.validation import catalog_field_problems, normalize_local_path

if TYPE_CHECKING:
    from arbiter.models import Host, Service
    from catalog.models import CatalogModel

HF_TOKEN_ENV = "HF_TOKEN"  # noqa: S105 (the variable's name, not a secret)
# vLLM serves /sleep and /wake_up (what the broker's unload and load routes call) only
# in its development mode; a catalog model asks for sleep mode with this engine flag.
SLEEP_MODE_FLAG = "--enable-sleep-mode"
SLEEP_MODE_ENV = "--env=VLLM_SERVER_DEV_MODE=1"
# The host's hub cache holds `models--org--name` folders directly (catalog.disk), which
# is the layout of HF_HUB_CACHE; inside the container that is $HF_HOME/hub.
CONTAINER_HUB_CACHE = "/root/.cache/huggingface/hub"
STOP_TIMEOUT_SECONDS = 30
# The catalog fields the launch uses; checked again before every launch.
LAUNCH_FIELDS = (
    "hub_repo",
    "hub_revision",
    "local_path",
    "served_name",
    "image",
    "port",
    "container_name",
    "tensor_parallel_size",
    "max_model_len",
    "gpu_memory_utilization",
    "extra_engine_flags",
    "extra_container_args",
)
_PORTS_RE = re.compile(r":(\d+)->")


def launch_field_problems(model: CatalogModel) -> list[tuple[str, str]]:
    """What catalog validation says about the model's launch fields today."""
    data = {name: getattr(model, name) for name in LAUNCH_FIELDS}
    _cleaned, problems = catalog_field_problems(
        data, roots=list(settings.ARBITER_MODEL_ROOTS), require_key=False
    )
    return problems


def service_port(base_url: str) -> int:
    """The host port a service answers on, from its base URL (scheme default if none)."""
    parts = urlsplit(base_url)
    try:
        port = parts.port
    except ValueError as error:
        raise InvalidInput(f"service base_url has a bad port: {base_url!r}") from error
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return port


def gpus_option(tensor_parallel_size: int, gpu_count: int | None) -> str:
    """`--gpus=all`, or the first N devices when the model needs fewer than the host has."""
    if gpu_count is None or tensor_parallel_size >= gpu_count:
        return "--gpus=all"
    devices = ",".join(str(index) for index in range(tensor_parallel_size))
    # docker reads --gpus as one CSV record: a device list with commas must be quoted.
    return f"--gpus=device={devices}" if tensor_parallel_size == 1 else f'--gpus="device={devices}"'


def gpu_indices(tensor_parallel_size: int, gpu_count: int | None) -> tuple[int, ...] | None:
    """The GPUs `gpus_option` selects; None means all of them."""
    if gpu_count is None or tensor_parallel_size >= gpu_count:
        return None
    return tuple(range(tensor_parallel_size))


def _format_number(value: float) -> str:
    return f"{value:g}"


def build_run_argv(
    model: CatalogModel,
    host: Host,
    service: Service,
    *,
    gpu_count: int | None = None,
) -> list[str]:
    """`docker run -d ...` for serving `model` as `service` on `host`.

    Raises InvalidInput (naming the field) when a catalog value fails validation.
    """
    if service.host_id is not None and host.pk is not None and service.host_id != host.pk:
        raise InvalidInput(f"service {service.name} is not on host {host.name}", field="host")
    problems = launch_field_problems(model)
    if problems:
        field, reason = problems[0]
        raise InvalidInput(f"{field}: {reason}", field=field)
    argv = [
        "docker",
        "run",
        "--detach",
        f"--name={model.container_name}",
        gpus_option(model.tensor_parallel_size, gpu_count),
        "--ipc=host",
        f"--publish={service_port(service.base_url)}:{model.port}",
    ]
    source = model.hub_repo
    if model.local_path:
        source = normalize_local_path(model.local_path, list(settings.ARBITER_MODEL_ROOTS))
        # Same path inside, read-only: Arbiter never changes a fine-tune's files.
        argv.append(f"--volume={source}:{source}:ro")
    else:
        argv.append(f"--volume={settings.ARBITER_HF_CACHE_DIR}:{CONTAINER_HUB_CACHE}")
        if settings.ARBITER_HF_TOKEN:
            argv.append(f"--env={HF_TOKEN_ENV}")
    argv.extend(model.extra_container_args or [])
    if SLEEP_MODE_FLAG in (model.extra_engine_flags or []):
        argv.append(SLEEP_MODE_ENV)
    if model.image.startswith("-"):  # validation refuses it; never let it become an option
        raise InvalidInput("image: must not start with '-'", field="image")
    argv.append(model.image)
    argv += [
        f"--model={source}",
        f"--served-model-name={model.served_name}",
        f"--port={model.port}",
        f"--tensor-parallel-size={model.tensor_parallel_size}",
    ]
    if model.max_model_len:
        argv.append(f"--max-model-len={model.max_model_len}")
    argv.append(f"--gpu-memory-utilization={_format_number(model.gpu_memory_utilization)}")
    if model.hub_repo and model.hub_revision:
        argv.append(f"--revision={model.hub_revision}")
    argv.extend(model.extra_engine_flags or [])
    return argv


def launch_env(local: bool) -> dict[str, str] | None:
    """The SSH session environment for `docker run`: the hub token, for hub models only."""
    token = settings.ARBITER_HF_TOKEN
    if token and not local:
        return {HF_TOKEN_ENV: token}
    return None


def display(argv: list[str] | tuple[str, ...]) -> str:
    """The command as a person would type it (quoted exactly as it is sent)."""
    return shlex.join(argv)


# -- the other docker commands ---------------------------------------------------------
def build_stop_argv(name: str, timeout: int = STOP_TIMEOUT_SECONDS) -> list[str]:
    return ["docker", "stop", f"--time={timeout}", "--", name]


def build_rm_argv(name: str) -> list[str]:
    return ["docker", "rm", "--force", "--", name]


def build_logs_argv(name: str, follow: bool = True) -> list[str]:
    """The whole log (followed): a re-attach skips the lines it already stored."""
    argv = ["docker", "logs"]
    if follow:
        argv.append("--follow")
    return [*argv, "--tail=all", "--", name]


def build_ps_argv() -> list[str]:
    return ["docker", "ps", "--all", "--no-trunc", "--format={{json .}}"]


def build_state_argv(name: str) -> list[str]:
    return ["docker", "inspect", "--type=container", "--format={{json .State}}", "--", name]


DOCKER_VERSION_ARGV = ["docker", "version", "--format={{.Server.Version}}"]


@dataclass(frozen=True)
class ContainerInfo:
    """One line of `docker ps --all --format '{{json .}}'`."""

    id: str
    name: str
    state: str
    image: str
    host_ports: tuple[int, ...]

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting", "paused")


def parse_ps(stdout: str) -> list[ContainerInfo]:
    containers = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        try:
            row: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        ports = tuple(int(port) for port in _PORTS_RE.findall(str(row.get("Ports", ""))))
        containers.append(
            ContainerInfo(
                id=str(row.get("ID", "")),
                # `Names` lists every name (comma-separated); a container has one here.
                name=str(row.get("Names", "")).split(",")[0],
                state=str(row.get("State", "")),
                image=str(row.get("Image", "")),
                host_ports=ports,
            )
        )
    return containers


def containers_to_replace(
    containers: list[ContainerInfo], container_name: str, port: int | None
) -> list[ContainerInfo]:
    """What serves (or blocks) the slot: the catalog's container name, or the port."""
    return [c for c in containers if c.name == container_name or (port and port in c.host_ports)]


@dataclass(frozen=True)
class ContainerState:
    """`docker inspect --format '{{json .State}}'`, the parts a swap needs."""

    status: str
    running: bool
    exit_code: int


def parse_state(stdout: str) -> ContainerState | None:
    try:
        data = json.loads(stdout.strip().splitlines()[0])
    except (ValueError, IndexError):
        return None
    return ContainerState(
        status=str(data.get("Status", "")),
        running=bool(data.get("Running")),
        exit_code=int(data.get("ExitCode") or 0),
    )

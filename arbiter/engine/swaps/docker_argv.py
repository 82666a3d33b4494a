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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings

from arbiter.engine.host_paths import CONTAINER_VLLM_CACHE, hub_cache_dir, vllm_cache_dir
from arbiter.errors import InvalidInput
from catalog.validation import catalog_field_problems, normalize_local_path

if TYPE_CHECKING:
    from arbiter.engine.swaps.multi_node import NodeRole
    from arbiter.models import Host, Service
    from catalog.models import CatalogModel

HF_TOKEN_ENV = "HF_TOKEN"  # noqa: S105 (the variable's name, not a secret)
# vLLM serves /sleep and /wake_up (what the broker's unload and load routes call) only
# in its development mode; a catalog model asks for sleep mode with this engine flag.
SLEEP_MODE_FLAG = "--enable-sleep-mode"
SLEEP_MODE_ENV = "--env=VLLM_SERVER_DEV_MODE=1"
# The host's hub cache holds `models--org--name` folders directly (arbiter.engine.disk), which
# is the layout of HF_HUB_CACHE; inside the container that is $HF_HOME/hub.
CONTAINER_HUB_CACHE = "/root/.cache/huggingface/hub"
STOP_TIMEOUT_SECONDS = 30
# Labels on every container Arbiter starts (arbiter.engine.swaps.slot reads them back).
LABEL_MANAGED = "arbiter.managed"
LABEL_MODEL = "arbiter.model"
LABEL_SWAP = "arbiter.swap"
# vLLM's own default (EngineArgs.gpu_memory_utilization = 0.9).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
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
    "command",
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


def _host_dir(host: Host, path: str) -> str:
    # "" only while the SSH user's home is unknown: pre-flight asks the host for it.
    if not path:
        raise InvalidInput(
            f"host: the home directory of {host.ssh_user} on {host.name} is not known yet "
            "(pre-flight asks the host for it over SSH)",
            field="host",
        )
    return path


def build_run_argv(
    model: CatalogModel,
    host: Host,
    service: Service | None,
    *,
    gpu_count: int | None = None,
    swap_id: int | None = None,
    gpu_memory_utilization: float | None = None,
    node: NodeRole | None = None,
) -> list[str]:
    """`docker run -d ...` for serving `model` as `service` on `host`.

    `swap_id` labels the container with the swap that starts it (a validation without a
    swap shows the command without that one label). `node` is the host's part in a
    multi-node model (arbiter.engine.swaps.multi_node): host networking, the interconnect
    environment and vLLM's multi-node flags; `service` is then the host's own vLLM
    service where it has one, and the API listens on the head service's port. Raises
    InvalidInput (naming the field) when a catalog value fails validation.
    """
    if service is None:
        if node is None or node.head:
            raise InvalidInput(f"host {host.name} has no vLLM service", field="host")
    elif service.host_id is not None and host.pk is not None and service.host_id != host.pk:
        raise InvalidInput(f"service {service.name} is not on host {host.name}", field="host")
    problems = launch_field_problems(model)
    if problems:
        name, reason = problems[0]
        raise InvalidInput(f"{name}: {reason}", field=name)
    gpus_here = model.tensor_parallel_size // node.nnodes if node else model.tensor_parallel_size
    argv = [
        "docker",
        "run",
        "--detach",
        f"--name={model.container_name}",
        gpus_option(gpus_here, gpu_count),
        "--ipc=host",
    ]
    if node is None:
        assert service is not None  # checked above
        argv.append(f"--publish={service_port(service.base_url)}:{model.port}")
    else:
        # The ranks reach each other on the interconnect, and the head's API answers on
        # the host's port: host networking, nothing published (docker ignores --publish
        # with --network=host anyway, with a warning).
        argv.append("--network=host")
        argv.extend(node.container_env())
    source = model.hub_repo
    if model.local_path:
        source = normalize_local_path(model.local_path, list(settings.ARBITER_MODEL_ROOTS))
        # Same path inside, read-only: Arbiter never changes a fine-tune's files.
        argv.append(f"--volume={source}:{source}:ro")
    else:
        argv.append(f"--volume={_host_dir(host, hub_cache_dir(host))}:{CONTAINER_HUB_CACHE}")
        if settings.ARBITER_HF_TOKEN:
            argv.append(f"--env={HF_TOKEN_ENV}")
    # vLLM's compile cache, kept on the host across swaps (arbiter.engine.host_paths).
    argv.append(f"--volume={_host_dir(host, vllm_cache_dir(host))}:{CONTAINER_VLLM_CACHE}")
    argv.extend(model.extra_container_args or [])
    if SLEEP_MODE_FLAG in (model.extra_engine_flags or []):
        argv.append(SLEEP_MODE_ENV)
    argv.extend(ownership_labels(model.key, swap_id))
    if model.image.startswith("-"):  # validation refuses it; never let it become an option
        raise InvalidInput("image: must not start with '-'", field="image")
    argv.append(model.image)
    # The image's command (`vllm serve` for images whose entrypoint runs its arguments,
    # nothing when the entrypoint already is `vllm serve`), then the model as the
    # positional `model_tag`: `vllm serve [model_tag] [options]` (vLLM's
    # entrypoints/cli/serve.py); `--model` is deprecated for `vllm serve`
    # (vllm/utils/argparse_utils.py warns and moves it to the front).
    argv.extend(model.command or [])
    if source.startswith("-"):  # validation refuses it; never let it become an option
        raise InvalidInput("hub_repo: must not start with '-'", field="hub_repo")
    argv += [
        source,
        f"--served-model-name={model.served_name}",
        f"--port={node.api_port if node else model.port}",
        f"--tensor-parallel-size={model.tensor_parallel_size}",
    ]
    if node is not None:
        argv.extend(node.engine_flags())
    if model.max_model_len:
        argv.append(f"--max-model-len={model.max_model_len}")
    # Pre-flight chooses it per host when the catalog leaves it open (engine.host_memory).
    utilization = (
        gpu_memory_utilization or model.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    )
    argv.append(f"--gpu-memory-utilization={_format_number(utilization)}")
    if model.hub_repo and model.hub_revision:
        argv.append(f"--revision={model.hub_revision}")
    argv.extend(model.extra_engine_flags or [])
    return argv


def ownership_labels(model_key: str, swap_id: int | None = None) -> list[str]:
    """The labels that mark a container as Arbiter's: only these are ever stopped unasked.

    `docker ps --format '{{json .}}'` shows them in `Labels` (see `parse_ps`).
    """
    labels = [f"--label={LABEL_MANAGED}=true", f"--label={LABEL_MODEL}={model_key}"]
    if swap_id is not None:
        labels.append(f"--label={LABEL_SWAP}={swap_id}")
    return labels


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
    # `-t` is the shorthand on every Docker release: of `--time` up to 27.x, of
    # `--timeout` since 28.0, where `--time` became a deprecated alias (docker/cli
    # cli/command/container/stop.go). Either long name fails on one side of 28.0.
    return ["docker", "stop", "-t", str(int(timeout)), "--", name]


def build_rm_argv(name: str) -> list[str]:
    return ["docker", "rm", "--force", "--", name]


def build_logs_argv(name: str, follow: bool = True, tail: int | None = None) -> list[str]:
    """The whole log (followed): a re-attach skips the lines it already stored; or its
    last `tail` lines."""
    argv = ["docker", "logs"]
    if follow:
        argv.append("--follow")
    return [*argv, f"--tail={'all' if tail is None else tail}", "--", name]


def build_ps_argv(label: str | None = None) -> list[str]:
    """Every container, or those with `label` (`KEY` or `KEY=VALUE`: docker's `label`
    filter, docs.docker.com/reference/cli/docker/container/ls/#filter)."""
    filters = [f"--filter=label={label}"] if label else []
    return ["docker", "ps", "--all", "--no-trunc", *filters, "--format={{json .}}"]


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
    labels: dict[str, str] = field(default_factory=dict)
    networks: tuple[str, ...] = ()
    command: str = ""
    status: str = ""  # docker's words: "Up 2 hours", "Exited (137) 5 minutes ago"
    created_at: str = ""  # Go's time.String(): "2025-11-02 09:14:07 +0000 UTC"

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting", "paused")

    @property
    def managed(self) -> bool:
        """Started by Arbiter (it carries the label every Arbiter launch sets)."""
        return self.labels.get(LABEL_MANAGED) == "true"

    @property
    def host_network(self) -> bool:
        return "host" in self.networks


def parse_labels(text: str) -> dict[str, str]:
    """docker/cli's `Labels` column: `k=v` pairs joined by "," (sorted; formatter/container.go).

    A value may itself hold a ",": a piece without "=" belongs to the value before it.
    """
    labels: dict[str, str] = {}
    last = None
    for piece in text.split(",") if text else []:
        key, eq, value = piece.partition("=")
        if eq or last is None:
            labels[key] = value
            last = key
        else:
            labels[last] += "," + piece
    return labels


def parse_ps(stdout: str) -> list[ContainerInfo]:
    containers = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        try:
            row: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        # `Ports` lists published ports only: empty under `--network host` and for a
        # stopped container (docker/cli formatter.DisplayablePorts).
        ports = tuple(int(port) for port in _PORTS_RE.findall(str(row.get("Ports", ""))))
        networks = str(row.get("Networks", ""))
        containers.append(
            ContainerInfo(
                id=str(row.get("ID", "")),
                # `Names` lists every name (comma-separated); a container has one here.
                name=str(row.get("Names", "")).split(",")[0],
                state=str(row.get("State", "")),
                image=str(row.get("Image", "")),
                host_ports=ports,
                labels=parse_labels(str(row.get("Labels", ""))),
                networks=tuple(name for name in networks.split(",") if name),
                # JSON-quoted by docker ("\"vllm serve …\""); kept as printed.
                command=str(row.get("Command", "")),
                status=str(row.get("Status", "")),
                created_at=str(row.get("CreatedAt", "")),
            )
        )
    return containers


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

"""Reading `vllm serve`'s arguments as vLLM would, and choosing the process to start.

What a container runs is settled first (`image_exec`: the image's entrypoint, the
command after the image, vLLM's CLI); what reaches here are the arguments of `vllm
serve` with the model first, as vLLM's own parser has them: `[model_tag, *options]`.
The options the simulator needs are read here; all others go through to the simulated
container, which accepts and logs them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from arbiter.simulator.dockerd import container_argv, failing_argv
from arbiter.simulator.gpus import GpuBoard

if TYPE_CHECKING:
    from arbiter.simulator.docker import Faults

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"  # vLLM's default when no model is given
DEFAULT_UTILIZATION = 0.9
_POOLING_TASKS = {"embed", "embedding", "classify", "score", "reward"}
_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kKmMgG]?)")
# vLLM's integer options that a multi-node launch uses, by the name argparse's errors
# give them ("argument --nnodes/-n"; aliases from vllm/engine/arg_utils.py).
_INT_OPTIONS = {
    "--nnodes/-n": ("--nnodes", "-n"),
    "--node-rank/-r": ("--node-rank", "-r"),
    "--master-port": ("--master-port",),
    "--tensor-parallel-size/-tp": ("--tensor-parallel-size", "-tp"),
    "--pipeline-parallel-size/-pp": ("--pipeline-parallel-size", "-pp"),
}
# ParallelConfig.__post_init__ (vllm/config/parallel.py): the executors a multi-node
# launch may use.
_MULTI_NODE_BACKENDS = ("mp", "uni", "external_launcher")


@dataclass
class VllmLaunch:
    """The vLLM settings of one container, plus where the simulator binds it."""

    model: str
    served_name: str
    port: int
    utilization_text: str
    kind: str
    passthrough: list[str]
    bind_port: int = 0
    gpus: list[int] = field(default_factory=list)
    # Multi-node (`--nnodes K`; container.distributed runs the rendezvous).
    nnodes_text: str = "1"
    backend: str | None = None
    distributed_timeout_text: str | None = None
    int_options: dict[str, str] = field(default_factory=dict)

    @property
    def nnodes(self) -> int:
        return int(self.nnodes_text) if self.nnodes_text.isdigit() else 1

    @classmethod
    def from_args(cls, args: list[str]) -> VllmLaunch:
        """From `vllm serve`'s arguments: `[model_tag, *options]` (`image_exec.run`)."""
        rest = list(args)
        model = None
        if rest and not rest[0].startswith("-"):
            model = rest.pop(0)  # `vllm serve MODEL`
        model = _value(rest, "--model") or model or DEFAULT_MODEL
        served = _value(rest, "--served-model-name") or model
        port_text = _value(rest, "--port") or "8000"
        task = _value(rest, "--task") or ""
        pooling = task in _POOLING_TASKS or _value(rest, "--runner") == "pooling"
        return cls(
            model=model,
            served_name=served,
            port=int(port_text) if port_text.isdigit() else 8000,
            utilization_text=_value(rest, "--gpu-memory-utilization") or str(DEFAULT_UTILIZATION),
            kind="embeddings" if pooling or _value(rest, "--convert") == "embed" else "llm",
            passthrough=_normalised(rest),
            nnodes_text=_value(rest, "--nnodes", "-n") or "1",
            backend=_value(rest, "--distributed-executor-backend"),
            distributed_timeout_text=_value(rest, "--distributed-timeout-seconds"),
            int_options={
                usage: text
                for usage, names in _INT_OPTIONS.items()
                if (text := _value(rest, *names)) is not None
            },
        )


def _flag_name(arg: str) -> str:
    # vLLM accepts --gpu_memory_utilization as well as --gpu-memory-utilization.
    return arg.split("=", 1)[0].replace("_", "-")


def _value(args: list[str], *names: str) -> str | None:
    """The last value given for `names` (`--name v` or `--name=v`), like argparse keeps."""
    found = None
    for i, arg in enumerate(args):
        if _flag_name(arg) not in names:
            continue
        if "=" in arg:
            found = arg.split("=", 1)[1]
        elif i + 1 < len(args):
            found = args[i + 1]
    return found


def _normalised(args: list[str]) -> list[str]:
    """Pass-through flags in the form the simulated container's parser takes."""
    out = []
    for arg in args:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    # `--max-model-len 32k` is valid for vLLM; the simulated container wants an integer.
    for i, arg in enumerate(out):
        if arg == "--max-model-len" and i + 1 < len(out):
            out[i + 1] = str(_human_int(out[i + 1]))
    return out


def _human_int(text: str) -> int | str:
    match = _HUMAN_INT.fullmatch(text)
    if match is None:
        return text
    number, unit = float(match.group(1)), match.group(2)
    scale = {"": 1, "k": 1000, "K": 1024, "m": 10**6, "M": 2**20, "g": 10**9, "G": 2**30}[unit]
    return int(number * scale)


def launch_argv(
    launch: VllmLaunch,
    faults: Faults,
    board: GpuBoard,
    startup_delay: float,
    join_timeout: float = 120.0,
) -> tuple[list[str], int]:
    """The process to start for this container, and the MiB it will hold per GPU.

    `join_timeout`: how long a node of a multi-node launch waits for the others.
    """
    delay = faults.slow_start if faults.slow_start is not None else startup_delay
    now = time.strftime("%m-%d %H:%M:%S")
    banner = [
        f"INFO {now} [api_server.py:1839] vLLM API server version 0.11.0 (simulated)",
        f"INFO {now} [utils.py:233] non-default args: {{'model_tag': '{launch.model}'}}",
    ]
    try:
        utilization = float(launch.utilization_text)
    except ValueError:
        utilization = -1.0
    if not 0 < utilization <= 1:
        usage = "usage: vllm serve [model_tag] [options]"
        error = (
            f"vllm serve: error: argument --gpu-memory-utilization: invalid value: "
            f"'{launch.utilization_text}' (must be in (0, 1])"
        )
        return failing_argv([], [usage, error], 0.05), 0
    usage = "usage: vllm serve [model_tag] [options]"
    for option, text in launch.int_options.items():
        if not re.fullmatch(r"[+-]?\d+", text):  # argparse's type=int, status 2
            error = f"vllm serve: error: argument {option}: invalid int value: '{text}'"
            return failing_argv([], [usage, error], 0.05, 2), 0
    if launch.nnodes > 1 and launch.backend not in (None, *_MULTI_NODE_BACKENDS):
        # Raised while the engine config is built; pydantic may wrap it in a
        # ValidationError around the same sentence (not confirmed here).
        error = (
            "ValueError: nnodes > 1 can only be set when distributed executor backend is "
            "mp, uni or external_launcher."
        )
        return failing_argv(banner, ["Traceback (most recent call last):", error], 0.3 * delay), 0
    if faults.bad_model:
        return failing_argv(banner, _bad_model_error(launch.model), 0.3 * delay), 0
    vram = max((int(utilization * board.total_mib(i)) for i in launch.gpus), default=0)
    for index in launch.gpus:
        free = board.free_mib(index)
        if free < vram:
            return failing_argv(
                banner, _no_memory_error(board, index, utilization, free), 0.3 * delay
            ), 0
    args = [
        *launch.passthrough,
        "--served-model-name",
        launch.served_name,
        "--port",
        str(launch.bind_port),
        "--kind",
        launch.kind,
        "--startup-delay",
        str(delay),
        "--vram-mib",
        str(vram),
        "--join-timeout",
        str(join_timeout),
    ]
    if faults.fail_start:
        args.append("--fail-start")
    if faults.crash_after_ready is not None:
        args += ["--crash-after-ready", str(faults.crash_after_ready)]
    if faults.log_flood_mib is not None:
        args += ["--log-flood-mib", str(faults.log_flood_mib)]
    if faults.bad_completion:
        args.append("--bad-completion")
    return container_argv(args), vram


def _bad_model_error(model: str) -> list[str]:
    return [
        "Traceback (most recent call last):",
        '  File "/usr/local/lib/python3.12/dist-packages/transformers/utils/hub.py", line 479, '
        "in cached_files",
        "huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. "
        f"Repository Not Found for url: https://huggingface.co/api/models/{model}/revision/main.",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        f"OSError: {model} is not a local folder and is not a valid model identifier listed on "
        "'https://huggingface.co/models'",
        "If this is a private repository, make sure to pass a token having permission to this "
        "repo either by logging in with `hf auth login` or by passing `token=<your_token>`",
    ]


def _no_memory_error(board: GpuBoard, index: int, utilization: float, free_mib: int) -> list[str]:
    total = board.total_mib(index) / 1024
    wanted = utilization * total
    return [
        f"ERROR {time.strftime('%m-%d %H:%M:%S')} [core.py:708] EngineCore failed to start.",
        "Traceback (most recent call last):",
        f"ValueError: Free memory on device cuda:{index} ({free_mib / 1024:.2f}/{total:.2f} GiB) "
        f"on startup is less than desired GPU memory utilization ({utilization}, "
        f"{wanted:.2f} GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
        "processes.",
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {}",
    ]

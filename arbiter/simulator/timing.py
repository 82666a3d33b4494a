"""How long the simulated tools take: quick by default, realistic × a time scale on demand.

By default (no scale) every tool is as quick as a test wants: a pull takes a few
milliseconds, `hf download` well under a second, a model loads in the cluster's
`startup_delay`. With a time scale (`SimulatedCluster(time_scale=0.01)`, or
`ARBITER_SIM_TIME_SCALE=0.01` for `make run` / `manage.py simcluster`) they take what
they take on real hardware, multiplied by the scale:

- `docker pull`: the image's size over the registry bandwidth (images of vLLM are
  ~8–11 GB compressed; NVIDIA's Spark playbooks warn the first pull takes a while);
- `hf download`: each file's size over the hub bandwidth;
- a model load (container start until `Application startup complete.`): a fixed engine
  start-up (CUDA init, torch.compile, CUDA graphs: about a minute in vLLM's own logs)
  plus the weights read into GPU memory;
- the wait of a multi-node launch for its other nodes: torch.distributed's timeout
  (`--distributed-timeout-seconds`, else PyTorch's 600 s). Quick, it is a fixed wait
  long enough for any test's nodes to meet (`DockerCli.join_timeout`).

Scale 1 is real time; 0.01 turns a 10 GB pull at 100 MB/s (100 s) into one second.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from dataclasses import dataclass

GB = 10**9
TIME_SCALE_ENV = "ARBITER_SIM_TIME_SCALE"
DEFAULT_BANDWIDTH = 100e6  # bytes/s: a 1 Gbit/s line to the registry and the hub
# Compressed sizes (what a pull transfers) of the images the simulator knows, roughly as
# the registries list them; other images count as a small CUDA-based one.
IMAGE_BYTES = {
    "nvcr.io/nvidia/vllm": 11 * GB,
    "vllm/vllm-openai": 9 * GB,
}
DEFAULT_IMAGE_BYTES = 4 * GB
IMAGE_LAYERS = 12
QUICK_PULL_SECONDS = 0.03
LOAD_BASE_SECONDS = 60.0
LOAD_BYTES_PER_SECOND = 2 * GB  # safetensors from the page cache / NVMe into the GPU
_PARAMS = re.compile(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")


def model_bytes(model: str) -> int:
    """bf16 weights for the parameter count in the model's name (`Qwen3-0.6B`), else 1 GB."""
    match = _PARAMS.search(posixpath.basename(model.rstrip("/")))
    return int(float(match.group(1)) * 2 * GB) if match else GB


def check_scale(scale: object) -> float | None:
    """A time scale: a positive finite number, or None (quick); ValueError otherwise."""
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ValueError(f"time scale must be a positive number or null, not {scale!r}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"time scale must be a positive number, not {scale!r}")
    return float(scale)


def scale_from_env() -> float | None:
    text = os.environ.get(TIME_SCALE_ENV, "").strip()
    if not text:
        return None
    try:
        return check_scale(float(text))
    except ValueError:
        raise ValueError(f"{TIME_SCALE_ENV} must be a positive number, not {text!r}") from None


@dataclass(frozen=True)
class SimTiming:
    """The durations of one simulated host's tools (see the module docstring)."""

    scale: float | None = None
    bandwidth: float = DEFAULT_BANDWIDTH

    @property
    def realistic(self) -> bool:
        return self.scale is not None

    def image_bytes(self, repository: str) -> int:
        for prefix in ("docker.io/", "index.docker.io/"):
            repository = repository.removeprefix(prefix)
        return IMAGE_BYTES.get(repository, DEFAULT_IMAGE_BYTES)

    def pull_seconds(self, size: int) -> float:
        if self.scale is None:
            return QUICK_PULL_SECONDS
        return size / self.bandwidth * self.scale

    def download_seconds(self, size: int, quick: float) -> float:
        """One hub file's download; `quick` without a scale."""
        if self.scale is None:
            return quick
        return size / self.bandwidth * self.scale

    def join_seconds(self, timeout: int, quick: float) -> float:
        """How long a node of a multi-node launch waits for the others."""
        if self.scale is None:
            return quick
        return timeout * self.scale

    def load_seconds(self, model: str, quick: float) -> float:
        """A model's load in a container; `quick` (the startup delay) without a scale."""
        if self.scale is None:
            return quick
        return (LOAD_BASE_SECONDS + model_bytes(model) / LOAD_BYTES_PER_SECOND) * self.scale

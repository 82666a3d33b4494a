"""What a container is started with: its command line, and vLLM's constants it mimics."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

VLLM_VERSION = "0.11.0"
DEFAULT_TOKENS = 16
MAX_TOKENS_CAP = 4096
EMBEDDING_DIM = 16
SAMPLE_RATE = 16_000
CRASH_EXIT_CODE = 1  # what vLLM exits with when its engine core dies
# vLLM's ParallelConfig defaults (vllm/config/parallel.py): the rendezvous of a multi-node
# launch, and torch.distributed's default timeout when --distributed-timeout-seconds is
# not given ("If None, PyTorch's default timeout is used (600s for NCCL)").
DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29501
DEFAULT_DISTRIBUTED_TIMEOUT = 600
ARCHITECTURES = {"llm": "LlamaForCausalLM", "embeddings": "XLMRobertaModel", "tts": "OrpheusTTS"}
ROUTES = {
    ("GET", "/health"): "health",
    ("GET", "/metrics"): "metrics",
    ("GET", "/v1/models"): "models",
    ("POST", "/v1/chat/completions"): "chat_completions",
    ("POST", "/v1/completions"): "completions",
    ("POST", "/v1/embeddings"): "embeddings",
    ("POST", "/v1/audio/speech"): "speech",
    # vLLM's sleep mode (`--enable-sleep-mode`, dev endpoints): what a service's
    # unload_route / load_route point at. Asleep, the engine refuses inference.
    ("POST", "/sleep"): "sleep",
    ("POST", "/wake_up"): "wake_up",
    ("GET", "/is_sleeping"): "is_sleeping",
}
INFERENCE_PREFIX = "/v1/"


@dataclass(frozen=True)
class Options:
    """Command-line options; `extra` holds the vLLM flags we accept and ignore."""

    name: str
    port: int
    kind: str
    startup_delay: float
    fail_start: bool
    crash_after_ready: float | None
    token_delay: float
    vram_mib: int
    max_model_len: int
    extra: dict[str, Any]
    # vLLM's --api-key (several allowed), else $VLLM_API_KEY: /v1 then needs a Bearer key.
    api_key: list[str] | None = None
    # Multi-node (`--nnodes K`, vLLM's native multiprocessing): see container.distributed.
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = DEFAULT_MASTER_ADDR
    master_port: int = DEFAULT_MASTER_PORT
    headless: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_timeout_seconds: int | None = None
    # How long the simulator really waits for the other nodes (timing.py scales it);
    # the messages quote distributed_timeout_seconds, as torch's do.
    join_timeout: float = 120.0
    # The flood fault (simulator Faults.log_flood_mib): MiB of log printed at start-up.
    log_flood_mib: float | None = None
    # The bad-completion fault (Faults.bad_completion): listed by /v1/models, /health
    # 200, but every inference request fails with vLLM's 500 (container.server).
    bad_completion: bool = False

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1

    @property
    def node_rank_within_dp(self) -> int:
        # ParallelConfig.node_rank_within_dp without data parallelism: node_rank % nnodes.
        return self.node_rank % self.nnodes

    @property
    def world_size(self) -> int:
        """torch.distributed ranks over all nodes: TP x PP (ParallelConfig.world_size)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def local_world_size(self) -> int:
        return max(1, self.world_size // self.nnodes)


def parse_options(argv: list[str]) -> Options:
    # No abbreviations: an unknown vLLM flag must never be taken for a prefix of ours.
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--served-model-name", dest="name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=sorted(ARCHITECTURES), default="llm")
    parser.add_argument("--startup-delay", type=float, default=2.0)
    parser.add_argument("--fail-start", action="store_true")
    parser.add_argument("--crash-after-ready", type=float, default=None)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--vram-mib", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--api-key", "--api_key", dest="api_key", nargs="+", default=None)
    # vLLM's own spellings and aliases (vllm/engine/arg_utils.py, the ParallelConfig
    # group): --nnodes/-n, --node-rank/-r, --tensor-parallel-size/-tp, ...
    parser.add_argument("--nnodes", "-n", type=int, default=1)
    parser.add_argument("--node-rank", "-r", type=int, default=0)
    parser.add_argument("--master-addr", default=DEFAULT_MASTER_ADDR)
    parser.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT)
    parser.add_argument("--headless", action="store_true")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    parser.add_argument("--distributed-timeout-seconds", type=int, default=None)
    parser.add_argument("--join-timeout", type=float, default=120.0)
    parser.add_argument("--log-flood-mib", type=float, default=None)
    parser.add_argument("--bad-completion", action="store_true")
    known, unknown = parser.parse_known_args(argv)
    options = vars(known)
    # api_server.py: `args.api_key or [envs.VLLM_API_KEY]`, empty keys dropped.
    keys = [key for key in (options["api_key"] or [os.environ.get("VLLM_API_KEY", "")]) if key]
    options["api_key"] = keys or None
    return Options(**options, extra=flags_to_dict(unknown))


def flags_to_dict(args: list[str]) -> dict[str, Any]:
    """Turn `--gpu-memory-utilization 0.9 --enforce-eager` into vLLM's log-line dict."""
    flags: dict[str, Any] = {}
    key = "model_tag"  # a leading positional is the model, as in `vllm serve MODEL`
    for arg in args:
        if arg.startswith("--"):
            key, _, value = arg[2:].replace("-", "_").partition("=")
            flags[key] = value or True
        else:  # the value of the flag before it
            flags[key] = arg
    return flags

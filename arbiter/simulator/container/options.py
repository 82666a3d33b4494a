"""What a container is started with: its command line, and vLLM's constants it mimics."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

VLLM_VERSION = "0.11.0"
DEFAULT_TOKENS = 16
MAX_TOKENS_CAP = 4096
EMBEDDING_DIM = 16
SAMPLE_RATE = 16_000
CRASH_EXIT_CODE = 1  # what vLLM exits with when its engine core dies
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
    known, unknown = parser.parse_known_args(argv)
    return Options(**vars(known), extra=flags_to_dict(unknown))


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

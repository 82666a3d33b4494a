"""The validated cluster inventory: plain frozen values, no ORM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SAMPLING_MODES = ("ssh", "nvml")
SERVICE_KINDS = ("vllm", "http")
CAPABILITIES = ("llm", "tts", "stt", "image", "embeddings", "audio")

DEFAULT_SSH_USER = "arbiter"
DEFAULT_SSH_PORT = 22
# Concurrent SSH channels per host connection: under OpenSSH's MaxSessions (10).
DEFAULT_MAX_SSH_SESSIONS = 8
DEFAULT_HEALTH_PATH = {"vllm": "/health", "http": "/health"}

# The OpenAI-compatible routes a capability answers, used when `request_paths` is left out.
DEFAULT_REQUEST_PATHS: dict[str, tuple[str, ...]] = {
    "llm": ("/v1/chat/completions", "/v1/completions"),
    "embeddings": ("/v1/embeddings",),
    "tts": ("/v1/audio/speech",),
    "stt": ("/v1/audio/transcriptions",),
    "image": ("/v1/images/generations",),
    "audio": ("/v1/audio/speech",),
}


def default_request_paths(capabilities: tuple[str, ...]) -> tuple[str, ...]:
    """The union of the capabilities' routes, in capability order, without repeats."""
    paths: list[str] = []
    for capability in capabilities:
        paths += [path for path in DEFAULT_REQUEST_PATHS[capability] if path not in paths]
    return tuple(paths)


@dataclass(frozen=True)
class HostDefaults:
    """The `defaults:` mapping, already validated; a host's own keys override it."""

    ssh_user: str = DEFAULT_SSH_USER
    ssh_port: int = DEFAULT_SSH_PORT
    ssh_key: str | None = None
    known_hosts: str | None = None
    vram_margin_mib: int = 0


@dataclass(frozen=True)
class HostConfig:
    """One host as configured; `ssh_key` / `known_hosts` are absolute paths when set."""

    name: str
    address: str
    ssh_user: str = DEFAULT_SSH_USER
    ssh_port: int = DEFAULT_SSH_PORT
    ssh_key: str | None = None
    known_hosts: str | None = None
    sampling: str = "ssh"
    vram_budget_mib: int | None = None
    vram_margin_mib: int = 0
    # The hub cache on the host (None: ARBITER_HF_CACHE_DIR, else ~/.cache/huggingface/hub).
    hf_cache_dir: str | None = None
    max_ssh_sessions: int = DEFAULT_MAX_SSH_SESSIONS
    # The interconnect a multi-node model talks over (None: the host takes part in none).
    cluster_address: str | None = None
    cluster_interface: str | None = None


@dataclass(frozen=True)
class ServiceConfig:
    """One inference backend as configured; list fields are tuples so the value is immutable."""

    name: str
    host: str
    base_url: str
    capabilities: tuple[str, ...]
    kind: str = "vllm"
    health_path: str = "/health"
    request_paths: tuple[str, ...] = ()
    vram_resident_mib: int = 0
    can_coexist_with: tuple[str, ...] = ()
    load_route: str | None = None
    unload_route: str | None = None
    # How the routes are called: an HTTP method and an optional JSON body (Ollama unloads
    # with `POST /api/generate {"model": ..., "keep_alive": 0}`).
    load_method: str = "POST"
    load_body: Any = None
    unload_method: str = "POST"
    unload_body: Any = None
    # Containers Arbiter did not start but may stop and replace for this service (the
    # `vllm_node` a Spark launcher script started); see arbiter.engine.swaps.slot.
    adopt_containers: tuple[str, ...] = ()
    disabled: bool = False


@dataclass(frozen=True)
class Inventory:
    """The whole cluster file; `simulated` is true when the simulator wrote it."""

    hosts: list[HostConfig]
    services: list[ServiceConfig]
    simulated: bool = False

"""The demo catalog the simulated cluster offers: a few small hub models and one local one.

Written as `catalog.yaml` next to `cluster.yaml`; `manage.py serve` seeds the database
from it in simulated mode (models already in the database are never overwritten). The
local model's files are created (sparse) on every host, and one hub model is already
in sim-a's cache, so the catalog page shows present, absent and sizes from the start.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from arbiter.simulator.hub import DEFAULT_CACHE, weights_bytes

if TYPE_CHECKING:
    from arbiter.simulator.host import SimulatedHost

CATALOG_FILE = "catalog.yaml"
HUB_CACHE = DEFAULT_CACHE  # the SSH user's ~/.cache/huggingface/hub (host_paths)
LOCAL_MODEL = "/models/finetunes/qwen3-0.6b-support-v2"
PRECACHED = {"sim-a": ["Qwen/Qwen3-0.6B"]}
DEMO_MODELS: list[dict[str, Any]] = [
    {
        "key": "qwen3-600m",
        "display_name": "Qwen3 0.6B",
        "hub_repo": "Qwen/Qwen3-0.6B",
        "estimated_vram_mib": 6000,
        "max_model_len": 8192,
        "gpu_memory_utilization": 0.3,
    },
    {
        "key": "smollm2-instruct",
        "display_name": "SmolLM2 1.7B Instruct",
        "hub_repo": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "estimated_vram_mib": 9000,
        "gpu_memory_utilization": 0.4,
        "extra_engine_flags": ["--enable-prefix-caching"],
    },
    {
        "key": "bge-small",
        "display_name": "BGE small (embeddings)",
        "kind": "embeddings",
        "hub_repo": "BAAI/bge-small-en-v1.5",
        "estimated_vram_mib": 2000,
        "gpu_memory_utilization": 0.1,
        "container_name": "arbiter-embeddings",
    },
    {
        # NVIDIA's image for DGX Spark (its build-and-deploy playbook); no `command` here:
        # the catalog gives it the image's default, ["vllm", "serve"] (launch_rules).
        "key": "qwen3-600m-ngc",
        "display_name": "Qwen3 0.6B (NVIDIA vLLM image)",
        "hub_repo": "Qwen/Qwen3-0.6B",
        "served_name": "qwen3-600m-ngc",  # served names are unique (qwen3-600m has the repo's)
        "image": "nvcr.io/nvidia/vllm:25.09-py3",
        "estimated_vram_mib": 6000,
        "max_model_len": 8192,
        "default_host": "sim-gb10",
    },
    {
        "key": "support-finetune",
        "display_name": "Qwen3 0.6B support fine-tune (local)",
        "local_path": LOCAL_MODEL,
        "served_name": "support-v2",
        "estimated_vram_mib": 6000,
        "gpu_memory_utilization": 0.3,
        "extra_container_args": ["--shm-size=8g", "--ipc=host"],
    },
]


def _weights(host: SimulatedHost, folder: str, size: int) -> None:
    host.fs.add_file(posixpath.join(folder, "config.json"), content=b'{"model_type": "qwen3"}\n')
    host.fs.add_file(posixpath.join(folder, "model.safetensors"), size=size)


def write_demo_catalog(data_dir: Path, hosts: Mapping[str, SimulatedHost]) -> Path:
    """Create the demo models' files on the hosts and write `catalog.yaml`; return its path."""
    for name, host in hosts.items():
        _weights(host, LOCAL_MODEL, 1_200_000_000)
        for repo in PRECACHED.get(name, []):
            folder = posixpath.join(HUB_CACHE, "models--" + repo.replace("/", "--"))
            _weights(host, posixpath.join(folder, "snapshots", "0" * 40), weights_bytes(repo))
    path = data_dir / CATALOG_FILE
    header = (
        "# Written by the simulated cluster (arbiter.simulator); rewritten on each start.\n"
        "# Seeds the catalog once: models already in the database keep their edits.\n"
    )
    text = yaml.safe_dump({"models": DEMO_MODELS}, sort_keys=False, width=1000)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + text)
    tmp.replace(path)
    return path

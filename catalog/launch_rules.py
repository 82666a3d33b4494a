"""What a launch-setting value may look like: image references, engine flags, docker options.

Each value becomes exactly one argv item of `docker run` (see arbiter.engine.swaps.docker_argv), so
beyond being well-formed it must not be able to smuggle in a second option. Patterns use
`fullmatch`: a `$` would also match before a trailing newline.
"""

from __future__ import annotations

import re

# Docker image references, after distribution/reference's grammar.
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
IMAGE_RE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",
    re.ASCII,
)
MAX_IMAGE_NAME = 255

# One vLLM option: `--name` or `--name=value`, printable ASCII, no spaces.
ENGINE_FLAG_RE = re.compile(r"--[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x7e]*)?")
# Flags the launch settings own: a second copy in the extra flags would silently win or
# conflict, so it is refused with the setting to use instead.
MANAGED_ENGINE_FLAGS = {
    "--model": "hub_repo / local_path",
    "--served-model-name": "served_name",
    "--port": "port",
    "--host": "port",
    "--tensor-parallel-size": "tensor_parallel_size",
    "--max-model-len": "max_model_len",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--download-dir": "the hub cache (ARBITER_HF_CACHE_DIR)",
    # A multi-node launch gives each node these (vLLM's native multi-node mode:
    # `vllm serve ... --nnodes K --node-rank R --master-addr HEAD --master-port P`, the
    # workers `--headless`; docs "Parallelism and Scaling").
    "--nnodes": "tensor_parallel_hosts",
    "--node-rank": "tensor_parallel_hosts",
    "--master-addr": "tensor_parallel_hosts (the head's cluster_address)",
    "--master-port": "tensor_parallel_hosts",
    "--headless": "tensor_parallel_hosts",
    "--distributed-executor-backend": "multi_node",
}

_SIZE = r"[0-9]+(?:\.[0-9]+)?[bkmgBKMG]?"
# The docker run options a catalog entry may add, each as ONE `--opt=value` argv item.
# Anything that could mount host paths, publish ports, grant privileges or carry
# secrets (--volume, --mount, --privileged, --env-file, --network, --user ...) is
# deliberately absent: those are Arbiter's to decide. `--env` and `--device` have rules
# of their own below. Extending this list is a code change with a review, not a catalog
# edit.
CONTAINER_ARG_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "--shm-size": (re.compile(_SIZE), "a size like 16g"),
    "--ipc": (re.compile(r"host|private|shareable|none"), "host, private, shareable or none"),
    "--ulimit": (
        re.compile(r"(?:memlock|stack|nofile|core|nproc)=-?[0-9]+(?::-?[0-9]+)?"),
        "NAME=SOFT[:HARD] with NAME one of memlock, stack, nofile, core, nproc",
    ),
    "--cap-add": (re.compile(r"IPC_LOCK|SYS_NICE"), "IPC_LOCK or SYS_NICE"),
    "--runtime": (re.compile(r"nvidia|runc"), "nvidia or runc"),
    "--memory": (re.compile(_SIZE), "a size like 64g"),
    "--cpus": (re.compile(r"[0-9]+(?:\.[0-9]+)?"), "a number of CPUs like 8 or 2.5"),
    "--pids-limit": (re.compile(r"-?[0-9]+"), "an integer"),
    "--init": (re.compile(r"true|false"), "true or false"),
}


# The launch command each known image needs after its name (`docker run IMAGE COMMAND...`).
# vllm/vllm-openai's ENTRYPOINT is `vllm serve` (vLLM's docker/Dockerfile: ENTRYPOINT
# ["vllm", "serve"]), so only the model and flags follow it. NVIDIA's NGC image runs
# /opt/nvidia/nvidia_entrypoint.sh, which execs its arguments as a command, so it needs
# `vllm serve` spelled out (NVIDIA's DGX Spark vLLM playbook: `docker run ...
# nvcr.io/nvidia/vllm:25.09-py3 vllm serve MODEL`). Matched on the repository, any tag.
DEFAULT_COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vllm/vllm-openai", ()),
    ("docker.io/vllm/vllm-openai", ()),
    ("nvcr.io/nvidia/vllm", ("vllm", "serve")),
)


def image_repository(image: str) -> str:
    """The repository part of an image reference (no tag, no digest)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def default_command(image: str) -> list[str] | None:
    """The launch command a known image needs, or None when Arbiter does not know it."""
    repository = image_repository(image)
    for known, command in DEFAULT_COMMANDS:
        if repository == known:
            return list(command)
    return None


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "..."


def image_problem(text: str) -> str | None:
    """Why `text` is not a docker image reference, or None when it is one."""
    match = IMAGE_RE.fullmatch(text)
    if match is None or len(match.group("name")) > MAX_IMAGE_NAME:
        return (
            "must be a docker image reference like `vllm/vllm-openai:v0.11.0` "
            f"(lowercase repository, optional registry, tag and digest), got {_shown(text)}"
        )
    return None


def engine_flag_problem(item: str) -> str | None:
    """Why `item` is not one acceptable vLLM option, or None."""
    if not ENGINE_FLAG_RE.fullmatch(item):
        return (
            "must be one option like `--enable-prefix-caching` or `--kv-cache-dtype=fp8` "
            f"(starting with '--', printable, no whitespace), got {_shown(item)}"
        )
    # vLLM reads `--gpu_memory_utilization` as `--gpu-memory-utilization` (its
    # FlexibleArgumentParser turns underscores in option names into dashes), so the
    # managed flags are matched in that form.
    name = item.split("=", 1)[0].replace("_", "-")
    if name in MANAGED_ENGINE_FLAGS:
        return f"{name} is set by the launch setting {MANAGED_ENGINE_FLAGS[name]}"
    return None


# `--env=NAME=VALUE` for the transport settings of a multi-node model's collectives only:
# NCCL (NCCL_IB_HCA, NCCL_SOCKET_IFNAME, NCCL_DEBUG ...), Gloo, UCX, PyTorch's tensorpipe
# (TP_SOCKET_IFNAME), Open MPI (OMPI_MCA_*) and Ray. Never other names: secrets (HF_TOKEN,
# VLLM_API_KEY) must not sit in the catalog, and the rest is Arbiter's launch to set.
ENV_NAME_RE = re.compile(r"(?:NCCL|GLOO|UCX|RAY|OMPI_MCA)_[A-Za-z0-9_]+|TP_SOCKET_IFNAME")
ENV_NAMES_SHOWN = "NCCL_*, GLOO_*, UCX_*, RAY_*, OMPI_MCA_*, TP_SOCKET_IFNAME"
# Values as these libraries take them: `mlx5_0:1,mlx5_1:1`, `^lo,docker0`, `=enp1s0f1np1`,
# `10.0.0.0/24`, `INFO`; no whitespace, quotes or shell characters.
ENV_VALUE_RE = re.compile(r"[A-Za-z0-9_.,:=^/@+-]{1,256}")
# One node's own address: the same catalog value would reach every host. vLLM's
# examples/online_serving/run_cluster.sh gives each node its VLLM_HOST_IP and derives
# RAY_NODE_IP_ADDRESS / RAY_OVERRIDE_NODE_IP_ADDRESS from it.
PER_HOST_ENV = ("VLLM_HOST_IP", "RAY_NODE_IP_ADDRESS", "RAY_OVERRIDE_NODE_IP_ADDRESS")
# The RDMA devices a multi-node model's NCCL uses (ConnectX-7 on a DGX Spark): the
# directory, or one device below it; host path only (no `:container-path:permissions`).
DEVICE_RE = re.compile(r"/dev/infiniband(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)?")
NETWORK_OPTIONS = ("--network", "--net")
# What Arbiter sets from each host's cluster_interface (arbiter.engine.swaps.multi_node): one
# way to set them, and a catalog copy would silently win over the inventory's.
INTERFACE_ENV = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "UCX_NET_DEVICES")


def _env_problem(item: str, assignment: str) -> str | None:
    variable, has_value, value = assignment.partition("=")
    if variable == "VLLM_HOST_IP":
        return (
            "--env=VLLM_HOST_IP is not allowed: Arbiter sets it per host from the host's "
            "cluster_address in the inventory"
        )
    if variable in INTERFACE_ENV:
        return (
            f"--env={variable} is not allowed: Arbiter sets it per host from the host's "
            "cluster_interface in the inventory"
        )
    if variable in PER_HOST_ENV:
        return (
            f"--env={variable} is not allowed: it is one host's address, and these options go "
            "to every host alike; each host's address is its cluster_address in the inventory"
        )
    if not ENV_NAME_RE.fullmatch(variable):
        return (
            f"{_shown('--env=' + variable)} is not allowed: only {ENV_NAMES_SHOWN} may be set "
            "here (secrets and other settings never go in the catalog)"
        )
    if not has_value:
        # `--env=NAME` alone would copy NAME from the environment docker runs in.
        return f"must be --env={variable}=VALUE, got {_shown(item)}"
    if not ENV_VALUE_RE.fullmatch(value):
        return (
            f"must be --env={variable}=VALUE with VALUE 1-256 of letters, digits and "
            f"_ . , : = ^ / @ + - (no spaces or shell characters), got {_shown(item)}"
        )
    return None


def container_arg_problem(item: str) -> str | None:
    """Why `item` is not an allow-listed `--opt=value` docker run option, or None."""
    name, has_value, value = item.partition("=")
    if name == "--env":
        return _env_problem(item, value)
    if name == "--device":
        if has_value and DEVICE_RE.fullmatch(value):
            return None
        return (
            "must be --device=/dev/infiniband or a device below it, e.g. "
            f"--device=/dev/infiniband/uverbs0, got {_shown(item)}"
        )
    if name in NETWORK_OPTIONS:
        return (
            f"{name} is not allowed: Arbiter sets the container's network itself (host "
            "networking for multi-node models, a published port otherwise)"
        )
    rule = CONTAINER_ARG_RULES.get(name)
    if rule is None:
        allowed = ", ".join([*CONTAINER_ARG_RULES, "--device", "--env"])
        return f"{_shown(name)} is not an allowed docker option (allowed: {allowed})"
    pattern, expectation = rule
    if not has_value or not pattern.fullmatch(value):
        return f"must be {name}=VALUE with VALUE {expectation}, got {_shown(item)}"
    return None

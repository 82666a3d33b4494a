"""What a launch-setting value may look like: image references, engine flags, docker options.

Each value becomes exactly one argv item of `docker run` (see arbiter.engine.launch), so
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
}

_SIZE = r"[0-9]+(?:\.[0-9]+)?[bkmgBKMG]?"
# The docker run options a catalog entry may add, each as ONE `--opt=value` argv item.
# Anything that could mount host paths, publish ports, grant privileges or carry
# secrets (--volume, --mount, --privileged, --env, --env-file, --network, --user ...) is
# deliberately absent: those are Arbiter's to decide. Extending this list is a code
# change with a review, not a catalog edit.
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
    name = item.split("=", 1)[0]
    if name in MANAGED_ENGINE_FLAGS:
        return f"{name} is set by the launch setting {MANAGED_ENGINE_FLAGS[name]}"
    return None


def container_arg_problem(item: str) -> str | None:
    """Why `item` is not an allow-listed `--opt=value` docker run option, or None."""
    name, has_value, value = item.partition("=")
    rule = CONTAINER_ARG_RULES.get(name)
    if rule is None:
        allowed = ", ".join(CONTAINER_ARG_RULES)
        return f"{_shown(name)} is not an allowed docker option (allowed: {allowed})"
    pattern, expectation = rule
    if not has_value or not pattern.fullmatch(value):
        return f"must be {name}=VALUE with VALUE {expectation}, got {_shown(item)}"
    return None

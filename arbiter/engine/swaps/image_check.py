"""Pre-flight's look at the image on the host: does the launch command fit its entrypoint?

`docker run IMAGE COMMAND... MODEL --flags` runs the image's ENTRYPOINT with everything
after the image as its arguments. Two images a Spark user meets disagree about what
those arguments are: vllm/vllm-openai's entrypoint is `vllm serve` (vLLM's
docker/Dockerfile), so only the model and flags may follow; NVIDIA's NGC image runs
/opt/nvidia/nvidia_entrypoint.sh, which `exec`s its arguments as a command, so
`vllm serve` must be spelled out (flags alone die in bash's `exec`: "exec: --: invalid
option"). `vllm serve` after an entrypoint that already is `vllm serve` dies in vLLM's
argparse ("unrecognized arguments: serve MODEL"). An image pulled for another
architecture dies with "exec format error". Each of these is a container that exits at
once, seconds after a swap stopped the model it replaces, so pre-flight says it first.

One `docker image inspect` (entrypoint, cmd, architecture in one JSON object) and one
`uname -m`, concurrently. An image not on the host yet is pulled by the launch; it is
not inspected (a pull is not a read-only check).
"""

from __future__ import annotations

import asyncio
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arbiter.engine import ssh
from arbiter.errors import SshError

if TYPE_CHECKING:
    from arbiter.engine.swaps.preflight import LaunchPlan

READ_TIMEOUT = 15.0
VLLM_SERVE = ("vllm", "serve")
# The entrypoint of vllm/vllm-openai before `vllm serve` (vLLM's docker/Dockerfile then).
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# `uname -m` → the architecture names docker uses for images (OCI platforms).
MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
UNAME_ARGV = ["uname", "-m"]


def inspect_argv(image: str) -> list[str]:
    """`docker image inspect` of one image as one JSON object (docker's Engine API shape)."""
    return ["docker", "image", "inspect", "--format={{json .}}", "--", image]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of `docker image inspect` a launch depends on."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    architecture: str


def parse_inspect(stdout: str) -> ImageConfig | None:
    """From `--format={{json .}}`: `Config.Entrypoint`, `Config.Cmd`, `Architecture`."""
    try:
        data: dict[str, Any] = json.loads(stdout.strip().splitlines()[0])
    except (ValueError, IndexError):
        return None
    if not isinstance(data, dict):
        return None
    config = data.get("Config") or {}
    return ImageConfig(
        entrypoint=tuple(str(item) for item in config.get("Entrypoint") or ()),
        cmd=tuple(str(item) for item in config.get("Cmd") or ()),
        architecture=str(data.get("Architecture", "")),
    )


def runs_vllm_serve(words: Sequence[str]) -> bool:
    """`vllm serve` (or `/usr/local/bin/vllm serve`) at the start of an argv."""
    return len(words) >= 2 and posixpath.basename(words[0]) == VLLM_SERVE[0] and words[1] == "serve"


def shown(words: Sequence[str]) -> str:
    return json.dumps(list(words))


def fit_problems(
    image: str, command: Sequence[str], config: ImageConfig, host_name: str, host_arch: str
) -> list[str]:
    """Why the launch command and the image do not fit; empty when they do."""
    problems = []
    entrypoint = config.entrypoint
    if runs_vllm_serve(entrypoint) and runs_vllm_serve(command):
        problems.append(
            f"image {image}'s entrypoint is {shown(entrypoint)}; `vllm serve` after it "
            "becomes `vllm serve vllm serve MODEL` (vLLM: unrecognized arguments): "
            "set command to []"
        )
    elif API_SERVER_MODULE in (*entrypoint, *command):
        problems.append(
            f"image {image} runs {shown([*entrypoint, *command])}, vLLM's older server, "
            "which takes the model only as --model; Arbiter passes it positionally to "
            "`vllm serve`: use an image whose entrypoint is `vllm serve` (a newer "
            "vllm/vllm-openai tag) or that runs its arguments as a command"
        )
    elif not command and not runs_vllm_serve(entrypoint):
        if entrypoint:
            problems.append(
                f"image {image}'s entrypoint is {shown(entrypoint)}; it runs its arguments "
                'as a command: set command to ["vllm", "serve"]'
            )
        else:
            problems.append(
                f"image {image} has no entrypoint; docker would run the model name as the "
                'command: set command to ["vllm", "serve"]'
            )
    if host_arch and config.architecture and config.architecture != host_arch:
        problems.append(
            f"image {image} is built for linux/{config.architecture} but {host_name} is "
            f"linux/{host_arch}: use a tag published for {host_arch} (and "
            f"`docker image rm {image}` on {host_name} so the launch pulls the right one)"
        )
    return problems


async def image_fit(plan: LaunchPlan, *, reachable: bool = True) -> tuple[bool, str]:
    """Pre-flight's "image" check for `plan`: (ok, detail) (see the module docstring)."""
    if not reachable:
        return (False, "not checked: host unreachable")
    if not plan.image:
        return (False, "no image in the catalog")
    try:
        inspected, machine = await asyncio.gather(
            ssh.run(plan.target, inspect_argv(plan.image), timeout=READ_TIMEOUT, check=False),
            ssh.run(plan.target, UNAME_ARGV, timeout=READ_TIMEOUT, check=False),
        )
    except SshError as error:
        return (False, f"cannot inspect {plan.image}: {error.message}")
    if inspected.exit_status != 0:
        if "No such image" in inspected.stderr:
            return (True, f"{plan.image} is not on {plan.host_name} yet: pulled at launch")
        reason = inspected.stderr.strip() or f"status {inspected.exit_status}"
        return (False, f"docker image inspect {plan.image} failed: {reason}")
    config = parse_inspect(inspected.stdout)
    if config is None:
        return (False, f"cannot read docker image inspect of {plan.image}")
    uname = machine.stdout.strip() if machine.exit_status == 0 else ""
    host_arch = MACHINE_ARCH.get(uname, uname)
    problems = fit_problems(plan.image, plan.image_command, config, plan.host_name, host_arch)
    if problems:
        return (False, "; ".join(problems))
    runs = " ".join([*config.entrypoint, *plan.image_command]) or "(nothing)"
    return (
        True,
        f"{plan.image} on {plan.host_name} (linux/{config.architecture}): entrypoint "
        f"{shown(config.entrypoint)}, runs `{runs} MODEL ...`",
    )

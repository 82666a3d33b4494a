"""What a container's process does with its arguments: ENTRYPOINT + CMD, run like docker.

`docker run` joins the image's ENTRYPOINT (or `--entrypoint`) with the arguments after
the image, or with the image's CMD when none are given, into one argv; `--entrypoint`
also clears the image's CMD, and `--entrypoint=""` resets the entrypoint (docker/cli
cli/command/container/opts.go). The simulator follows that argv through the programs a
vLLM image has:

- `/opt/nvidia/nvidia_entrypoint.sh` (NVIDIA's NGC images): a bash script that prints
  NVIDIA's banner and ends in `exec "$@"`, so its arguments must be a command. Flags
  alone fail in bash's `exec` builtin: `line 67: exec: --: invalid option` and its usage
  line, status 2 (as logged by containers started with flags only, and by bash 5.2
  itself); a word that is no program: `exec: NAME: not found`, 127; a path that does not
  exist: `PATH: No such file or directory`, 127.
- `vllm`: vLLM's CLI. `vllm serve [model_tag] [options]` takes one positional; any
  other positional ends in argparse's `usage: vllm ...` and `vllm: error: unrecognized
  arguments: ...`, status 2, as `vllm serve vllm serve MODEL` does (vLLM's
  entrypoints/cli/main.py; argparse reports the extras through the top-level parser).
  `--model X` is moved to the front with vLLM's deprecation warning
  (vllm/utils/argparse_utils.py FlexibleArgumentParser.parse_args).
- `python3 -m vllm.entrypoints.openai.api_server`: the older server, flags only (the
  model as `--model`; a positional is an unrecognized argument, status 2).

An image pulled for another architecture fails in runc's exec before any of this:
`exec /usr/local/bin/vllm: exec format error`, 255.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass

from arbiter.simulator.docker_images import NVIDIA_ENTRYPOINT, ImageSpec

# Where PATH lookup finds the programs of a vLLM image.
PROGRAMS = {
    "vllm": "/usr/local/bin/vllm",
    "python3": "/usr/bin/python3",
    "python": "/usr/bin/python",
    "bash": "/bin/bash",
    "sh": "/bin/sh",
}
PATHS = {*PROGRAMS.values(), NVIDIA_ENTRYPOINT}
# The line of `exec "$@"` in nvidia_entrypoint.sh as 25.x images report it (26.x images
# report line 55: the script changed between releases).
NVIDIA_EXEC_LINE = 67
EXEC_USAGE = "exec: usage: exec [-cl] [-a name] [command [argument ...]] [redirection ...]"
VLLM_USAGE = "usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ..."
VLLM_SUBCOMMANDS = ("chat", "complete", "serve", "bench", "collect-env", "run-batch")
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# vLLM flags that take no value: the token after one of them is a positional.
_BOOLEAN_PREFIXES = ("--enable-", "--disable-", "--no-")
_BOOLEAN_FLAGS = {"--enforce-eager", "--trust-remote-code", "--headless", "--help", "-h"}
FORMAT_ERROR_STATUS = 255  # runc's exec failure, as docker reports the container's exit


@dataclass(frozen=True)
class Serve:
    """`vllm serve` starts: its arguments ([model, *options]) and what was logged before."""

    args: list[str]
    preamble: list[str]


@dataclass(frozen=True)
class Exited:
    """A process that fails at once: what it printed, and its exit status."""

    stdout: list[str]
    stderr: list[str]
    status: int


def container_argv(
    spec: ImageSpec, entrypoint_option: str | None, args: list[str]
) -> tuple[list[str], list[str]]:
    """(entrypoint, command) of a container, as docker builds them from image and options."""
    if entrypoint_option is None:
        entrypoint = list(spec.entrypoint or [])
        command = list(args) if args else list(spec.cmd or [])
    else:  # `--entrypoint X` replaces the entrypoint and drops the image's CMD
        entrypoint = [entrypoint_option] if entrypoint_option else []
        command = list(args)
    return entrypoint, command


def start_error(argv: list[str], workdir: str) -> str | None:
    """runc's refusal of a program that is not in the image (`docker run` exits 127)."""
    program = argv[0]
    if program in PROGRAMS or program in PATHS:
        return None
    if "/" in program:
        reason = f"stat {program}: no such file or directory"
    else:
        reason = "executable file not found in $PATH"
    return (
        "Error response from daemon: failed to create task for container: failed to create "
        "shim task: OCI runtime create failed: runc create failed: unable to start "
        f'container process: error during container init: exec: "{program}": {reason}: unknown'
    )


def run(
    argv: list[str], *, workdir: str, mounts: list[str], arch_matches: bool = True
) -> Serve | Exited:
    """What `argv` ends up running (`vllm serve` and its arguments), or how it fails."""
    program = PROGRAMS.get(argv[0], argv[0])
    if not arch_matches:
        return Exited([], [f"exec {program}: exec format error"], FORMAT_ERROR_STATUS)
    if program == NVIDIA_ENTRYPOINT:
        return _nvidia_entrypoint(argv[1:], workdir, mounts)
    return _program(argv)


def _nvidia_entrypoint(args: list[str], workdir: str, mounts: list[str]) -> Serve | Exited:
    banner = [
        "",
        "==========",
        "== vLLM ==",
        "==========",
        "",
        "NVIDIA Release 25.09 (simulated)",
        "",
        "This container image and its contents are governed by the NVIDIA Deep Learning "
        "Container License.",
        "By pulling and using the container, you accept the terms and conditions of this license:",
        "https://developer.nvidia.com/ngc/nvidia-deep-learning-container-license",
        "",
    ]
    where = f"{NVIDIA_ENTRYPOINT}: line {NVIDIA_EXEC_LINE}"
    if not args:  # `exec /bin/bash` with no terminal: reads EOF and exits
        return Exited(banner, [], 0)
    if args[0] == "--":
        args = args[1:]
    elif args[0].startswith("-"):
        option = "--" if args[0].startswith("--") else args[0][:2]
        return Exited(banner, [f"{where}: exec: {option}: invalid option", EXEC_USAGE], 2)
    if not args:
        return Exited(banner, [], 0)
    name = args[0]
    if "/" in name:
        path = posixpath.normpath(posixpath.join(workdir, name))
        if path in PATHS:
            outcome = _program([path, *args[1:]])
            return _with_banner(banner, outcome)
        if any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
            return Exited(
                banner,
                [
                    f"{where}: {path}: Is a directory",
                    f"{where}: exec: {path}: cannot execute: Is a directory",
                ],
                126,
            )
        return Exited(banner, [f"{where}: {path}: No such file or directory"], 127)
    if name not in PROGRAMS:
        return Exited(banner, [f"{where}: exec: {name}: not found"], 127)
    return _with_banner(banner, _program(args))


def _with_banner(banner: list[str], outcome: Serve | Exited) -> Serve | Exited:
    if isinstance(outcome, Exited):
        return Exited(banner + outcome.stdout, outcome.stderr, outcome.status)
    return Serve(outcome.args, banner + outcome.preamble)


def _program(argv: list[str]) -> Serve | Exited:
    name = posixpath.basename(argv[0])
    if name == "vllm":
        return _vllm_cli(argv[1:])
    if name in ("python3", "python") and argv[1:3] == ["-m", API_SERVER_MODULE]:
        # The older server takes the model only as --model (no model_tag positional).
        extras = _positionals(argv[3:])
        if extras:
            return Exited(
                [],
                [
                    "usage: api_server.py [-h] [options] (simulated)",
                    f"api_server.py: error: unrecognized arguments: {' '.join(extras)}",
                ],
                2,
            )
        moved = _move_model_first(argv[3:])
        return moved if isinstance(moved, Exited) else Serve(moved, [])
    return Exited([], [f"sim: {' '.join(argv[:3])} is not simulated (only vLLM's server)"], 2)


def _vllm_cli(args: list[str]) -> Serve | Exited:
    subcommand = next((arg for arg in args if not arg.startswith("-")), None)
    if subcommand is None:
        return Exited([VLLM_USAGE, "", "vLLM CLI"], [], 0)  # no subcommand: the help
    if subcommand not in VLLM_SUBCOMMANDS:
        choices = ", ".join(VLLM_SUBCOMMANDS)
        return Exited(
            [],
            [
                VLLM_USAGE,
                f"vllm: error: argument subparser: invalid choice: '{subcommand}' "
                f"(choose from {choices})",
            ],
            2,
        )
    if subcommand != "serve":
        return Exited([], [f"sim: vllm {subcommand} is not simulated"], 2)
    at = args.index("serve")
    serve_args = [*args[:at], *args[at + 1 :]]
    notes: list[str] = []
    if any(_is_model_flag(arg) for arg in serve_args):
        notes.append(
            f"WARNING {time.strftime('%m-%d %H:%M:%S')} [argparse_utils.py:257] With "
            "`vllm serve`, you should provide the model as a positional argument or in a "
            "config file instead of via the `--model` option. The `--model` option will be "
            "removed in a future version."
        )
    moved = _move_model_first(serve_args)
    if isinstance(moved, Exited):
        return moved
    extras = _positionals(moved)[1:]
    if extras:
        return Exited(
            notes, [VLLM_USAGE, f"vllm: error: unrecognized arguments: {' '.join(extras)}"], 2
        )
    return Serve(moved, notes)


def _is_model_flag(arg: str) -> bool:
    return arg == "--model" or arg.startswith("--model=")


def _move_model_first(args: list[str]) -> list[str] | Exited:
    """`--model X` moved to the front as the positional, as vLLM's parser does."""
    at = next((i for i, arg in enumerate(args) if _is_model_flag(arg)), None)
    if at is None:
        return list(args)
    if args[at] == "--model":
        if at + 1 >= len(args) or args[at + 1].startswith("-"):
            return Exited(
                [], [VLLM_USAGE, "vllm: error: argument --model: expected one argument"], 2
            )
        return [args[at + 1], *args[:at], *args[at + 2 :]]
    return [args[at].removeprefix("--model="), *args[:at], *args[at + 1 :]]


def _positionals(args: list[str]) -> list[str]:
    """The arguments argparse would take as positionals (not options or their values)."""
    found = []
    takes_value = False
    for arg in args:
        if arg.startswith("-") and len(arg) > 1:
            name = arg.split("=", 1)[0].replace("_", "-")
            boolean = name in _BOOLEAN_FLAGS or name.startswith(_BOOLEAN_PREFIXES)
            takes_value = "=" not in arg and not boolean
            continue
        if takes_value:
            takes_value = False
            continue
        found.append(arg)
    return found

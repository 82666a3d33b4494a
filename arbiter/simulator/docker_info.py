"""`docker info` on a simulated host, and docker's answer to a user outside the docker group.

`docker info --format '{{json .Runtimes}}'` prints the daemon's runtimes as one JSON
object keyed by name; each value is moby's `system.Runtime` (`path`, `runtimeArgs`,
omitted when empty: docker/cli vendor/github.com/moby/moby/api/types/system/runtime.go).
A host with NVIDIA's container toolkit configured (`nvidia-ctk runtime configure
--runtime=docker`) lists `nvidia` next to runc.
"""

from __future__ import annotations

import json

from arbiter.simulator.docker_images import ENGINE_VERSION
from arbiter.simulator.shell import Io

# docker 27's client (moby client/request.go before 2025-07: errors.Wrapf(err,
# "permission denied while trying to connect to the Docker daemon socket at %v", host));
# the first request is the API version negotiation's HEAD /_ping. Exit status 1.
PERMISSION_DENIED = (
    "permission denied while trying to connect to the Docker daemon socket at "
    'unix:///var/run/docker.sock: Head "http://%2Fvar%2Frun%2Fdocker.sock/_ping": '
    "dial unix /var/run/docker.sock: connect: permission denied\n"
)


def runtimes(nvidia: bool) -> dict[str, dict[str, str]]:
    found = {"io.containerd.runc.v2": {"path": "runc"}, "runc": {"path": "runc"}}
    if nvidia:
        found["nvidia"] = {"path": "nvidia-container-runtime"}
    return dict(sorted(found.items()))  # Go's encoding/json sorts map keys


def info(args: list[str], io: Io, nvidia: bool) -> int:
    """`docker info` with `--format '{{json .Runtimes}}'`, `{{.ServerVersion}}` or none."""
    fmt = None
    rest = iter(args)
    for arg in rest:
        if arg in ("-f", "--format"):
            fmt = next(rest, None)
            if fmt is None:
                io.err(f"flag needs an argument: {arg}\nSee 'docker info --help'.\n")
                return 125
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1]
        else:
            io.err(
                "\"docker info\" accepts no arguments.\nSee 'docker info --help'.\n\n"
                "Usage:  docker info [OPTIONS]\n\nDisplay system-wide information\n"
            )
            return 1
    found = runtimes(nvidia)
    if fmt is None:
        io.out(
            "Client: Docker Engine - Community (simulated)\n"
            f" Version:    {ENGINE_VERSION}\n\nServer:\n"
            f" Server Version: {ENGINE_VERSION}\n"
            f" Runtimes: {' '.join(found)}\n"
            " Default Runtime: runc\n"
        )
        return 0
    normalized = fmt.replace(" ", "")
    if normalized == "{{json.Runtimes}}":
        io.out(json.dumps(found, separators=(",", ":")) + "\n")
        return 0
    if normalized == "{{.ServerVersion}}":
        io.out(f"{ENGINE_VERSION}\n")
        return 0
    io.err(f"sim: docker info: the format {fmt!r} is not simulated\n")
    return 2

"""`docker ps` and `docker inspect`, plus the argument checks every subcommand shares.

Each command takes the argv after its name, writes to the session's `Io` and returns
the exit status the real CLI would return.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from arbiter.simulator.docker_format import (
    DEFAULT_PS_TABLE,
    TemplateError,
    created_at,
    human_duration,
    ps_format,
    render,
    rfc3339,
    table_header,
    tabwriter,
)
from arbiter.simulator.dockerd import Container, Daemon
from arbiter.simulator.pflags import Flag, FlagError, Parsed, parse
from arbiter.simulator.shell import Io

PS_FLAGS = [
    Flag("all", "a", "bool"),
    Flag("quiet", "q", "bool"),
    Flag("filter", "f", "list"),
    Flag("format"),
    Flag("no-trunc", None, "bool"),
    Flag("last", "n", "int"),
    Flag("latest", "l", "bool"),
    Flag("size", "s", "bool"),
]
INSPECT_FLAGS = [Flag("format", "f"), Flag("size", "s", "bool"), Flag("type")]
PS_FILTERS = {"name", "status", "id", "label", "ancestor", "exited", "network"}
STATUSES = {"created", "restarting", "running", "removing", "paused", "exited", "dead"}
USAGE = {
    "ps": ("docker ps [OPTIONS]", "List containers", None),
    "logs": ("docker logs [OPTIONS] CONTAINER", "Fetch the logs of a container", "exactly 1"),
    "stop": (
        "docker stop [OPTIONS] CONTAINER [CONTAINER...]",
        "Stop one or more running containers",
        "at least 1",
    ),
    "rm": (
        "docker rm [OPTIONS] CONTAINER [CONTAINER...]",
        "Remove one or more containers",
        "at least 1",
    ),
    "inspect": (
        "docker inspect [OPTIONS] NAME|ID [NAME|ID...]",
        "Return low-level information on Docker objects",
        "at least 1",
    ),
    "pull": (
        "docker pull [OPTIONS] NAME[:TAG|@DIGEST]",
        "Download an image from a registry",
        "exactly 1",
    ),
}


def parse_args(command: str, argv: list[str], flags: list[Flag], io: Io) -> Parsed | int:
    """Flags and argument count checked like cobra does; an int is the exit status."""
    try:
        parsed = parse(argv, flags)
    except FlagError as error:
        io.err(f"{error}\nSee 'docker {command} --help'.\n")
        return 125
    usage, short, needs = USAGE[command]
    count = len(parsed.args)
    wrong = (needs == "exactly 1" and count != 1) or (needs == "at least 1" and count < 1)
    if wrong:
        noun = needs.split()[-1] == "1" and "argument" or "arguments"
        io.err(
            f"\"docker {command}\" requires {needs} {noun}.\nSee 'docker {command} --help'."
            f"\n\nUsage:  {usage}\n\n{short}\n"
        )
        return 1
    return parsed


def no_such_container(io: Io, ref: str) -> None:
    io.err(f"Error response from daemon: No such container: {ref}\n")


# -- ps --------------------------------------------------------------------------------
def ps_context(c: Container, no_trunc: bool, now: float) -> dict[str, Any]:
    command = " ".join(entrypoint(c) + container_command(c))
    if not no_trunc and len(command) > 20:
        command = command[:19] + "…"
    if c.status == "running":
        status = f"Up {human_duration(now - (c.started_at or now))}"
    elif c.status == "exited":
        status = f"Exited ({c.exit_code}) {human_duration(now - (c.finished_at or now))} ago"
    else:
        status = "Created"
    ports = (
        ""
        if c.network == "host" or c.status != "running"
        else ", ".join(
            f"{p['host_ip'] or '0.0.0.0'}:{p['host_port']}->{p['container_port']}/{p['proto']}"  # noqa: S104
            for p in c.ports
        )
    )
    return {
        "Command": json.dumps(command, ensure_ascii=False),
        "CreatedAt": created_at(c.created),
        "ID": c.id if no_trunc else c.short_id,
        "Image": c.image,
        # Sorted k=v pairs; Networks by name; Ports only what is published, so nothing
        # under host networking (docker/cli cli/command/formatter/container.go).
        "Labels": ",".join(sorted(f"{k}={v}" for k, v in c.labels.items())),
        "LocalVolumes": "0",
        "Mounts": ",".join(b.split(":")[0] for b in c.binds),
        "Names": c.name,
        "Networks": c.network,
        "Ports": ports,
        "RunningFor": f"{human_duration(now - c.created)} ago",
        "Size": "0B",
        "State": c.status,
        "Status": status,
    }


def _matches(c: Container, filters: dict[str, list[str]]) -> bool:
    checks = {
        "name": lambda v: re.search(v, c.name) is not None,
        "status": lambda v: c.status == v,
        "id": lambda v: c.id.startswith(v),
        "label": lambda v: (
            v.partition("=")[0] in c.labels
            and (not v.partition("=")[1] or c.labels[v.partition("=")[0]] == v.partition("=")[2])
        ),
        "ancestor": lambda v: c.image == v or c.image.split(":")[0] == v,
        "exited": lambda v: c.status == "exited" and str(c.exit_code) == v,
        "network": lambda v: c.network == v,
    }
    return all(any(checks[key](v) for v in values) for key, values in filters.items())


async def ps(daemon: Daemon, argv: list[str], io: Io) -> int:
    parsed = parse_args("ps", argv, PS_FLAGS, io)
    if isinstance(parsed, int):
        return parsed
    filters: dict[str, list[str]] = {}
    for item in parsed.all("filter"):
        key, eq, value = item.partition("=")
        if not eq:
            io.err(
                f'invalid argument "{item}" for "-f, --filter" flag: bad format of filter '
                "(expected name=value)\nSee 'docker ps --help'.\n"
            )
            return 125
        if key not in PS_FILTERS:
            io.err(f"Error response from daemon: invalid filter '{key}'\n")
            return 1
        if key == "status" and value not in STATUSES:
            io.err(f"Error response from daemon: invalid filter 'status={value}'\n")
            return 1
        if key == "name":
            try:
                re.compile(value)  # dockerd matches names as Go regexps
            except re.error as error:
                io.err(f"Error response from daemon: error parsing regexp: {error}: `{value}`\n")
                return 1
        filters.setdefault(key, []).append(value)
    daemon.refresh()
    show_all = parsed.flag("all") or "status" in filters or "exited" in filters
    containers = sorted(daemon.containers.values(), key=lambda c: c.created, reverse=True)
    if parsed.given("last") or parsed.flag("latest"):
        containers = containers[: 1 if parsed.flag("latest") else int(parsed.last("last") or 0)]
    elif not show_all:
        containers = [c for c in containers if c.running]
    selected = [c for c in containers if _matches(c, filters)]
    no_trunc = parsed.flag("no-trunc")
    if parsed.flag("quiet"):
        io.out("".join(f"{c.id if no_trunc else c.short_id}\n" for c in selected))
        return 0
    template = parsed.last("format") or DEFAULT_PS_TABLE
    body = ps_format(template)
    now = time.time()
    try:
        lines = [render(body, ps_context(c, no_trunc, now)) for c in selected]
    except TemplateError as error:
        io.err(f"{error}\n")
        return 1
    if template.startswith("table"):
        io.out(tabwriter([table_header(body), *lines]))
    else:
        io.out("".join(f"{line}\n" for line in lines))
    return 0


# -- inspect ---------------------------------------------------------------------------
def entrypoint(c: Container) -> list[str]:
    """`--entrypoint` (empty: none), else the image's ENTRYPOINT (docker_images)."""
    custom = c.options.get("entrypoint")
    if custom is not None:
        return [custom] if custom else []
    return list(c.options.get("image_entrypoint") or [])


def container_command(c: Container) -> list[str]:
    """The arguments after the image, else the image's CMD (dropped by `--entrypoint`)."""
    if c.args or c.options.get("entrypoint") is not None:
        return list(c.args)
    return list(c.options.get("image_cmd") or [])


def inspect_data(c: Container) -> dict[str, Any]:
    running = c.status == "running"
    port_map: dict[str, Any] = {}
    for p in c.ports:
        port_map.setdefault(f"{p['container_port']}/{p['proto']}", []).append(
            {"HostIp": p["host_ip"] or "0.0.0.0", "HostPort": str(p["host_port"])}  # noqa: S104
        )
    gpu = c.options.get("gpu_request")
    restart, _, retries = (c.options.get("restart") or "no").partition(":")
    mounts = []
    for bind in c.binds:
        parts = bind.split(":")
        source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        mode = parts[2] if len(parts) > 2 else ""
        mounts.append(
            {
                "Type": "bind" if source.startswith("/") else "volume",
                "Source": source,
                "Destination": target,
                "Mode": mode,
                "RW": "ro" not in mode.split(","),
                "Propagation": "rprivate",
            }
        )
    path, *args = entrypoint(c) + container_command(c) or [""]
    return {
        "Id": c.id,
        "Created": rfc3339(c.created),
        "Path": path,
        "Args": args,
        "State": {
            "Status": c.status,
            "Running": running,
            "Paused": False,
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": c.pid if running else 0,
            "ExitCode": c.exit_code,
            "Error": c.error,
            "StartedAt": rfc3339(c.started_at),
            "FinishedAt": rfc3339(c.finished_at),
        },
        "Image": "sha256:" + hashlib.sha256(c.image.encode()).hexdigest(),
        "Name": f"/{c.name}",
        "RestartCount": 0,
        "Driver": "overlay2",
        "Platform": "linux",
        "HostConfig": {
            "Binds": c.binds or None,
            "NetworkMode": c.network,
            "PortBindings": port_map,
            "RestartPolicy": {"Name": restart, "MaximumRetryCount": int(retries or 0)},
            "AutoRemove": bool(c.options.get("auto_remove")),
            "IpcMode": c.options.get("ipc") or "private",
            "ShmSize": c.options.get("shm_size") or 67108864,
            "Runtime": c.options.get("runtime") or "runc",
            "Init": c.options.get("init"),
            "Devices": [
                {
                    "PathOnHost": d["path_on_host"],
                    "PathInContainer": d["path_in_container"],
                    "CgroupPermissions": d["cgroup_permissions"],
                }
                for d in c.options.get("devices") or []
            ],
            "DeviceRequests": None
            if gpu is None
            else [
                {
                    "Driver": "",
                    "Count": gpu["count"],
                    "DeviceIDs": gpu["devices"] or None,
                    "Capabilities": [["gpu"]],
                    "Options": {},
                }
            ],
        },
        "Mounts": mounts,
        "Config": {
            "Hostname": c.short_id,
            # Values are never kept by the simulator; names are what tests assert on.
            "Env": [f"{name}=***" for name in c.env_names],
            "Cmd": container_command(c) or None,
            "Image": c.image,
            "Entrypoint": entrypoint(c) or None,
            "Labels": c.labels,
            "ExposedPorts": {key: {} for key in port_map} or None,
        },
        "NetworkSettings": {
            "Ports": port_map if running else {},
            "Networks": {c.network: {}},
        },
    }


async def inspect(daemon: Daemon, argv: list[str], io: Io) -> int:
    parsed = parse_args("inspect", argv, INSPECT_FLAGS, io)
    if isinstance(parsed, int):
        return parsed
    daemon.refresh()
    found, status = [], 0
    for ref in parsed.args:
        container = daemon.find(ref)
        if container is None:
            status = 1
            continue
        found.append(inspect_data(container))
    template = parsed.last("format")
    if template:
        try:
            io.out("".join(render(template, item, "*types.ContainerJSON") + "\n" for item in found))
        except TemplateError as error:
            io.err(f"{error}\n")
            return 1
    else:
        io.out(json.dumps(found, indent=4) + "\n")
    for ref in parsed.args:
        if daemon.find(ref) is None:
            io.err(f"Error: No such object: {ref}\n")
    return status

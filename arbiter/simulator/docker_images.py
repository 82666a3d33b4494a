"""`docker pull`, `docker images`, `docker image inspect` and `docker version`."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable

from arbiter.simulator.docker_format import render, tabwriter
from arbiter.simulator.docker_opts import DockerError, ImageRef, parse_reference
from arbiter.simulator.docker_query import parse_args
from arbiter.simulator.dockerd import Daemon
from arbiter.simulator.pflags import Flag
from arbiter.simulator.shell import Io

ENGINE_VERSION = "27.3.1"
API_VERSION = "1.47"
PULL_FLAGS = [Flag("all-tags", "a", "bool"), Flag("quiet", "q", "bool"), Flag("platform")]


# -- images ----------------------------------------------------------------------------
async def pull_progress(ref: ImageRef, write: Callable[[str], None], present: bool) -> None:
    """The pull output, a line at a time (the real one streams too)."""
    digest = hashlib.sha256(ref.familiar.encode()).hexdigest()
    tag = ref.tag or "latest"
    if present:
        write(
            f"{tag}: Pulling from {ref.remote_path}\nDigest: sha256:{digest}\n"
            f"Status: Image is up to date for {ref.familiar}\n"
        )
        return
    layers = [hashlib.sha256(f"{digest}{i}".encode()).hexdigest()[:12] for i in range(3)]
    write(f"{tag}: Pulling from {ref.remote_path}\n")
    for step in (
        "Pulling fs layer",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
        "Pull complete",
    ):
        for layer in layers:
            write(f"{layer}: {step}\n")
        await asyncio.sleep(0.005)
    write(f"Digest: sha256:{digest}\nStatus: Downloaded newer image for {ref.familiar}\n")


async def pull(daemon: Daemon, argv: list[str], io: Io) -> int:
    parsed = parse_args("pull", argv, PULL_FLAGS, io)
    if isinstance(parsed, int):
        return parsed
    try:
        ref = parse_reference(parsed.args[0])
    except DockerError as error:
        io.err(f"{error}\n")
        return 1
    present = ref.familiar in daemon.images
    await pull_progress(ref, io.out if not parsed.flag("quiet") else (lambda _t: None), present)
    daemon.images.add(ref.familiar)
    daemon.save()
    io.out(f"{ref.canonical}\n")
    return 0


async def images(daemon: Daemon, argv: list[str], io: Io) -> int:
    rows = ["REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE"]
    for name in sorted(daemon.images):
        repo, _, tag = name.rpartition(":")
        image_id = hashlib.sha256(name.encode()).hexdigest()[:12]
        rows.append(f"{repo}\t{tag}\t{image_id}\t2 weeks ago\t9.87GB")
    io.out(tabwriter(rows))
    return 0


async def image_inspect(daemon: Daemon, argv: list[str], io: Io) -> int:
    found, status = [], 0
    for text in [a for a in argv if not a.startswith("-")]:
        try:
            name = parse_reference(text).familiar
        except DockerError:
            name = text
        if name not in daemon.images:
            io.err(f"Error: No such image: {text}\n")
            status = 1
            continue
        image_id = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        found.append({"Id": image_id, "RepoTags": [name], "Architecture": "amd64", "Os": "linux"})
    io.out(json.dumps(found, indent=4) + "\n")
    return status


async def version(daemon: Daemon, argv: list[str], io: Io) -> int:
    data = {
        "Client": {"Version": ENGINE_VERSION, "ApiVersion": API_VERSION, "Os": "linux"},
        "Server": {"Version": ENGINE_VERSION, "ApiVersion": API_VERSION, "Os": "linux"},
    }
    template = next((a.split("=", 1)[1] for a in argv if a.startswith("--format=")), None)
    if template is None and ("--format" in argv or "-f" in argv):
        flag_at = argv.index("--format") if "--format" in argv else argv.index("-f")
        template = argv[flag_at + 1] if flag_at + 1 < len(argv) else None
    if template:
        io.out(render(template, data, "types.VersionResponse") + "\n")
        return 0
    io.out(
        f"Client: Docker Engine - Community (simulated)\n Version:           {ENGINE_VERSION}\n"
        f" API version:       {API_VERSION}\n\nServer: Docker Engine - Community (simulated)\n"
        f" Engine:\n  Version:          {ENGINE_VERSION}\n  API version:      {API_VERSION}\n"
    )
    return 0

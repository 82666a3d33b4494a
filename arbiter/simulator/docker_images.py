"""`docker pull`, `docker images`, `docker image inspect` and `docker version`.

Images carry what `docker run` needs from them: ENTRYPOINT, CMD, working directory and
the platforms the registry has them for (`KNOWN_IMAGES`). A pull picks the host's
platform from a multi-platform image (or the one `--platform` names) and records the
architecture it got, which `docker image inspect` reports and `docker run` checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from arbiter.simulator.docker_format import TemplateError, render, tabwriter
from arbiter.simulator.docker_opts import DockerError, ImageRef, parse_reference
from arbiter.simulator.docker_query import parse_args
from arbiter.simulator.dockerd import Daemon
from arbiter.simulator.pflags import Flag, FlagError, parse
from arbiter.simulator.shell import Io
from arbiter.simulator.timing import IMAGE_LAYERS, SimTiming

ENGINE_VERSION = "27.3.1"
API_VERSION = "1.47"
PULL_FLAGS = [Flag("all-tags", "a", "bool"), Flag("quiet", "q", "bool"), Flag("platform")]
IMAGE_INSPECT_FLAGS = [Flag("format", "f"), Flag("platform")]
# `uname -m` → the architecture names of OCI platforms (what docker shows and matches).
MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
NVIDIA_ENTRYPOINT = "/opt/nvidia/nvidia_entrypoint.sh"


@dataclass(frozen=True)
class ImageSpec:
    """What a registry holds for one repository (any tag): its config and platforms.

    `platforms` with more than one entry is a multi-platform index: a pull picks the
    host's entry or fails with "no matching manifest". A single entry is a plain
    manifest: it pulls anywhere, and only running it on another architecture fails.
    """

    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    platforms: tuple[str, ...] = ("amd64", "arm64")
    workdir: str = "/"


KNOWN_IMAGES: dict[str, ImageSpec] = {
    # vLLM's docker/Dockerfile (vllm-openai target): ENTRYPOINT ["vllm", "serve"], no CMD;
    # recent tags are published for amd64 and arm64 (`docker image inspect` on a Jetson
    # Thor: Entrypoint=["vllm","serve"] Cmd=null Architecture=arm64,
    # NVIDIA-AI-IOT/jetson-ai-lab#420). Tags before the switch to `vllm serve` had
    # ["python3", "-m", "vllm.entrypoints.openai.api_server"]; they are not simulated.
    "vllm/vllm-openai": ImageSpec(("vllm", "serve"), None, workdir="/vllm-workspace"),
    # NVIDIA's NGC vLLM image (the DGX Spark playbooks' `nvcr.io/nvidia/vllm:25.09-py3`,
    # amd64 and arm64): /opt/nvidia/nvidia_entrypoint.sh prints NVIDIA's banner and
    # `exec "$@"`s its arguments, so the command (`vllm serve MODEL ...`) must be given.
    "nvcr.io/nvidia/vllm": ImageSpec((NVIDIA_ENTRYPOINT,), None, workdir="/workspace"),
}
# An image the table does not know is taken to be built FROM vllm/vllm-openai (the
# simulator's only kind of server); tests register others with `register_image`.
DEFAULT_IMAGE = KNOWN_IMAGES["vllm/vllm-openai"]


def register_image(repository: str, spec: ImageSpec) -> None:
    """Make `repository` (no tag) pull and run as `spec` (tests: monkeypatch.setitem)."""
    KNOWN_IMAGES[repository] = spec


def image_spec(ref: ImageRef) -> ImageSpec:
    repository = ref.repository
    for prefix in ("docker.io/", "index.docker.io/"):
        repository = repository.removeprefix(prefix)
    return KNOWN_IMAGES.get(repository, DEFAULT_IMAGE)


def platform_name(arch: str) -> str:
    """How docker prints a platform: arm64 is shown with its variant (linux/arm64/v8)."""
    return "linux/arm64/v8" if arch == "arm64" else f"linux/{arch}"


def requested_arch(platform: str | None) -> str | None:
    """The architecture of a `--platform` value (`linux/arm64`, `linux/arm64/v8`, `amd64`)."""
    if not platform:
        return None
    parts = platform.lower().split("/")
    arch = parts[1] if len(parts) > 1 and parts[0] == "linux" else parts[0]
    return {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}.get(arch, arch)


def pulled_arch(daemon: Daemon, ref: ImageRef, platform: str | None) -> str:
    """The architecture a pull of `ref` gets on this host, or DockerError like dockerd."""
    spec = image_spec(ref)
    wanted = requested_arch(platform) or daemon.arch
    if len(spec.platforms) == 1 and platform is None:
        return spec.platforms[0]  # a plain manifest: pulled as it is
    if wanted not in spec.platforms:
        raise DockerError(
            "Error response from daemon: no matching manifest for "
            f"{platform_name(wanted)} in the manifest list entries"
        )
    return wanted


def arch_warning(daemon: Daemon, name: str, platform: str | None) -> str | None:
    """docker run's warning for an image of another platform (when none was requested)."""
    arch = daemon.image_archs.get(name, daemon.arch)
    if platform is not None or arch == daemon.arch:
        return None
    return (
        f"WARNING: The requested image's platform ({platform_name(arch)}) does not match "
        f"the detected host platform ({platform_name(daemon.arch)}) and no specific "
        "platform was requested\n"
    )


def add_image(daemon: Daemon, ref: ImageRef, arch: str) -> None:
    daemon.images.add(ref.familiar)
    daemon.image_archs[ref.familiar] = arch


# -- images ----------------------------------------------------------------------------
async def pull_progress(
    ref: ImageRef,
    write: Callable[[str], None],
    present: bool,
    timing: SimTiming | None = None,
    closed: Callable[[], bool] = lambda: False,
) -> bool:
    """The pull output as docker prints it without a TTY, spread over the pull's time.

    docker/cli's jsonmessage.Display drops every message that carries progress when its
    output is not a terminal, so "Downloading" and "Extracting" never show: each layer
    prints its status changes only ("Pulling fs layer", "Waiting" beyond dockerd's 3
    concurrent downloads, "Verifying Checksum", "Download complete", "Pull complete").
    Returns False when the client went away first: the real CLI dies of SIGPIPE at its
    next write and dockerd cancels a transfer nobody watches, so nothing is stored.
    """
    timing = timing or SimTiming()
    digest = hashlib.sha256(ref.familiar.encode()).hexdigest()
    tag = ref.tag or "latest"
    if present:
        write(
            f"{tag}: Pulling from {ref.remote_path}\nDigest: sha256:{digest}\n"
            f"Status: Image is up to date for {ref.familiar}\n"
        )
        return True
    count = IMAGE_LAYERS if timing.realistic else 3
    layers = [hashlib.sha256(f"{digest}{i}".encode()).hexdigest()[:12] for i in range(count)]
    # Layer sizes: a few large ones (CUDA, torch, vLLM) and small ones, stable per image.
    weights = [1 + int(layer[:2], 16) % 16 for layer in layers]
    seconds = timing.pull_seconds(timing.image_bytes(ref.repository))
    write(f"{tag}: Pulling from {ref.remote_path}\n")
    for index, layer in enumerate(layers):
        write(f"{layer}: {'Pulling fs layer' if index < 3 else 'Waiting'}\n")
    for layer, weight in zip(layers, weights, strict=True):
        await asyncio.sleep(seconds * weight / sum(weights))
        if closed():
            return False
        write(f"{layer}: Verifying Checksum\n{layer}: Download complete\n")
        write(f"{layer}: Pull complete\n")
    write(f"Digest: sha256:{digest}\nStatus: Downloaded newer image for {ref.familiar}\n")
    return True


async def pull(daemon: Daemon, argv: list[str], io: Io) -> int:
    parsed = parse_args("pull", argv, PULL_FLAGS, io)
    if isinstance(parsed, int):
        return parsed
    try:
        ref = parse_reference(parsed.args[0])
    except DockerError as error:
        io.err(f"{error}\n")
        return 1
    try:
        arch = pulled_arch(daemon, ref, parsed.last("platform"))
    except DockerError as error:
        io.err(f"{error}\n")
        return 1
    present = ref.familiar in daemon.images and daemon.image_archs.get(ref.familiar) == arch
    out = io.out if not parsed.flag("quiet") else (lambda _t: None)
    if not await pull_progress(ref, out, present, daemon.timing, io.closed):
        return 128 + 13  # SIGPIPE: the client left (see pull_progress)
    add_image(daemon, ref, arch)
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


def image_inspect_data(daemon: Daemon, name: str) -> dict[str, object]:
    """`docker image inspect`'s object for a pulled image, in the Engine API's shape."""
    ref = parse_reference(name)
    spec = image_spec(ref)
    arch = daemon.image_archs.get(name, daemon.arch)
    digest = hashlib.sha256(name.encode()).hexdigest()
    data: dict[str, object] = {
        "Id": "sha256:" + hashlib.sha256(f"{name}{arch}".encode()).hexdigest(),
        "RepoTags": [name],
        "RepoDigests": [f"{ref.repository}@sha256:{digest}"],
        "Parent": "",
        "Comment": "buildkit.dockerfile.v0",
        "Created": "2025-09-22T10:00:00.000000000Z",
        "DockerVersion": "",
        "Author": "",
        "Config": {
            "Hostname": "",
            "Domainname": "",
            "User": "",
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": False,
            "OpenStdin": False,
            "StdinOnce": False,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": list(spec.cmd) if spec.cmd is not None else None,
            "Image": "",
            "Volumes": None,
            "WorkingDir": spec.workdir,
            "Entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
            "OnBuild": None,
            "Labels": None,
        },
        "Architecture": arch,
        # The variant follows the architecture in docker's output (arm64 → v8).
        **({"Variant": "v8"} if arch == "arm64" else {}),
        "Os": "linux",
        "Size": 9_870_000_000,
        "RootFS": {"Type": "layers", "Layers": ["sha256:" + digest]},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }
    return data


async def image_inspect(daemon: Daemon, argv: list[str], io: Io) -> int:
    try:
        parsed = parse(argv, IMAGE_INSPECT_FLAGS)
    except FlagError as error:
        io.err(f"{error}\nSee 'docker image inspect --help'.\n")
        return 125
    if not parsed.args:
        io.err(
            '"docker image inspect" requires at least 1 argument.\n'
            "See 'docker image inspect --help'.\n\n"
            "Usage:  docker image inspect [OPTIONS] IMAGE [IMAGE...]\n\n"
            "Display detailed information on one or more images\n"
        )
        return 1
    found, missing = [], []
    for text in parsed.args:
        try:
            name = parse_reference(text).familiar
        except DockerError:
            name = text
        if name in daemon.images:
            found.append(image_inspect_data(daemon, name))
        else:
            missing.append(text)
    template = parsed.last("format")
    if template:
        try:
            lines = [render(template, item, "image.InspectResponse") + "\n" for item in found]
            io.out("".join(lines))
        except TemplateError as error:
            io.err(f"{error}\n")
            return 1
    else:
        io.out(json.dumps(found, indent=4) + "\n")
    for text in missing:
        io.err(f"Error: No such image: {text}\n")
    return 1 if missing else 0


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

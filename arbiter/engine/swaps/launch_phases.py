"""The launch phases before `docker run`: the image pull and the weights download.

A swap's launch is three phases, each with its own budget (`Swap.LAUNCH_PHASES`):

- **pull** — only when the image is not on the host (`docker image inspect` says "No
  such image"): `docker pull IMAGE`, its progress lines in the swap log, bounded by
  `ARBITER_SWAP_PULL_TIMEOUT`.
- **weights** — only for a hub model whose folder is not in the host's hub cache:
  `hf download` (the catalog's own download, `arbiter.engine.disk.download_hub_model`),
  bounded by `ARBITER_SWAP_DOWNLOAD_TIMEOUT`. Local models skip it.
- **load** — `docker run` until the served model answers (the swap runner's health
  wait, `ARBITER_SWAP_HEALTH_TIMEOUT`, counted from the container start).

Each check is repeated when a swap resumes after a restart, so a phase that finished
before the restart finds its image or files present and is skipped.

Cancelling (or a phase timeout) closes the SSH channel. Without a pty a real sshd does
not kill the remote command, but neither command outlives it for long:

- `docker pull` is a Go program that handles only SIGINT/SIGTERM (docker/cli
  cmd/docker/docker.go, `notifyContext(ctx, TerminationSignals...)`), so its next
  write to the closed stdout kills it with SIGPIPE (Go's os/signal docs: "a write to a
  broken pipe on file descriptors 1 or 2 will cause the program to exit with a SIGPIPE
  signal"). The daemon then cancels the pull, because a transfer with no watcher left
  is cancelled (moby distribution/xfer/transfer.go, `Release`: "having 0 watchers
  causes a transfer to be cancelled"). Without a TTY docker prints a line per layer
  status change only, so this can take until the next layer changes state; a pull
  that completes anyway leaves nothing worse than a cached image.
- `hf download` (Python, SIGPIPE ignored) gets BrokenPipeError at its next progress
  write and exits; the partial blob stays as `*.incomplete` in the cache and the next
  download resumes it (huggingface_hub file_download). Nothing is cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from django.conf import settings

from arbiter.engine import ssh
from arbiter.engine.disk import download_hub_model, hub_cache_folder, model_disk_status
from arbiter.engine.served_auth import model_api_key
from arbiter.engine.swaps.docker_argv import display
from arbiter.errors import ArbiterError, CommandFailed, CommandTimeout
from catalog.models import CatalogModel

log = logging.getLogger(__name__)

INSPECT_TIMEOUT = 30.0
# A long layer download prints nothing without a TTY: say how far the pull is this often.
SUMMARY_SECONDS = 15.0
# `hf download` is watched through the cache folder's size every 2 s (arbiter.engine.disk);
# the swap log keeps one such line per this many seconds.
DOWNLOAD_NOTE_SECONDS = 15.0
NO_SUCH_IMAGE = "No such image"
# docker/cli's non-TTY pull output (jsonmessage.Display: progress messages are dropped
# when out is not a terminal, so each layer prints only its status changes):
#   "<tag>: Pulling from <repo>", "<layer>: Pulling fs layer" / "Waiting" /
#   "Verifying Checksum" / "Download complete" / "Pull complete" / "Already exists",
#   "Digest: sha256:…", "Status: Downloaded newer image for <ref>" (or "Image is up to
#   date"), then the canonical reference on a line of its own.
LAYER_LINE = re.compile(r"^([0-9a-f]{12}): (.+)$")
KEPT_LAYER_STATUSES = ("Download complete", "Pull complete", "Already exists")


class PhaseFailed(Exception):
    """A launch phase failed; the message names the phase."""


@dataclass(frozen=True)
class ModelSource:
    """What the pre-launch phases need of a catalog model (plain values only)."""

    image: str
    hub_repo: str
    hub_revision: str
    local: bool
    api_key: str = field(default="", repr=False)  # what /v1 demands (served_auth)


def load_model_source(model_key: str) -> ModelSource | None:
    """The catalog model's image and hub source; None when the model is gone."""
    row = (
        CatalogModel.objects.filter(key=model_key)
        .values(
            "image",
            "hub_repo",
            "hub_revision",
            "local_path",
            "extra_engine_flags",
            "extra_container_args",
        )
        .first()
    )
    if row is None:
        return None
    return ModelSource(
        image=row["image"],
        hub_repo=row["hub_repo"] or "",
        hub_revision=row["hub_revision"] or "",
        local=bool(row["local_path"]),
        api_key=model_api_key(row["extra_engine_flags"], row["extra_container_args"]),
    )


# -- pull ------------------------------------------------------------------------------
def build_image_inspect_argv(image: str) -> list[str]:
    return ["docker", "image", "inspect", "--format={{.Id}}", "--", image]


def build_pull_argv(image: str) -> list[str]:
    return ["docker", "pull", "--", image]


async def image_present(target: ssh.SshTarget, image: str) -> bool:
    """Whether the host has the image; docker says "No such image" (exit 1) when not."""
    result = await ssh.run(
        target, build_image_inspect_argv(image), timeout=INSPECT_TIMEOUT, check=False
    )
    if result.exit_status == 0:
        return True
    if NO_SUCH_IMAGE in result.stderr:
        return False
    reason = result.stderr.strip() or f"status {result.exit_status}"
    raise PhaseFailed(f"pull: cannot inspect image {image}: {reason}")


class PullLog:
    """Turns docker's pull lines into a readable log: the kept ones, and a summary."""

    def __init__(self) -> None:
        self.layers: dict[str, str] = {}
        self.started = time.monotonic()

    def keep(self, line: str) -> bool:
        """Record the line; True when it belongs in the swap log."""
        match = LAYER_LINE.match(line.strip())
        if match is None:
            return bool(line.strip())  # "Pulling from", "Digest", "Status", errors
        layer, status = match.groups()
        self.layers[layer] = status
        return status.startswith(KEPT_LAYER_STATUSES)

    def summary(self) -> str:
        statuses = list(self.layers.values())
        done = sum(s.startswith(("Pull complete", "Already exists")) for s in statuses)
        fetched = done + sum(s.startswith(("Download complete", "Extracting")) for s in statuses)
        elapsed = time.monotonic() - self.started
        return (
            f"pull: {fetched} of {len(statuses)} layers downloaded, {done} extracted "
            f"({elapsed:.0f} s)"
        )


async def pull_image(
    target: ssh.SshTarget, image: str, timeout: float, add: Callable[[list[str]], Awaitable[None]]
) -> None:
    """`docker pull IMAGE` with its progress in the log; PhaseFailed on error or timeout."""
    argv = build_pull_argv(image)
    await add([f"$ {display(argv)}"])
    progress = PullLog()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(SUMMARY_SECONDS)
            await add([progress.summary()])

    ticking = asyncio.create_task(ticker())
    lines = ssh.stream_both(target, argv, timeout=timeout)
    try:
        async with contextlib.aclosing(lines):  # closing it closes the channel
            async for _stream, line in lines:
                if progress.keep(line):
                    await add([f"pull: {line.rstrip()}"])
    except CommandTimeout:
        raise PhaseFailed(
            f"pull: docker pull {image} did not finish within {timeout:g} s "
            "(ARBITER_SWAP_PULL_TIMEOUT)"
        ) from None
    except CommandFailed as error:
        raise PhaseFailed(
            f"pull: docker pull {image} failed with status {error.exit_status}: "
            f"{error.stderr_tail.strip() or '(no message)'}"
        ) from None
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking


# -- weights ---------------------------------------------------------------------------
async def weights_present(target: ssh.SshTarget, repo: str, cache_dir: str) -> bool:
    """Whether `models--org--name` is in the host's hub cache (the one the launch mounts)."""
    folder = hub_cache_folder(repo, cache_dir)
    status = await model_disk_status(target, folder, local=False, roots=[])
    return status.present


async def download_weights(
    target: ssh.SshTarget,
    source: ModelSource,
    cache_dir: str,
    timeout: float,
    add: Callable[[list[str]], Awaitable[None]],
) -> None:
    """`hf download` into the host's hub cache; PhaseFailed on error or timeout."""
    await add([f"downloading {source.hub_repo} into {cache_dir} (timeout {timeout:g} s)"])
    last_note = float("-inf")
    lines = download_hub_model(
        target, source.hub_repo, source.hub_revision, cache_dir, settings.ARBITER_HF_TOKEN
    )
    try:
        async with asyncio.timeout(timeout), contextlib.aclosing(lines):  # type: ignore[type-var]
            async for line in lines:
                if line.startswith("downloaded so far"):
                    if time.monotonic() - last_note < DOWNLOAD_NOTE_SECONDS:
                        continue
                    last_note = time.monotonic()
                await add([f"hf: {line.rstrip()}"])
    except TimeoutError:
        raise PhaseFailed(
            f"weights: hf download {source.hub_repo} did not finish within {timeout:g} s "
            "(ARBITER_SWAP_DOWNLOAD_TIMEOUT)"
        ) from None
    except CommandFailed as error:
        raise PhaseFailed(
            f"weights: hf download {source.hub_repo} failed with status {error.exit_status}: "
            f"{error.stderr_tail.strip() or '(no message)'}"
        ) from None
    except ArbiterError as error:  # a catalog value today's rules refuse
        raise PhaseFailed(f"weights: {error.message}") from None

"""GPU memory that did not come back after Arbiter stopped a container.

Users of every tool in this field report it (GPUStack #2937, #4218): the container is
gone, yet the GPU's memory stays used, held by a process the stop did not reach (a
vLLM engine process that outlived its parent, a zombie holding its CUDA context).
Nothing Arbiter can safely kill: it did not start that process as such, and the memory
may belong to someone's job. So it says so, with the evidence:

- when a swap's memory wait times out (`MemoryNotFreed`), the host's
  `memory_not_returned` records what was stopped, why, and the processes
  `nvidia-smi --query-compute-apps` lists as holding GPU memory then;
- every sampler tick re-asks nvidia-smi for such a host only (one more SSH command
  where there is something to watch, none elsewhere) and clears the record once none
  of those processes holds memory any more.

The host card and `/api/status` show it; it is news through `host_sampled`.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from arbiter import events
from arbiter.engine import ssh
from arbiter.engine.gpu import COMPUTE_APPS_ARGV, ComputeApp, GpuOutputError, parse_compute_apps
from arbiter.errors import SshError
from arbiter.models import Host

log = logging.getLogger(__name__)

READ_TIMEOUT = 15.0
# Hosts with a record, so the sampler asks the database only for them: filled when a
# record is written here and, after a restart, from the rows (`load_watched`).
WATCHED: set[int] = set()


async def read_compute_apps(target: ssh.SshTarget) -> list[ComputeApp] | None:
    """The processes holding GPU memory on the host; None when it cannot be asked."""
    try:
        result = await ssh.run(target, COMPUTE_APPS_ARGV, timeout=READ_TIMEOUT, check=False)
    except SshError as error:
        log.debug("compute apps of %s: %s", target.name, error.message)
        return None
    if result.exit_status != 0:
        return None
    try:
        return parse_compute_apps(result.stdout)
    except GpuOutputError as error:
        log.warning("compute apps of %s: %s", target.name, error)
        return None


@sync_to_async
def _write(host_id: int, record: dict[str, Any] | None) -> None:
    Host.objects.filter(pk=host_id).update(memory_not_returned=record)
    if record is None:
        WATCHED.discard(host_id)
    else:
        WATCHED.add(host_id)
    events.host_sampled.send(sender=None, host_id=host_id, latest=None)


def load_watched() -> None:
    """The hosts with a record in the database (the sampler's refresh, after a restart)."""
    WATCHED.update(
        Host.objects.filter(memory_not_returned__isnull=False).values_list("pk", flat=True)
    )


@sync_to_async
def _record_of(host_id: int) -> dict[str, Any] | None:
    return Host.objects.filter(pk=host_id).values_list("memory_not_returned", flat=True).first()


async def record_not_returned(
    host_id: int, target: ssh.SshTarget, stopped: list[str], detail: str
) -> list[ComputeApp]:
    """Record that memory stayed held after `stopped` were stopped; the holders listed."""
    apps = await read_compute_apps(target) or []
    record = {
        "since": timezone.now().isoformat(),
        "container": ", ".join(stopped),
        "detail": detail,
        "processes": [app.as_dict() for app in apps],
    }
    await _write(host_id, record)
    return apps


def describe(apps: list[ComputeApp]) -> str:
    """`pid 4242 python3 (20480 MiB)` for each holder, for a swap's error."""
    if not apps:
        return "nvidia-smi lists no process holding it"
    return ", ".join(
        f"pid {app.pid} {app.process_name}"
        + (f" ({app.used_mib:.0f} MiB)" if app.used_mib is not None else "")
        for app in apps
    )


async def recheck(host_id: int, target: ssh.SshTarget) -> None:
    """One sampler tick's look at a host whose memory was not returned: clear the
    record once none of its processes holds GPU memory any more, else keep it current."""
    record = await _record_of(host_id)
    if not record:
        WATCHED.discard(host_id)
        return
    apps = await read_compute_apps(target)
    if apps is None:
        return  # the host does not answer: the sampler shows that; ask again next tick
    watched = {process.get("pid") for process in record.get("processes", [])}
    still = [app for app in apps if app.pid in watched]
    if watched and still:
        current = [app.as_dict() for app in still]
        if current != record.get("processes"):
            await _write(host_id, {**record, "processes": current})
        return
    if not watched and apps:
        return  # none was listed when it was recorded: clear once none is listed at all
    log.info("host %s: the GPU memory held after a stop came back", target.name)
    await _write(host_id, None)

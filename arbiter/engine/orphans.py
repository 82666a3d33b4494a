"""Orphans: containers labelled as Arbiter's that nothing accounts for.

Every `docker run` Arbiter sends carries `arbiter.managed=true` (docker_argv's
`ownership_labels`). A container with that label that no service or swap explains was
left by a crash, a failed stop, or someone re-running Arbiter's command by hand
(GPUStack #3046: orphans piling up after crashes). They hold names, ports and, while
running, GPU memory. Arbiter lists them per host and removes one only when an admin
asks (`remove`), and only after checking again, on the host, that it is still an
orphan: it never removes what it does not own or what a service still uses.

Accounted for, so never an orphan:
- the container of the model a service on the host runs now: the catalog model of the
  latest completed swap that worked on the host (its container name is the same on
  every host of a multi-node model), running or crashed (the restart policy may want
  it back);
- containers the inventory adopts (`Service.adopt_containers`);
- while a swap works on the host, everything: the scan leaves the host's list as it
  was (a container being started or stopped is not an orphan).

The scan reads `docker ps --all --no-trunc --filter=label=arbiter.managed=true --format
'{{json .}}'` (docker_argv.build_ps_argv, parse_ps: docker's own JSON per container,
labels included; docker's `label=KEY=VALUE` filter, docs.docker.com/reference/cli/docker/
container/ls/#filter) and checks the label again on every row.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from arbiter import events
from arbiter.engine import ssh
from arbiter.engine.sampler import load_hosts
from arbiter.engine.swaps.docker_argv import (
    LABEL_MANAGED,
    LABEL_MODEL,
    ContainerInfo,
    build_ps_argv,
    build_rm_argv,
    parse_ps,
)
from arbiter.errors import CommandFailed, NotFound
from arbiter.models import Host, Service, Swap, SwapHost

log = logging.getLogger(__name__)

PS_TIMEOUT = 20.0
RM_TIMEOUT = 60.0


def accounted_names(host_id: int) -> set[str] | None:
    """Container names something on the host accounts for; None while a swap works
    on it (then nothing is judged)."""
    busy = SwapHost.objects.filter(
        host_id=host_id, active=True, swap__state__in=Swap.ACTIVE_STATES
    ).exists()
    if busy:
        return None
    names: set[str] = set()
    latest = (
        Swap.objects.filter(swap_hosts__host_id=host_id, state=Swap.COMPLETE, dry_run=False)
        .select_related("model")
        .order_by("-finished_at", "-pk")
        .first()
    )
    if latest is not None and latest.model is not None:
        names.add(latest.model.container_name)
    for adopted in Service.objects.filter(host_id=host_id).values_list(
        "adopt_containers", flat=True
    ):
        names.update(adopted or [])
    return names


def created_iso(created_at: str) -> str:
    """docker ps' CreatedAt (Go's time.String(): "2025-11-02 09:14:07 +0000 UTC", in the
    CLI's zone) as ISO 8601; as docker printed it when it does not read so."""
    try:
        return datetime.strptime(created_at.rsplit(" ", 1)[0], "%Y-%m-%d %H:%M:%S %z").isoformat()
    except ValueError:
        return created_at


def orphan_record(container: ContainerInfo) -> dict[str, Any]:
    """What the host row, /api/status and the card keep of one orphan."""
    return {
        "name": container.name,
        "id": container.id[:12],
        "image": container.image,
        "state": container.state,
        "status": container.status,
        "created": created_iso(container.created_at),
        "model": container.labels.get(LABEL_MODEL, ""),
    }


async def list_orphans(host_id: int, target: ssh.SshTarget) -> list[dict[str, Any]] | None:
    """The host's orphans as docker shows them now; None when a swap works on the host."""
    accounted = await sync_to_async(accounted_names)(host_id)
    if accounted is None:
        return None
    argv = build_ps_argv(label=f"{LABEL_MANAGED}=true")
    result = await ssh.run(target, argv, timeout=PS_TIMEOUT)
    return [
        orphan_record(c) for c in parse_ps(result.stdout) if c.managed and c.name not in accounted
    ]


@sync_to_async
def _store(host_id: int, orphans: list[dict[str, Any]]) -> None:
    changed = Host.objects.filter(pk=host_id).exclude(orphan_containers=orphans).exists()
    Host.objects.filter(pk=host_id).update(
        orphan_containers=orphans, orphans_checked_at=timezone.now()
    )
    if changed:
        events.host_sampled.send(sender=None, host_id=host_id, latest=None)


async def scan_host(host_id: int, target: ssh.SshTarget) -> list[dict[str, Any]] | None:
    """Scan one host and keep what was found on its row; None when it was not judged."""
    orphans = await list_orphans(host_id, target)
    if orphans is not None:
        await _store(host_id, orphans)
    return orphans


@sync_to_async
def _host(name: str) -> tuple[int, ssh.SshTarget]:
    host = Host.objects.by_name(name)
    return host.pk, ssh.SshTarget.from_host(
        host, connect_timeout=settings.ARBITER_SSH_CONNECT_TIMEOUT
    )


@sync_to_async
def _stored(host_id: int) -> list[dict[str, Any]]:
    return list(Host.objects.values_list("orphan_containers", flat=True).get(pk=host_id) or [])


async def scan_by_name(host_name: str) -> list[dict[str, Any]]:
    """A fresh scan of one host (NotFound for an unknown host); while a swap works on
    it, what the last scan found."""
    host_id, target = await _host(host_name)
    found = await scan_host(host_id, target)
    return found if found is not None else await _stored(host_id)


async def remove(host_name: str, container: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`docker rm --force` one orphan, checked on the host first; what it was, and the
    orphans left.

    NotFound (404, field `container`) when it is not an orphan right now: unknown, not
    labelled as Arbiter's, or accounted for (also while a swap works on the host).
    """
    host_id, target = await _host(host_name)
    orphans = await list_orphans(host_id, target)
    removed = next((o for o in orphans or [] if o["name"] == container), None)
    if removed is None:
        raise NotFound(
            f"{container!r} is not an orphan on {host_name}: Arbiter removes only containers "
            "labelled arbiter.managed that no service or swap accounts for",
            field="container",
        )
    # --force stops a running one first (SIGKILL) and removes it (docs.docker.com
    # reference/cli/docker/container/rm: "Force the removal of a running container
    # (uses SIGKILL)").
    result = await ssh.run(target, build_rm_argv(container), timeout=RM_TIMEOUT, check=False)
    if result.exit_status != 0 and "No such container" not in result.stderr:
        raise CommandFailed(
            host_name, build_rm_argv(container), result.exit_status, result.stderr.strip()
        )
    log.warning("orphan %s removed from %s", container, host_name)
    return removed, await scan_host(host_id, target) or []


class OrphanScanner:
    """Scans every host every ARBITER_ORPHAN_SCAN_INTERVAL seconds (an engine loop)."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval or float(settings.ARBITER_ORPHAN_SCAN_INTERVAL)

    async def _scan(self, host_id: int, target: ssh.SshTarget) -> None:
        try:
            await scan_host(host_id, target)
        except Exception as error:  # an unreachable host: the sampler shows that
            log.debug("orphan scan of %s failed: %r", target.name, error)

    async def round(self) -> None:
        # The sampler's host list; a host read through NVML is this machine, not SSH.
        hosts = [(i, t) for i, mode, t in await load_hosts() if mode == Host.SAMPLING_SSH]
        await asyncio.gather(*(self._scan(host_id, target) for host_id, target in hosts))

    async def run_forever(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("orphan scan round failed")
            await asyncio.sleep(self.interval)

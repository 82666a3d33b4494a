"""The restart policy: a model that crashed after it was ready is launched again.

Per catalog model, `restart_max` restarts within `restart_window_seconds` (null: never
restarted, the default). Every round the supervisor looks for services that the prober
saw down after their model's swap had completed, and asks their host's Docker what
became of the container:

- still running (a hung engine, a network problem, a slow /health): not a crash, left
  alone — restarting a model that may still be serving someone is not ours to decide;
- gone (`docker rm` by hand): somebody removed it on purpose, left alone;
- exited: a crash. Docker keeps the container and its exit code because Arbiter starts
  it without `--rm` and without a Docker restart policy ("no" is the default restart
  policy; docs.docker.com/engine/containers/start-containers-automatically/).

A crash becomes a swap of kind `restart` of the same model on the same host: the same
launch (the argv is built from the same catalog entry), the same pre-flight, the same
lock and lease rules (a restart while someone else holds the swap lock waits until it
is free; it replaces nothing, so no lease blocks it). It waits out a backoff first
(`Swap.not_before`: base × 2^k after the k-th restart in the window, capped). A restart
that fails counts as an attempt too. Once `restart_max` restarts in the window did not
keep the model up, the policy gives up: the service is marked failed with the reason
(shown on the dashboard, in /api/status, and sent as the `restart_gave_up` webhook
event); the next swap that completes on the service clears it.

Everything is rows (swaps with their kind and `not_before`, the service's failed
state), so an Arbiter restart in the middle of a backoff loses nothing: the pending
restart is claimed when it is due.

Multi-node models are not restarted here (a crashed rank takes the whole pair down and
needs its own choreography); the service shows down, truthfully.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from arbiter import events
from arbiter.engine import ssh
from arbiter.engine.swaps import store
from arbiter.engine.swaps.docker_argv import build_state_argv, parse_state
from arbiter.errors import ArbiterError, Locked, SshError
from arbiter.models import Service, Swap

log = logging.getLogger(__name__)

REQUESTED_BY = "arbiter (restart policy)"
INSPECT_TIMEOUT = 15.0


@dataclass(frozen=True)
class Suspect:
    """A service seen down after its model's last swap ended, with that swap's model."""

    service_id: int
    service_name: str
    host_name: str
    target: ssh.SshTarget
    model_key: str
    container_name: str
    restart_max: int
    window_seconds: int
    last_swap_id: int
    last_swap_error: str


@dataclass(frozen=True)
class Crash:
    """What Docker says of the suspect's container."""

    status: str
    exit_code: int


def backoff_seconds(restarts_in_window: int) -> float:
    """Base × 2^k, capped: the first restart after `base`, the next after twice that."""
    base = float(settings.ARBITER_RESTART_BACKOFF_SECONDS)
    cap = float(settings.ARBITER_RESTART_BACKOFF_MAX_SECONDS)
    return min(cap, base * (2**restarts_in_window))


def find_suspects() -> list[Suspect]:
    """Enabled vLLM services probed down after their last swap ended, whose model has a
    restart policy: the last swap completed (the model was ready), or was a restart
    that failed (the policy keeps trying until it gives up)."""
    suspects = []
    services = Service.objects.in_inventory().filter(
        kind=Service.KIND_VLLM,
        disabled=False,
        health="down",
        failed_at__isnull=True,
        unloaded_at__isnull=True,  # the broker put it to sleep: not a crash
    )
    for service in services.select_related("host"):
        last = (
            Swap.objects.filter(service=service, dry_run=False)
            .select_related("model")
            .order_by("-created_at", "-pk")
            .first()
        )
        if last is None or last.model is None or last.state in Swap.ACTIVE_STATES:
            continue
        model = last.model
        if not model.restart_max or not model.restart_window_seconds:
            continue  # policy off: a crash is shown, never acted on
        if model.tensor_parallel_hosts:
            continue  # multi-node: see the module docstring
        if last.state == Swap.COMPLETE:
            # Down as seen by a probe that ran after the model was ready.
            seen_after = (
                service.last_probe_at is not None
                and last.finished_at is not None
                and service.last_probe_at > last.finished_at
            )
            if not seen_after:
                continue
        elif not (last.state == Swap.FAILED and last.kind == Swap.KIND_RESTART):
            continue
        suspects.append(
            Suspect(
                service_id=service.pk,
                service_name=service.name,
                host_name=service.host.name,
                target=ssh.SshTarget.from_host(
                    service.host, connect_timeout=settings.ARBITER_SSH_CONNECT_TIMEOUT
                ),
                model_key=model.key,
                container_name=model.container_name,
                restart_max=model.restart_max,
                window_seconds=model.restart_window_seconds,
                last_swap_id=last.pk,
                last_swap_error=last.error,
            )
        )
    return suspects


def restarts_in_window(suspect: Suspect, now: datetime) -> int:
    since = now - timedelta(seconds=suspect.window_seconds)
    return Swap.objects.filter(
        kind=Swap.KIND_RESTART,
        model_key=suspect.model_key,
        host__name=suspect.host_name,
        created_at__gte=since,
    ).count()


def restart_or_give_up(suspect: Suspect, crash: Crash) -> str:
    """Queue the next restart, or mark the service failed; what happened, for the log."""
    now = timezone.now()
    what = f"{suspect.container_name} {crash.status} (exit code {crash.exit_code})"
    with transaction.atomic():
        # Locked: two supervisors (a leadership hand-over) must not both decide.
        service = Service.objects.select_for_update().get(pk=suspect.service_id)
        if service.failed_at is not None:
            return "already given up"
        done = restarts_in_window(suspect, now)
        if done >= suspect.restart_max:
            reason = (
                f"{suspect.model_key} crashed after it was ready and {done} restart(s) within "
                f"{suspect.window_seconds} s did not keep it up (restart policy: at most "
                f"{suspect.restart_max}); last: {what}"
            )
            if suspect.last_swap_error:
                reason += f"; last restart failed: {suspect.last_swap_error}"
            service.failed_reason = reason
            service.failed_at = now
            service.save(update_fields=["failed_reason", "failed_at"])
            events.restart_gave_up.send(
                Service,
                service_id=service.pk,
                swap_id=suspect.last_swap_id,
                model_key=suspect.model_key,
                host_id=service.host_id,
                reason=reason,
            )
            events.send_on_commit(events.services_changed)
            return f"gave up: {reason}"
        delay = backoff_seconds(done)
        swap = store.create_swap(
            suspect.model_key,
            suspect.host_name,
            dry_run=False,
            requested_by=REQUESTED_BY,
            kind=Swap.KIND_RESTART,
            not_before=now + timedelta(seconds=delay),
        )
        store.note_pending(
            swap.pk,
            f"restart {done + 1} of at most {suspect.restart_max} in "
            f"{suspect.window_seconds} s: {what}; starts in {delay:g} s",
        )
        return f"restart swap {swap.pk} in {delay:g} s ({what})"


class Supervisor:
    """One per engine process (leader only); `run_forever` is an engine loop."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval or float(settings.ARBITER_SUPERVISOR_INTERVAL)
        # Says "waiting for the lock" once per service, not every round.
        self.blocked: dict[int, str] = {}

    async def inspect(self, suspect: Suspect) -> Crash | None:
        """The container's state when it exited; None while it runs, is gone, or the
        host does not answer (the next round asks again)."""
        try:
            result = await ssh.run(
                suspect.target,
                build_state_argv(suspect.container_name),
                timeout=INSPECT_TIMEOUT,
                check=False,
            )
        except SshError as error:
            log.debug("restart policy: %s unreachable: %s", suspect.host_name, error.message)
            return None
        if result.exit_status != 0:
            # docker: "Error: No such container: NAME", exit 1 — removed by somebody.
            log.info(
                "restart policy: %s on %s is gone (%s); not restarting what was removed",
                suspect.container_name,
                suspect.host_name,
                result.stderr.strip(),
            )
            return None
        state = parse_state(result.stdout)
        if state is None or state.running:
            return None
        return Crash(state.status, state.exit_code)

    async def round(self) -> list[str]:
        """One pass over the suspects; what was done, for tests and the log."""
        done = []
        for suspect in await sync_to_async(find_suspects)():
            crash = await self.inspect(suspect)
            if crash is None:
                continue
            try:
                outcome = await sync_to_async(restart_or_give_up)(suspect, crash)
            except Locked as locked:
                # The lock's holder owns every GPU change until it lets go; try again then.
                if self.blocked.get(suspect.service_id) != locked.message:
                    log.info("restart policy: %s waits: %s", suspect.service_name, locked.message)
                    self.blocked[suspect.service_id] = locked.message
                continue
            except ArbiterError as error:  # the host is busy with another swap, a lease, ...
                log.info("restart policy: %s not restarted: %s", suspect.service_name, error)
                continue
            self.blocked.pop(suspect.service_id, None)
            log.warning("restart policy: %s: %s", suspect.service_name, outcome)
            done.append(outcome)
        return done

    async def run_forever(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:  # a database hiccup must not end the loop
                log.exception("restart policy round failed")
            await asyncio.sleep(self.interval)

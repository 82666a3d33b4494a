"""The swap state machine: one `SwapRunner` drives one swap from preflight to the end.

    pending → preflight → stopping → launching → waiting_healthy → complete
                    (any of them) → failed / cancelled

Each step is restartable: a runner started with `resume=True` (the engine restarted
mid-swap) picks the swap up in the state the database says and repeats or re-attaches
that step — preflight and stopping are idempotent, a launch whose container already
exists is not repeated, and the health wait follows the container's log again from
the start, skipping the lines already stored. The runner keeps plain values only;
everything in the database is re-read by id through `swap_store`.

A multi-node model (arbiter.engine.swaps.multi_node) is one swap over every host of the pair:
each step runs on every host (`nodes`, the head first), workers are started before the
head, every host's log is followed, and the swap is healthy when the head serves. A
failure or cancel on any host stops the containers on all of them, so nothing is left
half-started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from arbiter.engine import held_memory, ssh
from arbiter.engine.host_paths import host_hub_cache
from arbiter.engine.served_auth import auth_headers
from arbiter.engine.swaps import launch_phases, store
from arbiter.engine.swaps.docker_argv import (
    ContainerState,
    build_rm_argv,
    build_state_argv,
    build_stop_argv,
    display,
    launch_env,
    parse_state,
)
from arbiter.engine.swaps.journal import SwapJournal, split_lines
from arbiter.engine.swaps.memory import MemoryNotFreed, MemoryWait
from arbiter.engine.swaps.preflight import LaunchPlan, load_plans, preflight, read_slot, slot_check
from arbiter.engine.swaps.ready_check import check_ready
from arbiter.errors import SshError
from arbiter.models import Swap

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.5  # cancel requests are noticed within this (plus one DB read)
FOLLOWER_STOP_SECONDS = 5.0  # a cancelled log follower stops within this, or is left
HEARTBEAT_EVERY = 2  # watch ticks per heartbeat write
# Health is asked often while a quick start may be about to finish, then less often as
# a long load goes on (0.1 s at the container start, 0.2 s after one second, 1 s from
# nine seconds on): a start-up of about a second is seen within 0.2 s, and a load of
# many minutes asks the host once a second. A container that logs vLLM's ready line
# (swap_log.READY_LOG_LINE) is asked at once.
HEALTH_POLL_FIRST = 0.1
HEALTH_POLL_MAX = 1.0
HEALTH_POLL_GROWTH = 0.1  # seconds of interval added per second of loading
HEALTH_REQUEST_TIMEOUT = 2.0
LAUNCH_TIMEOUT = 1800.0  # `docker run` may pull a large image first
DOCKER_TIMEOUT = 60.0
CANCEL_STOP_SECONDS = 10
LOG_RETRY_DELAY = 1.0


def health_poll_interval(loading_for: timedelta) -> float:
    """Seconds until the next health check of a container loading for `loading_for`."""
    grown = HEALTH_POLL_FIRST + HEALTH_POLL_GROWTH * max(0.0, loading_for.total_seconds())
    return min(HEALTH_POLL_MAX, grown)


class SwapFailed(Exception):
    """The swap cannot go on; the message is what the user reads in `error`."""


class SwapLost(Exception):
    """The swap left the state we expected (another worker, or it was finalised)."""


class SwapRunner:
    """Runs one swap to a final state (or until the engine stops)."""

    def __init__(self, swap_id: int, *, resume: bool = False) -> None:
        self.swap_id = swap_id
        self.resume = resume
        self.health_timeout = float(settings.ARBITER_SWAP_HEALTH_TIMEOUT)
        self.ready_timeout = float(settings.ARBITER_SWAP_READY_TIMEOUT)
        self.pull_timeout = float(settings.ARBITER_SWAP_PULL_TIMEOUT)
        self.download_timeout = float(settings.ARBITER_SWAP_DOWNLOAD_TIMEOUT)
        self.api_key = ""  # the served model's --api-key (served_auth), for the health wait
        self.memory_timeout = float(settings.ARBITER_SWAP_MEMORY_FREE_TIMEOUT)
        self.state = ""
        self.plan: LaunchPlan | None = None  # the head's (the only host's) plan
        self.nodes: list[LaunchPlan] = []  # every host's plan, the head first
        self.argv: tuple[str, ...] = ()  # the head's launch command
        self.journal = SwapJournal(swap_id)
        self.launch_task: asyncio.Task | None = None
        self.last_health = "not checked yet"

    # -- the outer loop ----------------------------------------------------------------
    async def run(self) -> str:
        """Drive the swap; returns the final state ("" when interrupted by shutdown)."""
        snap = await sync_to_async(store.snapshot)(self.swap_id)
        await self.journal.load()
        self.state = snap.state
        self.argv = snap.launch_argv
        if snap.state not in Swap.ACTIVE_STATES or snap.state == Swap.PENDING:
            return snap.state if snap.state in Swap.FINAL_STATES else ""
        if not self.resume:  # the dispatcher's claim moved it to preflight: say so
            self.journal.announce(ended=False)
        steps = asyncio.create_task(self._steps(snap), name=f"swap-{self.swap_id}")
        watcher = asyncio.create_task(self._watch(), name=f"swap-{self.swap_id}-watch")
        try:
            await asyncio.wait({steps, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if steps.done():
                return steps.result()
            # The watcher returned: someone asked to cancel.
            steps.cancel()
            await asyncio.wait({steps})
            if not steps.cancelled() and steps.exception() is None and steps.result():
                return steps.result()  # it reached a final state before noticing
            return await self._cancel()
        finally:
            # Shutdown (or the end): leave the state as it is for a later re-attach.
            for task in (steps, watcher):
                task.cancel()
            await asyncio.gather(steps, watcher, return_exceptions=True)

    async def _watch(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            tick += 1
            if tick % HEARTBEAT_EVERY == 0:
                wanted = await sync_to_async(store.heartbeat)(self.swap_id)
            else:
                wanted = await sync_to_async(store.cancel_requested)(self.swap_id)
            if wanted:
                return

    async def _steps(self, snap: store.SwapSnapshot) -> str:
        try:
            if self.resume:
                await self.say(f"Arbiter restarted: resuming this swap in state {snap.state}")
            if self.state == Swap.PREFLIGHT:
                await self.step_preflight(snap)
                if snap.dry_run:
                    return await self.finish(Swap.COMPLETE, detail="dry run: nothing executed")
                await self.enter(Swap.STOPPING)
            else:
                await self.load_plan(snap)
            if self.state == Swap.STOPPING:
                await self.step_stopping()
                await self.enter(Swap.LAUNCHING)
                snap = await sync_to_async(store.snapshot)(self.swap_id)
            if self.state == Swap.LAUNCHING:
                await self.step_launch()
                await self.enter(Swap.WAITING_HEALTHY)
            if self.state == Swap.WAITING_HEALTHY:
                await self.step_wait_healthy(snap.launching_at)
                return await self.finish(
                    Swap.COMPLETE, detail=f"{self.require_plan().served_name} is served"
                )
            raise SwapLost(f"unexpected state {self.state}")
        except (SwapFailed, MemoryNotFreed) as failure:
            await self.stop_pair_after_failure()
            return await self.fail(str(failure))
        except SshError as error:
            await self.stop_pair_after_failure()
            return await self.fail(f"{self.state}: {error.message}")
        except SwapLost as lost:
            log.warning("swap %s: %s; leaving it", self.swap_id, lost)
            return ""
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug must still end the swap truthfully
            log.exception("swap %s crashed in %s", self.swap_id, self.state)
            return await self.fail(f"internal error in {self.state}: {error!r}")

    # -- recording ---------------------------------------------------------------------
    async def say(self, text: str) -> None:
        await self.journal.say(text)

    async def enter(self, state: str, detail: str = "", **fields: Any) -> None:
        record = await sync_to_async(store.record_transition)(
            self.swap_id, state, detail=detail, **fields
        )
        if record is None:
            raise SwapLost(f"could not move to {state}: the swap is no longer active")
        self.state = state
        await self.say(f"→ {state}" + (f": {detail}" if detail else ""))
        self.journal.announce_state(record)

    async def finish(self, state: str, *, detail: str = "", error: str = "") -> str:
        # The last line goes in before the final state, so a log reader that stops at
        # the final state has seen everything.
        await self.say(f"→ {state}" + (f": {error or detail}" if error or detail else ""))
        record = await sync_to_async(store.record_transition)(
            self.swap_id, state, detail=detail or error, error=error
        )
        if record is None:
            raise SwapLost(f"could not move to {state}: the swap is no longer active")
        self.state = state
        self.journal.announce_state(record)
        return state

    async def fail(self, reason: str) -> str:
        log.info("swap %s failed: %s", self.swap_id, reason)
        try:
            return await self.finish(Swap.FAILED, error=reason)
        except SwapLost:
            return ""

    # -- steps -------------------------------------------------------------------------
    def require_plan(self) -> LaunchPlan:
        if self.plan is None:
            raise SwapFailed("the swap has no launch plan")
        return self.plan

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1

    def workers_then_head(self) -> list[LaunchPlan]:
        """Launch order: a worker waits for its head, vLLM's head waits for its workers;
        workers first, so the head's start-up clock runs only once they are there."""
        return [*self.nodes[1:], *self.nodes[:1]]

    def argv_of(self, node: LaunchPlan) -> tuple[str, ...]:
        return self.argv if node is self.plan else node.argv

    async def load_plan(self, snap: store.SwapSnapshot) -> None:
        self.nodes = await sync_to_async(load_plans)(snap.model_key, snap.host_name, self.swap_id)
        if not self.nodes:
            raise SwapFailed(f"model {snap.model_key!r} is no longer in the catalog")
        self.plan = self.nodes[0]
        if not self.argv:
            self.argv = self.plan.argv

    async def check_fence(self) -> None:
        """Refuse to touch the GPU once another party holds the swap lock."""
        problem = await sync_to_async(store.fencing_problem)(self.swap_id)
        if problem:
            raise SwapFailed(problem)

    async def step_preflight(self, snap: store.SwapSnapshot) -> None:
        await self.check_fence()
        result = await preflight(snap.model_key, snap.host_name, swap_id=self.swap_id)
        self.plan = result.plan
        self.nodes = result.nodes
        self.argv = result.plan.argv if result.plan else ()
        await sync_to_async(store.update_swap)(
            self.swap_id, checks=result.as_dicts(), launch_argv=list(self.argv)
        )
        for check in result.checks:
            await self.say(f"{'✓' if check.ok else '✗'} {check.name}: {check.detail}")
        if not result.ok:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in result.failed)
            raise SwapFailed(f"pre-flight failed: {failed}")
        if snap.dry_run:
            for container in result.replaced:
                await self.say(f"dry run: would stop and remove {container.name}")
            for node in self.workers_then_head():
                where = f" on {node.host_name}" if self.multi_node else ""
                await self.say(f"dry run: would run{where} {display(self.argv_of(node))}")

    async def step_stopping(self) -> None:
        await self.check_fence()
        self.require_plan()
        # Every host at once: each waits for its own memory to be freed.
        await asyncio.gather(*(self.stop_slot(node) for node in self.nodes))

    async def stop_slot(self, plan: LaunchPlan) -> None:
        """Stop and remove what holds the slot on one host, once its memory is freed."""
        where = f"{plan.host_name}: " if self.multi_node else ""
        on = f" on {plan.host_name}" if self.multi_node else ""
        # Read again: pre-flight may be a while ago (or before a restart). Only Arbiter's
        # own containers and adopted ones are stopped; a foreign holder ends the swap.
        slot = await read_slot(plan)
        if not slot.ok:
            raise SwapFailed(f"{where}slot: {slot_check(plan, slot).detail}")
        containers = slot.to_replace
        memory = MemoryWait(plan, self.memory_timeout, say=self.say)
        await memory.take_baseline()
        for container in containers:
            if container.running:
                await self.say(f"stopping {container.name}{on}")
                await self.docker(build_stop_argv(container.name), DOCKER_TIMEOUT + 30, plan)
        if not containers:
            await self.say(f"nothing to stop on {plan.host_name}")
        # The driver frees a stopped process's memory a little later; the container is
        # removed only afterwards (its name must be free before the launch).
        try:
            await memory.wait(stopped_any=any(c.running for c in containers))
        except MemoryNotFreed as not_freed:
            if not any(c.running for c in containers):
                raise  # nothing was stopped: the memory is someone else's, not leaked
            # Shown on the host card until it comes back (held_memory), with who holds it.
            holders = await held_memory.record_not_returned(
                plan.host_id, plan.target, [c.name for c in containers], str(not_freed)
            )
            raise MemoryNotFreed(
                f"{not_freed}; memory not returned after stopping "
                f"{', '.join(c.name for c in containers)}: {held_memory.describe(holders)}"
            ) from not_freed
        for container in containers:
            await self.say(f"removing {container.name}{on}")
            result = await ssh.run(
                plan.target, build_rm_argv(container.name), timeout=DOCKER_TIMEOUT, check=False
            )
            if result.exit_status != 0 and "No such container" not in result.stderr:
                raise SwapFailed(
                    f"{where}docker rm {container.name} failed: {result.stderr.strip()}"
                )

    async def step_launch(self) -> None:
        await self.check_fence()
        self.require_plan()
        if not self.argv or not all(node.argv for node in self.nodes):
            raise SwapFailed("no launch command was computed")
        started = False
        for node in self.workers_then_head():
            if self.resume and await self.container_state(node) is not None:
                await self.say(
                    f"{node.container_name} on {node.host_name} was started before the restart"
                )
                continue
            await self.prepare_launch(node)
            if not started:
                await sync_to_async(store.begin_phase)(self.swap_id, Swap.LOAD)
                started = True
            await self.run_container(node)
        if not started:
            await sync_to_async(store.begin_phase)(self.swap_id, Swap.LOAD)

    async def run_container(self, node: LaunchPlan) -> None:
        """`docker run -d` on one host."""
        argv = self.argv_of(node)
        where = f" on {node.host_name}" if self.multi_node else ""
        await self.say(f"${where} {display(argv)}" if where else f"$ {display(argv)}")
        env = launch_env(node.local)
        # Shielded: a cancel waits for `docker run -d` to return (seconds, or an image
        # pull) so the container it creates is known and can be removed.
        self.launch_task = asyncio.ensure_future(
            ssh.run(node.target, list(argv), timeout=LAUNCH_TIMEOUT, env=env, check=False)
        )
        result = await asyncio.shield(self.launch_task)
        await self.journal.add(
            [("arbiter", f"docker{where}: {line}") for line in split_lines(result.stderr)]
        )
        if result.exit_status != 0:
            reason = result.stderr.strip() or "(no message)"
            raise SwapFailed(f"docker run{where} failed with status {result.exit_status}: {reason}")
        await self.say(f"container {result.stdout.strip()[:12]} started{where}")

    async def prepare_launch(self, plan: LaunchPlan) -> None:
        """The pull and weights phases on one host, each only when needed (launch_phases)."""
        source = await sync_to_async(launch_phases.load_model_source)(plan.model_key)
        if source is None:
            raise SwapFailed(f"model {plan.model_key!r} is no longer in the catalog")

        async def add(lines: list[str]) -> None:
            await self.journal.add([("arbiter", line) for line in lines])

        try:
            if not await launch_phases.image_present(plan.target, source.image):
                await self.run_phase(
                    Swap.PULL,
                    f"{source.image} is not on {plan.host_name}: pulling it "
                    f"(timeout {self.pull_timeout:g} s)",
                    lambda: launch_phases.pull_image(
                        plan.target, source.image, self.pull_timeout, add
                    ),
                )
            cache = "" if source.local else await host_hub_cache(plan.target)
            if cache and not await launch_phases.weights_present(
                plan.target, source.hub_repo, cache
            ):
                await self.run_phase(
                    Swap.WEIGHTS,
                    f"{source.hub_repo} is not in the hub cache of {plan.host_name}",
                    lambda: launch_phases.download_weights(
                        plan.target, source, cache, self.download_timeout, add
                    ),
                )
        except launch_phases.PhaseFailed as failure:
            raise SwapFailed(str(failure)) from None

    async def run_phase(self, phase: str, why: str, work: Callable[[], Awaitable[None]]) -> None:
        await sync_to_async(store.begin_phase)(self.swap_id, phase)
        await self.say(f"phase {phase}: {why}")
        await work()
        seconds = await sync_to_async(store.end_phase)(self.swap_id, phase)
        await self.say(f"phase {phase} took {seconds:.1f} s")

    async def step_wait_healthy(self, launching_at: datetime | None) -> None:
        plan = self.require_plan()
        # The health budget counts from the container start (the load phase), not from
        # the launch, so a long pull or download does not eat it.
        loading_since = await sync_to_async(store.phase_started_at)(self.swap_id, Swap.LOAD)
        started = loading_since or launching_at or timezone.now()
        source = await sync_to_async(launch_phases.load_model_source)(plan.model_key)
        self.api_key = source.api_key if source else ""
        deadline = (
            time.monotonic() + self.health_timeout - (timezone.now() - started).total_seconds()
        )
        await self.say(
            f"waiting for {plan.served_name!r} in {plan.url('/v1/models')} "
            f"(timeout {self.health_timeout:g} s)"
        )
        # One log follower per host; a worker's log that ends means that worker is gone.
        followers = {node.host_name: self.follow_logs(node) for node in self.nodes}
        try:
            async with httpx.AsyncClient(timeout=HEALTH_REQUEST_TIMEOUT, trust_env=False) as client:
                while True:
                    if await self.served(client):
                        break
                    for node in self.nodes:
                        if followers[node.host_name].done():
                            followers[node.host_name] = await self.after_log_end(
                                node, followers[node.host_name]
                            )
                    if time.monotonic() >= deadline:
                        await self.stop_followers(followers)
                        await self.sync_logs()
                        stopped = await self.stop_nodes()
                        raise SwapFailed(
                            f"load: {plan.served_name!r} was not served within "
                            f"{self.health_timeout:g} s of the container start "
                            f"(ARBITER_SWAP_HEALTH_TIMEOUT; last check: {self.last_health}); "
                            f"container {stopped} stopped"
                        )
                    await self.until_next_health_check(timezone.now() - started)
                # Listed is not yet serving: one tiny real request decides (ready_check).
                ready = await check_ready(
                    client,
                    plan.base_url,
                    plan.kind,
                    plan.served_name,
                    auth_headers(self.api_key),
                    self.ready_timeout,
                )
                await self.say(ready.summary)
                if not ready.ok:
                    await self.stop_followers(followers)
                    await self.sync_logs()
                    stopped = await self.stop_nodes()
                    raise SwapFailed(
                        f"load: {plan.served_name!r} is listed by /v1/models but does not "
                        f"answer: {ready.summary.removeprefix('ready check: ')}; "
                        f"container {stopped} stopped"
                    )
        finally:
            await self.stop_followers(followers)
        await self.sync_logs()
        seconds = await sync_to_async(store.end_phase)(self.swap_id, Swap.LOAD, last=True)
        await self.say(f"phase load took {seconds:.1f} s")

    async def stop_nodes(self) -> str:
        """Stop the launched container on every host; what was stopped, for the error."""
        for node in self.nodes:
            await self.docker(build_stop_argv(node.container_name), DOCKER_TIMEOUT + 30, node)
        if self.multi_node:
            return ", ".join(f"{n.container_name} on {n.host_name}" for n in self.nodes)
        return self.require_plan().container_name

    async def until_next_health_check(self, loading_for: timedelta) -> None:
        """Sleep one poll interval, or less if the container logs that it is ready."""
        ready = self.journal.ready_line_seen
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), health_poll_interval(loading_for))
        # Once: a server that logged the line but does not answer yet is polled as usual.
        ready.clear()

    # -- helpers -----------------------------------------------------------------------
    async def docker(
        self, argv: list[str], timeout: float, node: LaunchPlan | None = None
    ) -> ssh.CommandResult:
        target = (node or self.require_plan()).target
        return await ssh.run(target, argv, timeout=timeout, check=False)

    async def container_state(self, node: LaunchPlan | None = None) -> ContainerState | None:
        node = node or self.require_plan()
        result = await self.docker(build_state_argv(node.container_name), DOCKER_TIMEOUT, node)
        if result.exit_status != 0:
            return None
        return parse_state(result.stdout)

    async def served(self, client: httpx.AsyncClient) -> bool:
        plan = self.require_plan()
        # A model started with --api-key answers /v1 only with the key (served_auth).
        headers = auth_headers(self.api_key)
        try:
            health = await client.get(plan.url(plan.health_path), headers=headers)
            if not health.is_success:
                self.last_health = f"{plan.health_path} answered HTTP {health.status_code}"
                return False
            models = await client.get(plan.url("/v1/models"), headers=headers)
            if models.status_code == 401:
                self.last_health = "/v1/models answered HTTP 401 (does the model need --api-key?)"
                return False
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            self.last_health = f"{plan.health_path}: {type(error).__name__} {error}".strip()
            return False
        try:
            data = models.json().get("data") or []
            ids = [item.get("id") for item in data if isinstance(item, dict)]
        except (ValueError, AttributeError):
            ids = []
        if plan.served_name in ids:
            return True
        self.last_health = f"/v1/models lists {ids!r}, not {plan.served_name!r}"
        return False

    async def after_log_end(self, node: LaunchPlan, follower: asyncio.Task) -> asyncio.Task:
        """A followed log ended: the container exited (fail) or the SSH stream dropped."""
        error = None if follower.cancelled() else follower.exception()
        state = await self.container_state(node)
        if state is not None and state.running:
            if error is not None:
                log.info("swap %s: log stream dropped (%s); following again", self.swap_id, error)
                await asyncio.sleep(LOG_RETRY_DELAY)
            return self.follow_logs(node)
        await self.sync_logs()
        where = f" on {node.host_name}" if self.multi_node else ""
        role = "" if not self.multi_node else ("head " if node.head else "worker ")
        if state is None:
            raise SwapFailed(f"{role}container {node.container_name}{where} disappeared")
        raise SwapFailed(f"{role}container{where} exited with status {state.exit_code}")

    async def stop_followers(self, followers: dict[str, asyncio.Task]) -> None:
        """Cancel the log followers and wait (bounded) until they stop.

        Bounded because a library below may swallow a cancel (redis-py 8 did, inside a
        channel-layer publish: the follower went on reading and the swap hung here). A
        follower still running after the wait is logged and left; the swap goes on.
        `asyncio.wait` also lets this task's own cancel through, unlike awaiting each.
        """
        tasks = list(followers.values())
        for follower in tasks:
            follower.cancel()
        done, pending = await asyncio.wait(tasks, timeout=FOLLOWER_STOP_SECONDS)
        for follower in done:
            if not follower.cancelled():
                follower.exception()  # retrieved: an error while stopping is not news
        if pending:
            log.warning(
                "swap %s: %d log follower(s) did not stop within %g s of a cancel; left running",
                self.swap_id,
                len(pending),
                FOLLOWER_STOP_SECONDS,
            )

    async def sync_logs(self) -> None:
        for node in self.nodes or [self.require_plan()]:
            await self.journal.sync(node.target, node.container_name, self.node_tag(node))

    def node_tag(self, node: LaunchPlan) -> str:
        """The host a log line is tagged with: only a multi-node swap tags its lines."""
        return node.host_name if self.multi_node else ""

    def follow_logs(self, node: LaunchPlan) -> asyncio.Task:
        return asyncio.create_task(
            self.journal.follow(node.target, node.container_name, self.node_tag(node))
        )

    async def stop_pair_after_failure(self) -> None:
        """A multi-node swap that fails after its launch began stops every host's
        container: no worker is left waiting for a head, no head for a worker. Best
        effort per host (an unreachable host is reported, the others still stopped)."""
        if not self.multi_node or self.state not in (Swap.LAUNCHING, Swap.WAITING_HEALTHY):
            return
        if self.launch_task is not None:
            with contextlib.suppress(Exception):
                await self.launch_task
        for node in self.nodes:
            try:
                result = await self.docker(
                    build_stop_argv(node.container_name, CANCEL_STOP_SECONDS), DOCKER_TIMEOUT, node
                )
            except SshError as error:
                await self.say(
                    f"could not stop {node.container_name} on {node.host_name}: {error.message}"
                )
                continue
            if result.exit_status == 0:
                await self.say(f"stopped {node.container_name} on {node.host_name}")

    async def _cancel(self) -> str:
        """Cancelled on request: remove what this swap launched, then record it."""
        if self.launch_task is not None:
            with contextlib.suppress(Exception):
                await self.launch_task
        problems = []
        if self.plan is not None and self.state in (Swap.LAUNCHING, Swap.WAITING_HEALTHY):
            await self.sync_logs()
            for node in self.nodes or [self.plan]:
                name = node.container_name
                try:
                    on = f" on {node.host_name}" if self.multi_node else ""
                    await self.say(f"cancel: stopping and removing {name}{on}")
                    await self.docker(
                        build_stop_argv(name, CANCEL_STOP_SECONDS), DOCKER_TIMEOUT, node
                    )
                    await self.docker(build_rm_argv(name), DOCKER_TIMEOUT, node)
                except SshError as error:
                    where = f"{node.host_name}: " if self.multi_node else ""
                    problems.append(f"{where}{error.message}")
        try:
            if problems:
                return await self.finish(
                    Swap.CANCELLED,
                    detail=f"cancelled on request; cleanup failed: {'; '.join(problems)}",
                )
            return await self.finish(Swap.CANCELLED, detail="cancelled on request")
        except SwapLost:
            return ""


async def run_swap(swap_id: int, *, resume: bool = False) -> str:
    """Run one swap to its end (tests and the dispatcher)."""
    return await SwapRunner(swap_id, resume=resume).run()

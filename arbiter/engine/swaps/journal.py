"""A swap's log: Arbiter's narration and the container's output, stored and announced.

Lines are numbered per swap (`seq`). The container's lines are also counted per node and
stream, because a re-attach (after an Arbiter restart) reads the container's whole log
again and must skip exactly the lines already stored: `docker logs --tail=all` repeats
each stream in order, so "skip the first N stdout lines" is exact.

Both streams are followed live (vLLM logs to both). `sync` stores whatever following
did not see (lines printed after the follower stopped) when the swap ends.

A multi-node swap follows every host's container: each line is stored with its host
(`SwapLogLine.node`, counted apart for the re-attach) and shown tagged `[host]`.

Bounded, whatever a container prints: lines are read in batches of what has arrived and
stored with one insert per batch; a line is cut at ARBITER_SWAP_LOG_LINE_CHARS; past
ARBITER_SWAP_LOG_MAX_LINES container lines per swap the rest are counted, not stored,
except the last ARBITER_SWAP_LOG_TAIL_LINES, which are stored after a marker saying how
many were left out when the log ends (the end of a log is what explains a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from asgiref.sync import sync_to_async
from django.conf import settings

from arbiter import events
from arbiter.engine import ssh
from arbiter.engine.swaps import store
from arbiter.engine.swaps.docker_argv import build_logs_argv
from arbiter.errors import SshError

log = logging.getLogger(__name__)

FULL_LOG_TIMEOUT = 60.0
# vLLM's OpenAI server runs under uvicorn, which logs this once the app is up and about
# to listen (uvicorn PR #458, "Clearer startup messaging"; seen in vLLM logs, e.g.
# vllm-project/vllm#15915). Seeing it makes the health check ask at once instead of at
# its next tick. It only wakes the check: that issue shows a server stuck right after
# the line, so the answer of /health and /v1/models still decides.
READY_LOG_LINE = "Application startup complete."


def split_lines(text: str) -> list[str]:
    """Lines split at "\\n" only, exactly as the followed stream splits them
    (`str.splitlines` would also split progress bars at "\\r" and counts would drift)."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def announce_cancelled_while_pending(record: store.TransitionRecord) -> None:
    """Announce the end of a swap the API cancelled before the engine took it up.

    No engine task runs such a swap, so nobody else announces it; without this the
    dashboards would show it pending until their next push or reload. Called from a
    synchronous view, after the transition committed.
    """
    events.swap_progressed.send(sender=None, swap_id=record.swap_id, ended=True)


class SwapJournal:
    """Writes one swap's log lines and announces its progress (`arbiter.events`)."""

    def __init__(self, swap_id: int) -> None:
        self.swap_id = swap_id
        self.next_seq = 1
        # Container lines seen per (node, stream): stored, or left out past the cap.
        self.counts: dict[tuple[str, str], int] = {}
        self.stored_output = 0  # container lines stored, against the cap
        self.left_out = 0  # container lines past the cap not (yet) stored
        self.tail: deque[tuple[str, str, str]] = deque(maxlen=settings.ARBITER_SWAP_LOG_TAIL_LINES)
        # Per node: the last lines seen (stored or not), and whether a read reached the
        # log's end since its follower last started (a sync then has nothing to add).
        self.recent: dict[str, deque[tuple[str, str]]] = {}
        self.read_to_end: set[str] = set()
        # Set when a followed container prints READY_LOG_LINE (the health wait clears it).
        self.ready_line_seen = asyncio.Event()

    async def load(self) -> None:
        """Continue after what is stored (a resumed swap)."""
        position = await sync_to_async(store.log_position)(self.swap_id)
        self.next_seq = position.last_seq + 1
        self.counts = dict(position.counts)
        self.stored_output = sum(self.counts.values())

    async def say(self, text: str) -> None:
        """Arbiter's own narration."""
        await self.add([("arbiter", text)])

    async def add(self, lines: list[tuple[str, str]], node: str = "", count: bool = True) -> None:
        """Store (stream, text) lines in order, then announce them; `node` is the host
        whose container printed them in a multi-node swap."""
        if not lines:
            return
        if node:
            lines = [(stream, f"[{node}] {text}") for stream, text in lines]
        first = self.next_seq
        self.next_seq += len(lines)
        write = asyncio.ensure_future(
            sync_to_async(store.store_log_lines)(self.swap_id, first, lines, node)
        )
        try:
            rows = await asyncio.shield(write)
        except asyncio.CancelledError:
            # Let the write land and count it, so a later sync neither loses nor repeats
            # these lines; then stop as asked.
            with contextlib.suppress(Exception):
                await write
                if count:
                    self._count(lines, node)
            raise
        if count:
            self._count(lines, node)
        if rows:
            self.announce(ended=False)

    async def add_output(self, lines: list[tuple[str, str]], node: str = "") -> None:
        """Store a container's lines up to the cap; past it, keep only the last few
        (stored by `store_left_out` when the log ends) and count the rest."""
        self._recent(node).extend(lines)
        room = max(0, settings.ARBITER_SWAP_LOG_MAX_LINES - self.stored_output)
        stored, past_cap = lines[:room], lines[room:]
        if stored:
            # Counted first: `add` lets a cancelled write land, and the lines count then.
            self.stored_output += len(stored)
            await self.add(stored, node)
        if past_cap:
            self._count(past_cap, node)
            self.left_out += len(past_cap)
            self.tail.extend((node, stream, text) for stream, text in past_cap)

    def _recent(self, node: str) -> deque[tuple[str, str]]:
        if node not in self.recent:
            self.recent[node] = deque(maxlen=self.tail.maxlen)
        return self.recent[node]

    async def store_left_out(self, exact: bool = True) -> None:
        """The marker for the lines past the cap, then the last of them (`exact`: the
        count of the lines between is known, else it is a lower bound)."""
        if not self.left_out:
            return
        tail = list(self.tail)
        not_stored = max(0, self.left_out - len(tail))
        self.left_out = 0
        self.tail.clear()
        await self.say(
            f"… {'' if exact else 'at least '}{not_stored} lines of the container's output "
            f"not stored (more than ARBITER_SWAP_LOG_MAX_LINES="
            f"{settings.ARBITER_SWAP_LOG_MAX_LINES}); the last {len(tail)} follow"
        )
        for node in dict.fromkeys(node for node, _stream, _text in tail):
            lines = [(stream, text) for n, stream, text in tail if n == node]
            self.stored_output += len(lines)
            await self.add(lines, node, count=False)  # counted when they were left out

    def _count(self, lines: list[tuple[str, str]], node: str) -> None:
        for stream, _text in lines:
            if stream in ("stdout", "stderr"):
                self.counts[(node, stream)] = self.counts.get((node, stream), 0) + 1

    def announce(self, *, ended: bool) -> None:
        """Tell whoever listens that this swap moved (on the engine's loop; receivers
        only schedule their work)."""
        try:
            events.swap_progressed.send(sender=None, swap_id=self.swap_id, ended=ended)
        except Exception:  # a listener's failure must never stop a swap
            log.warning("swap %s: announcing its progress failed", self.swap_id, exc_info=True)

    def announce_state(self, record: store.TransitionRecord) -> None:
        self.announce(ended=record.final)

    async def follow(
        self,
        target: ssh.SshTarget,
        container: str,
        node: str = "",
        *,
        live: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Store the container's output as it comes, skipping the lines already stored
        (per stream: `docker logs` replays each stream in order).

        Returns when the log ends (the container exited; at once with `live=False`, which
        reads what is there); raises SshError when the stream breaks.
        """
        skip = {stream: self.counts.get((node, stream), 0) for stream in ("stdout", "stderr")}
        seen = {"stdout": 0, "stderr": 0}
        if live:
            self.read_to_end.discard(node)
        batches = ssh.stream_batches(
            target,
            build_logs_argv(container, follow=live),
            check=not live,
            timeout=timeout,
            max_line_chars=settings.ARBITER_SWAP_LOG_LINE_CHARS,
        )
        # A `docker logs` that fails ("No such container") prints only its own error: a
        # one-off read holds its first batch until a second comes or it exits 0, so that
        # error is never stored as the container's output.
        held: list[tuple[str, str]] | None = None if not live else []
        async with contextlib.aclosing(batches):
            async for batch in batches:
                fresh = []
                for stream, line in batch:
                    seen[stream] += 1
                    if seen[stream] > skip[stream]:
                        fresh.append((stream, line.rstrip("\r")))
                    if READY_LOG_LINE in line:
                        self.ready_line_seen.set()
                if held is None:
                    held = fresh
                    continue
                if held:
                    await self.add_output(held, node)
                    held = []
                await self.add_output(fresh, node)
        if held:
            await self.add_output(held, node)
        self.read_to_end.add(node)
        await self.store_left_out()

    async def sync(self, target: ssh.SshTarget, container: str, node: str = "") -> None:
        """Store what following did not: the container's stderr, and stdout lines
        printed after the follower stopped. Never raises for the host's sake.

        Past the cap it reads only the end of the log (`--tail`): the follower may be far
        behind a container that floods its log, and only the end would be stored anyway.
        """
        try:
            if self.stored_output >= settings.ARBITER_SWAP_LOG_MAX_LINES:
                if node not in self.read_to_end:
                    await self.store_end_of_log(target, container, node)
                return
            await self.follow(target, container, node, live=False, timeout=FULL_LOG_TIMEOUT)
        except SshError as error:
            log.warning("swap %s: could not read the full log: %s", self.swap_id, error)
            await self.store_left_out(exact=False)

    async def store_end_of_log(self, target: ssh.SshTarget, container: str, node: str) -> None:
        """The marker and the log's last lines, read with `docker logs --tail`."""
        argv = build_logs_argv(container, follow=False, tail=self.tail.maxlen or 0)
        end: list[tuple[str, str]] = []
        batches = ssh.stream_batches(
            target,
            argv,
            timeout=FULL_LOG_TIMEOUT,
            max_line_chars=settings.ARBITER_SWAP_LOG_LINE_CHARS,
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                end.extend((stream, line.rstrip("\r")) for stream, line in batch)
        # The follower may have seen some of these already: only what follows the
        # lines it saw last is new (and then the count of lines left out is exact).
        seen_through = overlap(self._recent(node), end)
        fresh = end[seen_through:]
        if fresh:
            self._count(fresh, node)
            self.left_out += len(fresh)
            self.tail.extend((node, stream, text) for stream, text in fresh)
            self._recent(node).extend(fresh)
        self.read_to_end.add(node)
        await self.store_left_out(exact=seen_through > 0)


def overlap(seen: deque[tuple[str, str]], end: list[tuple[str, str]]) -> int:
    """The most lines at the start of `end` that are the last lines of `seen`."""
    last = list(seen)
    for count in range(min(len(last), len(end)), 0, -1):
        if last[-count:] == end[:count]:
            return count
    return 0

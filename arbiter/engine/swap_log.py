"""A swap's log: Arbiter's narration and the container's output, stored and published.

Lines are numbered per swap (`seq`). The container's lines are also counted per
stream, because a re-attach (after an Arbiter restart) reads the container's whole log
again and must skip exactly the lines already stored: `docker logs --tail=all` repeats
each stream in order, so "skip the first N stdout lines" is exact.

Both streams are followed live (vLLM logs to both). `sync` stores whatever following
did not see (lines printed after the follower stopped) when the swap ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from asgiref.sync import async_to_sync, sync_to_async

from arbiter.engine import ssh
from arbiter.engine import swap_store as store
from arbiter.engine.events import (
    SwapLineMessage,
    SwapStateMessage,
    publish_fragment,
    publish_swap_event,
)
from arbiter.engine.launch import build_logs_argv
from arbiter.errors import SshError

log = logging.getLogger(__name__)

FULL_LOG_TIMEOUT = 60.0


def split_lines(text: str) -> list[str]:
    """Lines split at "\\n" only, exactly as the followed stream splits them
    (`str.splitlines` would also split progress bars at "\\r" and counts would drift)."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def state_message(record: store.TransitionRecord) -> SwapStateMessage:
    return SwapStateMessage(
        type="swap.state",
        swap_id=record.swap_id,
        state=record.state,
        at=_iso(record.at),
        detail=record.detail,
        error=record.error,
        final=record.final,
    )


def announce_cancelled_while_pending(record: store.TransitionRecord) -> None:
    """Publish the end of a swap the API cancelled before the engine took it up.

    No engine task runs such a swap, so nobody else tells its stream's followers or the
    dashboards' swap panels; without this they would show it pending until their next
    push or reload. Called from a synchronous view, after the transition committed.
    """
    from dashboard.swaps import swap_panel  # the engine renders; dashboards listen

    try:
        async_to_sync(publish_swap_event)(record.swap_id, state_message(record))
        async_to_sync(publish_fragment)(swap_panel(oob=True))
    except Exception:  # the cancel is done; a failed push must not undo the answer
        log.warning("swap %s: publishing its cancel failed", record.swap_id, exc_info=True)


class SwapJournal:
    """Writes one swap's log lines and publishes its events."""

    def __init__(self, swap_id: int) -> None:
        self.swap_id = swap_id
        self.next_seq = 1
        self.counts = {"stdout": 0, "stderr": 0}

    async def load(self) -> None:
        """Continue after what is stored (a resumed swap)."""
        position = await sync_to_async(store.log_position)(self.swap_id)
        self.next_seq = position.last_seq + 1
        self.counts = {"stdout": position.stdout, "stderr": position.stderr}

    async def say(self, text: str) -> None:
        """Arbiter's own narration."""
        await self.add([("arbiter", text)])

    async def add(self, lines: list[tuple[str, str]]) -> None:
        """Store (stream, text) lines in order, then publish them."""
        if not lines:
            return
        first = self.next_seq
        self.next_seq += len(lines)
        write = asyncio.ensure_future(
            sync_to_async(store.store_log_lines)(self.swap_id, first, lines)
        )
        try:
            rows = await asyncio.shield(write)
        except asyncio.CancelledError:
            # Let the write land and count it, so a later sync neither loses nor repeats
            # these lines; then stop as asked.
            with contextlib.suppress(Exception):
                await write
                self._count(lines)
            raise
        self._count(lines)
        for row in rows:
            await self.publish(
                SwapLineMessage(
                    type="swap.line",
                    swap_id=self.swap_id,
                    seq=row.seq,
                    at=_iso(row.at),
                    stream=row.stream,
                    text=row.text,
                )
            )

    def _count(self, lines: list[tuple[str, str]]) -> None:
        for stream, _text in lines:
            if stream in self.counts:
                self.counts[stream] += 1

    async def publish(self, message: SwapLineMessage | SwapStateMessage) -> None:
        try:
            await publish_swap_event(self.swap_id, message)
            from dashboard.swaps import swap_changed  # the engine renders; dashboards listen

            swap_changed(message)  # pushes the dashboard's swap panel, throttled per swap
        except Exception:  # a full channel layer must never stop a swap
            log.warning("swap %s: publishing an event failed", self.swap_id, exc_info=True)

    async def publish_state(self, record: store.TransitionRecord) -> None:
        await self.publish(state_message(record))

    async def follow(self, target: ssh.SshTarget, container: str) -> None:
        """Store the container's output as it comes, skipping the lines already stored
        (per stream: `docker logs` replays each stream in order).

        Returns when the log ends (the container exited); raises SshError when the
        stream breaks.
        """
        skip = dict(self.counts)
        seen = {"stdout": 0, "stderr": 0}
        lines = ssh.stream_both(target, build_logs_argv(container), check=False)
        async with contextlib.aclosing(lines):  # type: ignore[type-var]
            async for stream, line in lines:
                seen[stream] += 1
                if seen[stream] > skip[stream]:
                    await self.add([(stream, line.rstrip("\r"))])

    async def sync(self, target: ssh.SshTarget, container: str) -> None:
        """Store what following did not: the container's stderr, and stdout lines
        printed after the follower stopped. Never raises for the host's sake."""
        try:
            result = await ssh.run(
                target,
                build_logs_argv(container, follow=False),
                timeout=FULL_LOG_TIMEOUT,
                check=False,
            )
        except SshError as error:
            log.warning("swap %s: could not read the full log: %s", self.swap_id, error)
            return
        if result.exit_status != 0:
            return
        out = split_lines(result.stdout)[self.counts["stdout"] :]
        err = split_lines(result.stderr)[self.counts["stderr"] :]
        await self.add(
            [("stdout", line.rstrip("\r")) for line in out]
            + [("stderr", line.rstrip("\r")) for line in err]
        )

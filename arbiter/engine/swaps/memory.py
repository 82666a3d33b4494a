"""Waiting until a stopped model's GPU memory is really free, before the next launch.

`docker stop` returns when the process is gone, but the driver gives its memory back
a little later; vLLM started in that window refuses to start ("Free memory on device
... less than desired GPU memory utilization"). So the swap polls what the host reports
(nvidia-smi, or MemAvailable on unified-memory GPUs like the GB10) until either the new
model's share fits on every GPU it will use, or the used memory has dropped and holds
steady (what is left belongs to someone else, and vLLM will say so itself), bounded
by ARBITER_SWAP_MEMORY_FREE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from arbiter.engine import ssh
from arbiter.engine.gpu import GpuOutputError, NvidiaSmiFailed
from arbiter.engine.sampler import BATCH_ARGV, parse_batch
from arbiter.engine.swaps.preflight import LaunchPlan
from arbiter.errors import SshError

# Asked often right after the stop, when the memory is most likely coming back (the
# simulator, like a driver, frees it a fraction of a second after the process ends),
# then less often: 0.1 s, growing by 0.1 s per second waited, up to 0.5 s.
POLL_FIRST = 0.1
POLL_MAX = 0.5
POLL_GROWTH = 0.1  # seconds of interval added per second waited
# "Released and steady" means the used memory stayed within the tolerance this long
# after it dropped: a time, not a number of polls, so asking more often does not make
# a release still in progress look finished.
STEADY_SECONDS = 0.5
READ_TIMEOUT = 15.0
STABLE_TOLERANCE_MIB = 256.0  # MemAvailable wanders a little on a busy host


class MemoryNotFreed(Exception):
    """The memory did not come back in time; the message says how far off it is."""


@dataclass(frozen=True)
class GpuMemory:
    """One GPU's memory as the host reports it now, in MiB."""

    index: int
    used: float
    total: float
    unified: bool

    @property
    def free(self) -> float:
        return self.total - self.used


class MemoryWait:
    """Polls one host's GPU memory for one swap."""

    def __init__(
        self,
        plan: LaunchPlan,
        timeout: float,
        say: Callable[[str], Awaitable[None]],
    ) -> None:
        self.plan = plan
        self.timeout = timeout
        self.say = say
        self.before: list[GpuMemory] | None = None

    async def read(self) -> list[GpuMemory]:
        """The GPUs the new model will use, with what they hold now."""
        result = await ssh.run(self.plan.target, BATCH_ARGV, timeout=READ_TIMEOUT)
        try:
            readings, meminfo = parse_batch(result.stdout, result.stderr)
        except NvidiaSmiFailed as error:
            # The host answers but its driver does not: say so in nvidia-smi's own words.
            raise MemoryNotFreed(
                f"cannot read GPU memory on {self.plan.host_name}: GPU driver problem: "
                f"{error.message}"
            ) from error
        except GpuOutputError as error:
            raise MemoryNotFreed(
                f"cannot read GPU memory on {self.plan.host_name}: {error}"
            ) from error
        wanted = self.plan.gpus
        memory = []
        for reading in readings:
            if wanted is not None and reading.index not in wanted:
                continue
            if reading.unified_memory:
                total, free = float(meminfo.total_mib), float(meminfo.available_mib)
                memory.append(GpuMemory(reading.index, total - free, total, True))
            elif reading.memory_total_mib is not None and reading.memory_used_mib is not None:
                memory.append(
                    GpuMemory(
                        reading.index, reading.memory_used_mib, reading.memory_total_mib, False
                    )
                )
        return memory

    async def take_baseline(self) -> None:
        try:
            self.before = await self.read()
        except (MemoryNotFreed, SshError):
            self.before = None

    def need(self, gpu: GpuMemory) -> float:
        return self.plan.gpu_memory_utilization * gpu.total

    def short(self, memory: list[GpuMemory]) -> list[GpuMemory]:
        return [gpu for gpu in memory if gpu.free < self.need(gpu)]

    def describe(self, gpus: list[GpuMemory]) -> str:
        return ", ".join(
            f"GPU {g.index} has {g.free:.0f} MiB free, needs {self.need(g):.0f} MiB "
            f"({self.plan.gpu_memory_utilization:g} × {g.total:.0f} MiB"
            f"{' unified' if g.unified else ''})"
            for g in gpus
        )

    async def wait(self, stopped_any: bool) -> None:
        """Return once the memory is free enough (see the module docstring)."""
        deadline = time.monotonic() + self.timeout
        baseline = sum(g.used for g in self.before) if self.before else None
        # The used figure the steadiness is measured against, and since when it holds.
        steady_at: float | None = None
        steady_since = 0.0
        dropped = False
        announced = False
        started = time.monotonic()
        while True:
            memory = await self.read()
            now = time.monotonic()
            short = self.short(memory)
            if not short:
                detail = ", ".join(f"GPU {g.index} {g.free:.0f} MiB free" for g in memory)
                await self.say(f"GPU memory is free ({detail or 'no GPU memory reported'})")
                return
            used = sum(g.used for g in memory)
            if baseline is not None and used < baseline - STABLE_TOLERANCE_MIB:
                dropped = True
            if steady_at is None or abs(used - steady_at) > STABLE_TOLERANCE_MIB:
                steady_at, steady_since = used, now
            if stopped_any and dropped and now - steady_since >= STEADY_SECONDS:
                await self.say(
                    f"GPU memory released and steady, but still short: {self.describe(short)}"
                )
                return
            if not announced:
                await self.say(f"waiting for GPU memory to be freed: {self.describe(short)}")
                announced = True
            if now >= deadline:
                raise MemoryNotFreed(
                    f"GPU memory was not freed within {self.timeout:g} s: {self.describe(short)}"
                )
            await asyncio.sleep(min(POLL_MAX, POLL_FIRST + POLL_GROWTH * (now - started)))

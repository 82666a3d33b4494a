"""The memory-free wait after a stop: quick when the memory comes back, patient while a
release is still in progress, bounded when it never comes.

The host's readings are scripted over time (the seam is `MemoryWait.read`, which asks
the host over SSH in a swap); everything else is the real wait.
"""

import asyncio
import time
from types import SimpleNamespace
from typing import cast

import pytest

from arbiter.engine.swaps.memory import (
    POLL_MAX,
    STEADY_SECONDS,
    GpuMemory,
    MemoryNotFreed,
    MemoryWait,
)
from arbiter.engine.swaps.preflight import LaunchPlan

TOTAL = 80_000.0
HELD = 0.9 * TOTAL  # what the stopped model held
UTILIZATION = 0.6  # the next model needs 48,000 MiB free


class ScriptedWait(MemoryWait):
    """Reads `used_at(seconds since the wait began)` instead of asking a host."""

    def __init__(self, used_at, timeout: float = 5.0) -> None:
        plan = SimpleNamespace(gpus=None, gpu_memory_utilization=UTILIZATION, host_name="h")
        self.lines: list[str] = []

        async def say(text: str) -> None:
            self.lines.append(text)

        super().__init__(cast(LaunchPlan, plan), timeout, say=say)
        self.used_at = used_at
        self.began = time.monotonic()
        self.reads = 0

    async def read(self) -> list[GpuMemory]:
        self.reads += 1
        return [GpuMemory(0, self.used_at(time.monotonic() - self.began), TOTAL, False)]


async def timed(wait: ScriptedWait, stopped_any: bool = True) -> float:
    await wait.take_baseline()
    wait.began = time.monotonic()
    await wait.wait(stopped_any=stopped_any)
    return time.monotonic() - wait.began


@pytest.mark.asyncio
async def test_it_returns_soon_after_the_memory_comes_back() -> None:
    # Freed 0.5 s after the stop (the simulator's release delay): the wait ends within
    # one short poll of it, not at the next half-second.
    wait = ScriptedWait(lambda t: 600.0 if t >= 0.5 else HELD)
    wait.before = [GpuMemory(0, HELD, TOTAL, False)]
    took = await timed(wait)
    assert 0.5 <= took < 0.5 + 0.2, took
    assert wait.lines[-1].startswith("GPU memory is free")


@pytest.mark.asyncio
async def test_it_does_not_take_a_release_still_in_progress_for_steady() -> None:
    # Someone else holds 40,000 MiB, so the next model never fits. The stopped model's
    # 32,000 MiB come back in steps of 4,000 every 0.15 s (1.2 s in all): each step is
    # larger than the tolerance, so the wait ends only once the steps stop, plus the
    # steady time — however often it asks.
    other = 40_000.0

    def used(t: float) -> float:
        steps = min(8, int(t / 0.15))
        return other + 32_000.0 - 4_000.0 * steps

    wait = ScriptedWait(used)
    wait.before = [GpuMemory(0, other + 32_000.0, TOTAL, False)]
    took = await timed(wait)
    assert took >= 1.2 + STEADY_SECONDS, took
    assert took < 1.2 + STEADY_SECONDS + POLL_MAX + 0.2, took
    assert "released and steady, but still short" in wait.lines[-1]
    assert wait.reads > 6  # it asked often, and still waited for the steps to end


@pytest.mark.asyncio
async def test_it_ends_at_its_timeout_when_the_memory_never_comes_back() -> None:
    wait = ScriptedWait(lambda t: HELD, timeout=1.0)
    wait.before = [GpuMemory(0, HELD, TOTAL, False)]
    with pytest.raises(MemoryNotFreed, match="not freed within 1 s"):
        await asyncio.wait_for(timed(wait), 5)

"""What a sleeping simulated vLLM still holds, for the host's memory readings.

vLLM's sleep level 1 offloads the weights to CPU RAM and discards the KV cache; level 2
discards both (docs.vllm.ai, "Sleep Mode"). So after `POST /sleep`:
- on a discrete GPU the container's GPU memory is freed, and level 1 takes host RAM for
  the weights (less MemAvailable in /proc/meminfo);
- on a unified-memory GPU (GB10) CPU RAM is the same pool: level 1 frees only the KV
  cache part, the weights stay counted against MemAvailable.
The simulated container says when it falls asleep or wakes in its log (a `(simulated)`
line after vLLM's own "Sleep mode freed ..." line); the daemon reads each running
container's new log lines here whenever it computes the GPU loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from arbiter.simulator.gpus import GpuBoard, GpuLoad

ASLEEP_RE = re.compile(r"^\(simulated\) asleep level=(\d+) weights_mib=(\d+)$")
AWAKE_LINE = "(simulated) awake"


@dataclass
class SleepState:
    """How far a container's log was read, and what it said last."""

    offset: int = 0
    level: int = 0  # 0: awake
    weights_mib: int = 0


_states: dict[tuple[str, int], SleepState] = {}  # (container id, pid) -> state


def read_sleep(container_id: str, pid: int, log_path: Path) -> SleepState:
    """The container's sleep state, from the log lines written since the last call."""
    key = (container_id, pid)
    state = _states.setdefault(key, SleepState())
    try:
        with open(log_path, "rb") as log:
            log.seek(state.offset)
            chunk = log.read()
    except OSError:
        return state
    end = chunk.rfind(b"\n") + 1  # only whole lines; the rest is read next time
    state.offset += end
    for raw in chunk[:end].decode("utf-8", "replace").splitlines():
        if raw == AWAKE_LINE:
            state.level, state.weights_mib = 0, 0
        elif match := ASLEEP_RE.match(raw):
            state.level, state.weights_mib = int(match.group(1)), int(match.group(2))
    return state


def held(gpus: tuple[int, ...], mib: int, pid: int, state: SleepState, board: GpuBoard) -> GpuLoad:
    """The load a container puts on the board, asleep or not."""
    if not state.level:
        return GpuLoad(gpus, mib, pid)
    unified = all(board.specs[i].unified for i in gpus if 0 <= i < len(board.specs))
    if unified:  # the weights stay in the one pool (level 1); level 2 discarded them
        return GpuLoad(gpus, state.weights_mib, pid)
    return GpuLoad(gpus, 0, pid, host_ram_mib=state.weights_mib * len(gpus))


def forget(container_id: str) -> None:
    """Drop what was read of a removed container's log."""
    for key in [k for k in _states if k[0] == container_id]:
        del _states[key]

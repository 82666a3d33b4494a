"""GPU sampling loops: one per host, one batched SSH command per tick.

Viewers never trigger sampling: the loops write rows, pages read them. A host that
fails a tick gets a miss counted (stale, then offline, see Host.state) and its last
good values stay in the database, visibly aged. A host that answers but whose
nvidia-smi fails (driver/library mismatch, no devices) is not a miss: the tick records
its memory and `Host.driver_error` in the tool's own words, and no GPU readings.
"""

import asyncio
import logging
import shlex
from dataclasses import dataclass
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from arbiter import events
from arbiter.engine import held_memory, ssh
from arbiter.engine.gpu import (
    MEMINFO_ARGV,
    NVIDIA_SMI_ARGV,
    GpuOutputError,
    GpuReading,
    MemInfo,
    NvidiaSmiFailed,
    NvmlReader,
    driver_message,
    parse_meminfo,
    parse_nvidia_smi_csv,
)
from arbiter.errors import SshError
from arbiter.models import GpuSample, Host

log = logging.getLogger(__name__)

SECTION_MARK = "@@arbiter-section@@"
# Printed only when nvidia-smi exited 0: its failures go to stdout like its CSV does
# (see gpu.NvidiaSmiFailed), so the exit status is what tells the two apart.
GPU_OK_MARK = "@@arbiter-gpu-ok@@"
# Both commands are constants; the batch is built from quoted argvs, never from input.
BATCH_ARGV = [
    "sh",
    "-c",
    f"{shlex.join(NVIDIA_SMI_ARGV)} && echo {GPU_OK_MARK} ; echo {SECTION_MARK} ; "
    f"{shlex.join(MEMINFO_ARGV)}",
]
HISTORY = timedelta(minutes=15)
HOST_LIST_REFRESH_SECONDS = 10.0
MAX_RECONNECT_BACKOFF = 30.0


@dataclass(frozen=True)
class BatchSample:
    """One tick of a host: GPUs, memory, and nvidia-smi's own message when it failed."""

    readings: list[GpuReading]
    meminfo: MemInfo
    driver_error: str = ""


def read_batch(stdout: str, stderr: str = "") -> BatchSample:
    """Split the batched output; a failing nvidia-smi gives no readings and its message."""
    gpu_text, mark, meminfo_text = stdout.partition(SECTION_MARK)
    if not mark:
        raise GpuOutputError("batched sample output is incomplete")
    meminfo = parse_meminfo(meminfo_text)
    csv_text, ok, _ = gpu_text.partition(GPU_OK_MARK)
    if not ok:
        # Never invent readings from a failed run (the CSV may be half there).
        return BatchSample([], meminfo, driver_message(gpu_text, stderr))
    return BatchSample(parse_nvidia_smi_csv(csv_text), meminfo)


def parse_batch(stdout: str, stderr: str = "") -> tuple[list[GpuReading], MemInfo]:
    """GPUs and memory; a failing nvidia-smi raises NvidiaSmiFailed with its own message."""
    sample = read_batch(stdout, stderr)
    if sample.driver_error:
        raise NvidiaSmiFailed(sample.driver_error)
    return sample.readings, sample.meminfo


def read_local_meminfo() -> MemInfo | None:
    try:
        with open("/proc/meminfo") as handle:
            return parse_meminfo(handle.read())
    except (OSError, GpuOutputError):
        return None


def _memory_figures(reading: GpuReading, meminfo: MemInfo | None) -> tuple[float | None, ...]:
    """(used, total) MiB; a unified-memory GPU shares host memory, so show that instead."""
    if reading.unified_memory and meminfo is not None:
        return float(meminfo.total_mib - meminfo.available_mib), float(meminfo.total_mib)
    return reading.memory_used_mib, reading.memory_total_mib


def record_sample(
    host_id: int, readings: list[GpuReading], meminfo: MemInfo | None, driver_error: str = ""
) -> list[GpuSample]:
    """The host answered: no miss. `driver_error` set means nvidia-smi failed (no readings);
    the next good tick clears it. Returns the rows written."""
    now = timezone.now()
    rows = []
    for r in readings:
        memory_used, memory_total = _memory_figures(r, meminfo)
        rows.append(
            GpuSample(
                host_id=host_id,
                taken_at=now,
                index=r.index,
                uuid=r.uuid,
                name=r.name,
                utilization_pct=r.utilization_pct,
                memory_used_mib=memory_used,
                memory_total_mib=memory_total,
                temperature_c=r.temperature_c,
                power_w=r.power_w,
                unified_memory=r.unified_memory,
            )
        )
    with transaction.atomic():
        GpuSample.objects.bulk_create(rows)
        # Back from offline: the first good tick after the misses reached the limit (an
        # UPDATE that matches only then, so a live host pays one cheap statement).
        came_back = Host.objects.filter(
            pk=host_id, missed_samples__gte=settings.ARBITER_OFFLINE_AFTER_MISSES
        ).update(missed_samples=0)
        Host.objects.filter(pk=host_id).update(
            last_sample_at=now,
            last_attempt_at=now,
            missed_samples=0,
            last_error="",
            driver_error=driver_error,
            mem_total_mib=meminfo.total_mib if meminfo else None,
            mem_available_mib=meminfo.available_mib if meminfo else None,
        )
        if came_back:
            events.host_online_changed.send(Host, host_id=host_id, online=True, error="")
    return rows


@sync_to_async
def record_and_announce(
    host_id: int, readings: list[GpuReading], meminfo: MemInfo | None, driver_error: str = ""
) -> None:
    """One tick's writes and their announcement, in one trip to a database thread (the
    dashboard renders the host's card there, from the rows just written)."""
    rows = record_sample(host_id, readings, meminfo, driver_error)
    events.host_sampled.send(sender=None, host_id=host_id, latest=rows)


@sync_to_async
def record_miss(host_id: int, error: str | None) -> None:
    """Count a missed tick (and announce it: the card ages towards stale and offline);
    `error` None keeps the last real error (a tick in backoff)."""
    fields = {"missed_samples": F("missed_samples") + 1}
    if error is not None:
        fields.update(last_attempt_at=timezone.now(), last_error=error)
    with transaction.atomic():
        # The miss that makes the host offline (Host.state) is announced once, with the
        # change, not on every later miss: a conditional UPDATE that matches only it.
        went_offline = Host.objects.filter(
            pk=host_id, missed_samples=settings.ARBITER_OFFLINE_AFTER_MISSES - 1
        ).update(**fields)
        if not went_offline:
            Host.objects.filter(pk=host_id).update(**fields)
        else:
            last_error = Host.objects.filter(pk=host_id).values_list("last_error", flat=True).get()
            events.host_online_changed.send(Host, host_id=host_id, online=False, error=last_error)
    events.host_sampled.send(sender=None, host_id=host_id, latest=None)


@sync_to_async
def prune_history() -> int:
    """The GPU sample history (every refresh: it is minutes long)."""
    deleted, _ = GpuSample.objects.filter(taken_at__lt=timezone.now() - HISTORY).delete()
    return deleted


@sync_to_async
def load_hosts() -> list[tuple[int, str, ssh.SshTarget]]:
    """(id, sampling mode, target) of every host in the inventory, read once per refresh."""
    timeout = settings.ARBITER_SSH_CONNECT_TIMEOUT
    return [
        (h.pk, h.sampling, ssh.SshTarget.from_host(h, connect_timeout=timeout))
        for h in Host.objects.filter(in_inventory=True)
    ]


class Sampler:
    """Keeps one sampling task per host and restarts them when the inventory changes."""

    def __init__(self, interval: float | None = None, nvml: NvmlReader | None = None) -> None:
        self.interval = interval or settings.ARBITER_SAMPLE_INTERVAL
        self.nvml = nvml or NvmlReader()
        self._tasks: dict[int, tuple[ssh.SshTarget, str, asyncio.Task]] = {}

    async def sample_once(self, host_id: int, sampling: str, target: ssh.SshTarget) -> bool:
        """Take one sample and announce it; True when the host answered."""
        try:
            driver_error = ""
            if sampling == Host.SAMPLING_NVML:
                readings = await asyncio.to_thread(self.nvml.read)
                meminfo = read_local_meminfo()
            else:
                result = await ssh.run(target, BATCH_ARGV, timeout=max(self.interval, 5.0))
                sample = read_batch(result.stdout, result.stderr)
                readings, meminfo = sample.readings, sample.meminfo
                driver_error = sample.driver_error
                if driver_error:
                    log.warning("nvidia-smi on %s failed: %s", target.name, driver_error)
        except (SshError, GpuOutputError) as exc:
            log.warning("sample of %s failed: %s", target.name, exc)
            await record_miss(host_id, str(exc))
            return False
        await record_and_announce(host_id, readings, meminfo, driver_error)
        if host_id in held_memory.WATCHED and sampling == Host.SAMPLING_SSH:
            await held_memory.recheck(host_id, target)  # memory a stop did not return
        return True

    async def _host_loop(
        self, host_id: int, sampling: str, target: ssh.SshTarget, start_delay: float = 0.0
    ) -> None:
        """Tick every interval; after failures, reconnect attempts back off exponentially.

        Ticks without an attempt still count (and announce) a miss, so the
        dashboard moves from stale to offline on time instead of freezing.
        """
        loop = asyncio.get_running_loop()
        backoff = 0.0
        next_attempt_at = 0.0
        await asyncio.sleep(start_delay)
        while True:
            started = loop.time()
            if started >= next_attempt_at:
                if await self.sample_once(host_id, sampling, target):
                    backoff = 0.0
                else:
                    backoff = min(max(backoff * 2, self.interval), MAX_RECONNECT_BACKOFF)
                    next_attempt_at = loop.time() + backoff
            else:
                await record_miss(host_id, None)
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def _sync_tasks(self) -> None:
        # Hosts whose memory a stop did not return, as the rows say (after a restart too).
        await sync_to_async(held_memory.load_watched)()
        wanted = {host_id: (target, sampling) for host_id, sampling, target in await load_hosts()}
        for host_id, (target, sampling, task) in list(self._tasks.items()):
            if wanted.get(host_id) != (target, sampling) or task.done():
                task.cancel()
                del self._tasks[host_id]
                await ssh.get_pool().forget(target.name)
        new_hosts = [host_id for host_id in wanted if host_id not in self._tasks]
        for position, host_id in enumerate(new_hosts):
            target, sampling = wanted[host_id]
            # Spread the hosts' ticks over the interval: started together they stay in
            # step and every tick's writes queue behind each other on the database.
            start_delay = self.interval * position / len(new_hosts)
            task = asyncio.create_task(self._host_loop(host_id, sampling, target, start_delay))
            self._tasks[host_id] = (target, sampling, task)

    async def run_forever(self) -> None:
        try:
            while True:
                await self._sync_tasks()
                await prune_history()
                await asyncio.sleep(HOST_LIST_REFRESH_SECONDS)
        finally:
            for _target, _sampling, task in self._tasks.values():
                task.cancel()

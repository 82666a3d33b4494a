"""Simulated GPUs and host memory: what `nvidia-smi` and `/proc/meminfo` report.

Numbers follow what the simulated docker daemon has loaded (a `GpuLoad` per running,
ready container), so a swap shows memory rising after the model is ready and falling
a moment after it stops. Tests can pin any value per GPU with overrides. A unified-
memory GPU (GB10) reports `[N/A]` for its own memory and power limit; its loads show up as
less MemAvailable in the host's /proc/meminfo instead, as on a DGX Spark (it does report
its power draw, with no power limit). A board can also have a broken driver
(`driver_fault`): nvidia-smi then answers like the real tool does (DRIVER_FAULTS).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

DRIVER_VERSION = "580.95.05"
CUDA_VERSION = "13.0"
NA = "[N/A]"
IDLE_MIB = 3  # the driver's own allocation on an idle GPU
LOADED_UTILIZATION = 1  # a loaded but idle vLLM polls a little

Writer = Callable[[str], None]

# What the real nvidia-smi prints (on stdout, not stderr) and exits with when the driver
# is broken; every invocation answers so, whatever it asked. Sources, quoted verbatim in
# tests/engine/fixtures/nvidia_smi/README.md: exit codes are NVML return codes (docs.nvidia
# .com/deploy/nvidia-smi, "RETURN VALUE"); version mismatch: two lines, exit 18
# (NVML_ERROR_LIB_RM_VERSION_MISMATCH; anderskm/gputil#55 `echo $?` 18, mozilla/translations
# #1167 logs both lines as stdout, "return code 18"); driver not loaded: exit 9 with
# --query-gpu (anderskm/gputil#26); no devices: on stdout (edgelesssys/contrast#1411), exit 6
# ("A query to find an object was unsuccessful") — no captured `echo $?` was found for it.
DRIVER_FAULTS: dict[str, tuple[str, int]] = {
    "version_mismatch": (
        "Failed to initialize NVML: Driver/library version mismatch\n"
        f"NVML library version: {'.'.join(DRIVER_VERSION.split('.')[:2])}\n",
        18,
    ),
    "no_devices": ("No devices were found\n", 6),
    "driver_not_loaded": (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.\n\n",
        9,
    ),
}
DRIVER_FAULT_NAMES = ("none", *DRIVER_FAULTS)


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model; `memory_mib=None` means unified memory (reported as [N/A])."""

    name: str
    memory_mib: int | None
    power_limit_w: float | None = 300.0
    idle_power_w: float = 20.0

    @property
    def unified(self) -> bool:
        return self.memory_mib is None


RTX_6000_ADA = GpuSpec("NVIDIA RTX 6000 Ada Generation", 49140, 300.0, 22.5)
H100_80GB = GpuSpec("NVIDIA H100 80GB HBM3", 81559, 700.0, 72.3)
GB10 = GpuSpec("NVIDIA GB10", None, None, 4.5)


@dataclass(frozen=True)
class GpuLoad:
    """Memory one container holds on each of `gpus` (MiB), and whether it computes."""

    gpus: tuple[int, ...]
    mib: int
    pid: int = 0
    # What nvidia-smi --query-compute-apps names it: every simulated container runs
    # `vllm serve`, whose engine-core process holds the GPU memory and retitles itself
    # (a GB10's real listing: "3858903, VLLM::EngineCore, 6265 MiB").
    process_name: str = "VLLM::EngineCore"
    # Host RAM it takes besides: a sleeping vLLM's weights offloaded from a discrete GPU.
    host_ram_mib: int = 0


@dataclass
class GpuOverrides:
    """Values a test pinned; None means "follow the simulation"."""

    utilization: float | None = None
    temperature: float | None = None
    power: float | None = None
    memory_used_mib: int | None = None


@dataclass(frozen=True)
class GpuReading:
    """One GPU as nvidia-smi would show it right now (None = [N/A])."""

    index: int
    spec: GpuSpec
    uuid: str
    bus_id: str
    utilization: float
    memory_used_mib: int | None
    temperature: float
    power: float | None

    @property
    def memory_total_mib(self) -> int | None:
        return self.spec.memory_mib

    @property
    def memory_free_mib(self) -> int | None:
        if self.memory_used_mib is None or self.spec.memory_mib is None:
            return None
        return max(0, self.spec.memory_mib - self.memory_used_mib)


@dataclass
class HostMemory:
    """Host RAM in kB, as /proc/meminfo counts it."""

    total_kb: int
    base_used_kb: int = 6_291_456  # OS, sshd, docker daemon, page tables
    swap_kb: int = 8_388_604


@dataclass
class GpuBoard:
    """A host's GPUs and memory; `loads` is asked for the current loads on every read."""

    host: str
    specs: list[GpuSpec]
    memory: HostMemory
    loads: Callable[[], Iterable[GpuLoad]] = lambda: ()
    overrides: dict[int, GpuOverrides] = field(default_factory=dict)
    driver_fault: str = "none"  # one of DRIVER_FAULT_NAMES

    def set_driver_fault(self, fault: str) -> None:
        """Break (or mend, with "none") the driver: only nvidia-smi notices."""
        if fault not in DRIVER_FAULT_NAMES:
            raise ValueError(f"unknown driver fault {fault!r}; one of {list(DRIVER_FAULT_NAMES)}")
        self.driver_fault = fault

    def set_gpu(self, index: int, reset: bool = False, **values: float | int | None) -> None:
        """Pin utilization / temperature / power / memory_used_mib; `reset` unpins all."""
        if not 0 <= index < len(self.specs):
            raise IndexError(f"{self.host} has no GPU {index}")
        current = GpuOverrides() if reset else self.overrides.get(index, GpuOverrides())
        self.overrides[index] = replace(current, **values)

    def readings(self) -> list[GpuReading]:
        loads = list(self.loads())
        return [self._reading(i, spec, loads) for i, spec in enumerate(self.specs)]

    def _reading(self, index: int, spec: GpuSpec, loads: list[GpuLoad]) -> GpuReading:
        pinned = self.overrides.get(index, GpuOverrides())
        held = sum(load.mib for load in loads if index in load.gpus)
        busy = held > 0
        digest = hashlib.sha256(f"{self.host}/{index}".encode()).hexdigest()
        uuid = f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        used = None if spec.unified else min(spec.memory_mib or 0, IDLE_MIB + held)
        # A GB10 reports its draw (nvitop#208: "11.17 W"; DGX Spark nvidia-smi: "3W /  N/A").
        power = spec.idle_power_w * (1.6 if busy else 1.0)
        return GpuReading(
            index=index,
            spec=spec,
            uuid=uuid,
            bus_id=f"00000000:{1 + index:02X}:00.0",
            utilization=_pick(pinned.utilization, LOADED_UTILIZATION if busy else 0),
            # A unified GPU has no memory of its own to report, pinned or not.
            memory_used_mib=None if used is None else int(_pick(pinned.memory_used_mib, used)),
            temperature=_pick(pinned.temperature, (38 if busy else 31) + index),
            power=_pick(pinned.power, power),
        )

    def unified_used_kb(self) -> int:
        """Host memory GPU work takes on unified-memory GPUs (pinned value wins)."""
        total = 0
        loads = list(self.loads())
        for index, spec in enumerate(self.specs):
            if not spec.unified:
                continue
            pinned = self.overrides.get(index, GpuOverrides()).memory_used_mib
            held = sum(load.mib for load in loads if index in load.gpus)
            total += (pinned if pinned is not None else held) * 1024
        return total

    def available_kb(self) -> int:
        offloaded = sum(load.host_ram_mib for load in self.loads()) * 1024
        used = self.memory.base_used_kb + self.unified_used_kb() + offloaded
        return max(0, self.memory.total_kb - used)

    def free_mib(self, index: int) -> int:
        """What vLLM's start-up check sees as free on GPU `index`."""
        spec = self.specs[index]
        if spec.unified:
            return self.available_kb() // 1024
        reading = self._reading(index, spec, list(self.loads()))
        return reading.memory_free_mib or 0

    def total_mib(self, index: int) -> int:
        """Total memory vLLM sizes `--gpu-memory-utilization` against."""
        spec = self.specs[index]
        return spec.memory_mib if spec.memory_mib is not None else self.memory.total_kb // 1024

    def meminfo(self) -> str:
        return meminfo_text(self.memory, self.available_kb())


def _pick(pinned: float | int | None, simulated: float | int) -> float | int:
    return simulated if pinned is None else pinned


def meminfo_text(memory: HostMemory, available_kb: int) -> str:
    """/proc/meminfo in the kernel's layout: name padded to 16, value to 8, then kB."""
    total = memory.total_kb
    buffers = min(524_288, available_kb // 8)
    cached = min(6_291_456, available_kb // 4)
    free = max(0, available_kb - buffers - cached)
    rows = [
        ("MemTotal", total),
        ("MemFree", free),
        ("MemAvailable", available_kb),
        ("Buffers", buffers),
        ("Cached", cached),
        ("SwapCached", 0),
        ("Active", (total - free) // 2),
        ("Inactive", cached // 2),
        ("SwapTotal", memory.swap_kb),
        ("SwapFree", memory.swap_kb),
        ("Dirty", 1_024),
        ("Writeback", 0),
        ("AnonPages", max(0, total - available_kb) // 2),
        ("Mapped", 262_144),
        ("Shmem", 65_536),
        ("Slab", 524_288),
        ("SReclaimable", 262_144),
        ("SUnreclaim", 262_144),
        ("KernelStack", 16_384),
        ("PageTables", 32_768),
        ("CommitLimit", total // 2 + memory.swap_kb),
        ("Committed_AS", max(0, total - available_kb)),
        ("VmallocTotal", 34_359_738_367),
        ("VmallocUsed", 131_072),
        ("VmallocChunk", 0),
    ]
    lines = [f"{name + ':':<16}{value:>8} kB" for name, value in rows]
    lines += ["HugePages_Total:       0", "HugePages_Free:        0", "Hugepagesize:       2048 kB"]
    return "\n".join(lines) + "\n"


# field -> (canonical name for the header, unit in the header, formatter)
def _mib(value: int | None) -> str | None:
    return None if value is None else str(value)


_FIELDS: dict[str, tuple[str, str, Callable[[GpuReading, int], str | None]]] = {
    "index": ("index", "", lambda r, n: str(r.index)),
    "count": ("count", "", lambda r, n: str(n)),
    "uuid": ("uuid", "", lambda r, n: r.uuid),
    "gpu_uuid": ("uuid", "", lambda r, n: r.uuid),
    "name": ("name", "", lambda r, n: r.spec.name),
    "gpu_name": ("name", "", lambda r, n: r.spec.name),
    "pci.bus_id": ("pci.bus_id", "", lambda r, n: r.bus_id),
    "gpu_bus_id": ("pci.bus_id", "", lambda r, n: r.bus_id),
    "driver_version": ("driver_version", "", lambda r, n: DRIVER_VERSION),
    "utilization.gpu": ("utilization.gpu", "%", lambda r, n: f"{r.utilization:.0f}"),
    "utilization.memory": (
        "utilization.memory",
        "%",
        lambda r, n: f"{min(r.utilization, 100) // 2:.0f}",
    ),
    "memory.used": ("memory.used", "MiB", lambda r, n: _mib(r.memory_used_mib)),
    "memory.total": ("memory.total", "MiB", lambda r, n: _mib(r.memory_total_mib)),
    "memory.free": ("memory.free", "MiB", lambda r, n: _mib(r.memory_free_mib)),
    "temperature.gpu": ("temperature.gpu", "", lambda r, n: f"{r.temperature:.0f}"),
    "power.draw": (
        "power.draw",
        "W",
        lambda r, n: None if r.power is None else f"{r.power:.2f}",
    ),
    "power.limit": (
        "power.limit",
        "W",
        lambda r, n: None if r.spec.power_limit_w is None else f"{r.spec.power_limit_w:.2f}",
    ),
    "fan.speed": (
        "fan.speed",
        "%",
        lambda r, n: None if r.spec.unified else f"{30 + int(r.utilization) // 2}",
    ),
    "pstate": ("pstate", "", lambda r, n: "P0" if r.utilization else "P8"),
    "persistence_mode": ("persistence_mode", "", lambda r, n: "Enabled"),
    "compute_mode": ("compute_mode", "", lambda r, n: "Default"),
}
_APP_FIELDS = (
    "pid",
    "process_name",
    "used_memory",
    "used_gpu_memory",
    "gpu_uuid",
    "gpu_name",
    "gpu_bus_id",
)


def nvidia_smi(argv: list[str], board: GpuBoard, out: Writer, err: Writer) -> int:
    """`nvidia-smi` with --query-gpu / --query-compute-apps, -i, -L, or the summary table."""
    options: dict[str, str] = {}
    args = iter(argv[1:])
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in ("-i", "--id"):
            options["i"] = value if eq else next(args, "")
        elif name in ("--query-gpu", "--query-compute-apps", "--format"):
            options[name] = value if eq else next(args, "")
        elif arg in ("-L", "--list-gpus"):
            options["-L"] = ""
        else:
            err("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n")
            return 2
    broken = DRIVER_FAULTS.get(board.driver_fault)
    if broken is not None:
        text, status = broken
        out(text)  # the real tool prints these on stdout
        return status
    readings = board.readings()
    if "i" in options:
        wanted = options["i"].split(",")
        if not all(w.isdigit() and int(w) < len(readings) for w in wanted):
            err(f"No devices were found matching {options['i']!r}.\n")
            return 6
        readings = [r for r in readings if str(r.index) in wanted]
    if "-L" in options:
        for r in readings:
            out(f"GPU {r.index}: {r.spec.name} (UUID: {r.uuid})\n")
        return 0
    query = options.get("--query-gpu") or options.get("--query-compute-apps")
    if query is None:
        out(_summary(readings))
        return 0
    fmt = options.get("--format")
    if fmt is None:
        err(
            '"--format" option is required with "--query-*" options. '
            "Please run 'nvidia-smi -h' for help.\n"
        )
        return 2
    flags = fmt.split(",")
    if flags[0] != "csv" or any(f not in ("noheader", "nounits") for f in flags[1:]):
        err(f"\"{fmt}\" is not a valid format. Please run 'nvidia-smi -h' for help.\n")
        return 2
    fields = [f.strip() for f in query.split(",")]
    known = _FIELDS if "--query-gpu" in options else dict.fromkeys(_APP_FIELDS)
    for name in fields:
        if name not in known:
            err(f'Field "{name}" is not a valid field to query.\n\n')
            return 2
    units = "nounits" not in flags
    if "--query-gpu" in options:
        rows = [_gpu_row(r, fields, len(board.specs), units) for r in readings]
        headers = [_header(_FIELDS[f][0], _FIELDS[f][1]) for f in fields]
    else:
        rows = _app_rows(board, readings, fields, units)
        # Both memory fields print under one header: "pid, process_name,
        # used_gpu_memory [MiB]" for --query-compute-apps=pid,process_name,used_memory.
        headers = [_header("used_gpu_memory", "MiB") if "memory" in f else f for f in fields]
    if "noheader" not in flags:
        out(", ".join(headers) + "\n")
    for row in rows:
        out(", ".join(row) + "\n")
    return 0


def _header(name: str, unit: str) -> str:
    return f"{name} [{unit}]" if unit else name


def _gpu_row(reading: GpuReading, fields: list[str], count: int, units: bool) -> list[str]:
    row = []
    for name in fields:
        _canonical, unit, render = _FIELDS[name]
        value = render(reading, count)
        if value is None:
            row.append(NA)
        else:
            row.append(f"{value} {unit}" if units and unit else value)
    return row


def _app_rows(
    board: GpuBoard, readings: list[GpuReading], fields: list[str], units: bool
) -> list[list[str]]:
    by_index = {r.index: r for r in readings}
    rows = []
    for load in board.loads():
        for index in load.gpus:
            reading = by_index.get(index)
            if reading is None:
                continue
            # Per process, a unified GPU (GB10) does report its share, unlike memory.used
            # (unslothai/unsloth#10283: "--query-compute-apps=used_memory returns real
            # values" on a DGX Spark; Syllo/nvtop#449 sums nvmlDeviceGetComputeRunningProcesses
            # there).
            mib = f"{load.mib}{' MiB' if units else ''}"
            values = {
                "pid": str(load.pid),
                "process_name": load.process_name,
                "used_memory": mib,
                "used_gpu_memory": mib,
                "gpu_uuid": reading.uuid,
                "gpu_name": reading.spec.name,
                "gpu_bus_id": reading.bus_id,
            }
            rows.append([values[f] for f in fields])
    return rows


def _summary(readings: list[GpuReading]) -> str:
    """A short version of the default nvidia-smi table (humans only; nobody parses it)."""
    lines = [
        time.strftime("%a %b %d %H:%M:%S %Y"),
        f"NVIDIA-SMI {DRIVER_VERSION}    Driver Version: {DRIVER_VERSION}    "
        f"CUDA Version: {CUDA_VERSION}",
        "GPU  Name" + " " * 31 + "Bus-Id            Temp  Pwr   Memory-Usage    Util",
    ]
    for r in readings:
        memory = (
            "Not Supported"
            if r.memory_used_mib is None
            else f"{r.memory_used_mib}MiB / {r.memory_total_mib}MiB"
        )
        power = "N/A" if r.power is None else f"{r.power:.0f}W"
        lines.append(
            f"{r.index:<4} {r.spec.name:<34} {r.bus_id:<17} {r.temperature:.0f}C   "
            f"{power:<5} {memory:<15} {r.utilization:.0f}%"
        )
    return "\n".join(lines) + "\n"

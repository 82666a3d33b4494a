"""GPU readings: the `nvidia-smi` CSV parser for remote hosts and the NVML reader for this one.

Only this module speaks NVML. Readings are plain dataclasses; a field the GPU does not
report (`[N/A]`, `[Not Supported]`, empty) is None, never a made-up zero.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# The order of this tuple is the order nvidia-smi prints the columns in.
QUERY_FIELDS = (
    "index",
    "uuid",
    "name",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "temperature.gpu",
    "power.draw",
)
NVIDIA_SMI_ARGV = [
    "nvidia-smi",
    "--query-gpu=" + ",".join(QUERY_FIELDS),
    "--format=csv,noheader,nounits",
]
MEMINFO_ARGV = ["cat", "/proc/meminfo"]
# The processes holding GPU memory (nvidia-smi --help-query-compute-apps: pid,
# gpu_uuid, used_memory "Amount memory used on the device by the context", and
# process_name). `process_name` goes last: a path may hold a comma, and it is split off
# whole. No process at all prints nothing with `noheader` (just the header without it).
# used_memory may be "[N/A]" where the driver cannot attribute it (NVML's
# nvmlProcessInfo_t.usedGpuMemory: "Under WDDM, NVML_VALUE_NOT_AVAILABLE is always
# reported", docs.nvidia.com/deploy/nvml-api/api/structnvmlProcessInfo__t.html) or
# "[Insufficient Permissions]": the process is listed, its share is None. A GB10 does
# report it per process, though not per GPU (unslothai/unsloth#10283, Syllo/nvtop#449).
COMPUTE_APPS_FIELDS = ("pid", "gpu_uuid", "used_memory", "process_name")
COMPUTE_APPS_ARGV = [
    "nvidia-smi",
    "--query-compute-apps=" + ",".join(COMPUTE_APPS_FIELDS),
    "--format=csv,noheader,nounits",
]

_MISSING = {"", "[n/a]", "n/a", "[not supported]", "[unknown error]", "[insufficient permissions]"}
# What `--format=csv` (without `nounits`) appends to a number: "37 %", "11.17 W", "3 MiB".
_UNITS = {"%", "W", "MiB", "MHz", "C"}
# How much of a failing nvidia-smi's own message is kept (its first lines say it all:
# "Failed to initialize NVML: Driver/library version mismatch" / "NVML library version: ...").
DRIVER_MESSAGE_LINES = 3
DRIVER_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant."""

    index: int
    uuid: str
    name: str
    utilization_pct: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None
    temperature_c: float | None
    power_w: float | None

    @property
    def unified_memory(self) -> bool:
        # GB10-class GPUs share host memory and report no memory of their own.
        return self.memory_total_mib is None


@dataclass(frozen=True)
class MemInfo:
    """Host memory from /proc/meminfo, in MiB."""

    total_mib: int
    available_mib: int


class GpuOutputError(ValueError):
    """nvidia-smi printed something we cannot read; the sample is a miss, not zeros."""


class NvidiaSmiFailed(GpuOutputError):
    """nvidia-smi ran and exited non-zero: a driver problem, reported in the tool's own words.

    The host answered over SSH, so this is not a missed sample. The real tool prints these
    on stdout, not stderr, with its NVML return code as exit status (docs.nvidia.com/deploy/
    nvidia-smi, "RETURN VALUE"; see tests/engine/fixtures/nvidia_smi/README.md):
    "Failed to initialize NVML: Driver/library version mismatch" + "NVML library version:
    535.161", exit 18 (anderskm/gputil#55, mozilla/translations#1167); "No devices were
    found" (edgelesssys/contrast#1411); "NVIDIA-SMI has failed because it couldn't
    communicate with the NVIDIA driver. ...", exit 9 (anderskm/gputil#26).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def driver_message(stdout: str, stderr: str = "") -> str:
    """The first lines of a failing nvidia-smi's message, trimmed (stdout first: see above)."""
    text = stdout if stdout.strip() else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = "\n".join(lines[:DRIVER_MESSAGE_LINES])[:DRIVER_MESSAGE_CHARS]
    return message or "nvidia-smi failed and printed nothing"


def _number(raw: str) -> float | None:
    value = raw.strip()
    if value.lower() in _MISSING:
        return None
    number, _, unit = value.partition(" ")
    if unit in _UNITS:
        value = number
    try:
        return float(value)
    except ValueError:
        raise GpuOutputError(f"not a number: {raw!r}") from None


def _header_field(cell: str) -> str:
    return cell.strip().partition(" [")[0]  # "memory.used [MiB]" -> "memory.used"


def parse_nvidia_smi_csv(
    text: str, fields: Sequence[str] = QUERY_FIELDS, header: bool = False
) -> list[GpuReading]:
    """Parse `nvidia-smi --query-gpu=<fields> --format=csv[,noheader][,nounits]`.

    The sampler always asks for QUERY_FIELDS without header or units; other field lists
    (real outputs quoted in bug reports, read by the tests) work too: a field we read but
    that was not asked for is None, and a missing `index` is the row's position (nvidia-smi
    lists GPUs in the driver's enumeration order).
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if header and lines:
        names = [_header_field(cell) for cell in lines.pop(0).split(",")]
        if names != list(fields):
            raise GpuOutputError(f"unexpected header: {names!r}, asked for {list(fields)!r}")
    readings = []
    for position, line in enumerate(lines):
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(fields):
            raise GpuOutputError(f"expected {len(fields)} columns, got {len(cells)}: {line!r}")
        row = dict(zip(fields, cells, strict=True))
        index = row.get("index", str(position))
        if not index.isdigit():
            raise GpuOutputError(f"bad GPU index: {index!r}")

        def number(field: str, row: dict[str, str] = row) -> float | None:
            return _number(row[field]) if field in row else None

        readings.append(
            GpuReading(
                index=int(index),
                uuid=row.get("uuid", row.get("gpu_uuid", "")),
                name=row.get("name", row.get("gpu_name", "")),
                utilization_pct=number("utilization.gpu"),
                memory_used_mib=number("memory.used"),
                memory_total_mib=number("memory.total"),
                temperature_c=number("temperature.gpu"),
                power_w=number("power.draw"),
            )
        )
    return readings


@dataclass(frozen=True)
class ComputeApp:
    """One process holding GPU memory, as `nvidia-smi --query-compute-apps` lists it."""

    pid: int
    gpu_uuid: str
    used_mib: float | None  # None where the GPU does not say (unified memory)
    process_name: str

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "gpu_uuid": self.gpu_uuid,
            "used_mib": self.used_mib,
            "process_name": self.process_name,
        }


def parse_compute_apps(text: str) -> list[ComputeApp]:
    """Parse COMPUTE_APPS_ARGV's output; no process at all is an empty output (the real
    tool prints nothing, not a header, with `noheader`)."""
    apps = []
    for line in text.splitlines():
        # The default table's "No running processes found" is not a row either.
        if not line.strip() or line.strip().lower().startswith("no running processes"):
            continue
        cells = [cell.strip() for cell in line.split(",", len(COMPUTE_APPS_FIELDS) - 1)]
        if len(cells) != len(COMPUTE_APPS_FIELDS) or not cells[0].isdigit():
            raise GpuOutputError(f"not a compute-apps row: {line!r}")
        apps.append(ComputeApp(int(cells[0]), cells[1], _number(cells[2]), cells[3]))
    return apps


def parse_meminfo(text: str) -> MemInfo:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])  # kB
    if "MemTotal" not in values:
        raise GpuOutputError("no MemTotal in /proc/meminfo")
    available_kb = values.get("MemAvailable", values.get("MemFree", 0))
    return MemInfo(total_mib=values["MemTotal"] // 1024, available_mib=available_kb // 1024)


class NvmlReader:
    """Reads this machine's GPUs through NVML. No driver means "no local GPU", not an error."""

    def __init__(self) -> None:
        self._ready: bool | None = None

    def _init(self) -> bool:
        if self._ready is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._ready = True
            except Exception as exc:  # NVMLError_LibraryNotFound and friends
                log.info("no local GPU through NVML: %s", exc)
                self._ready = False
        return self._ready

    def read(self) -> list[GpuReading]:
        if not self._init():
            return []
        import pynvml

        def optional(call, *args):
            try:
                return call(*args)
            except pynvml.NVMLError:
                return None

        readings = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            util = optional(pynvml.nvmlDeviceGetUtilizationRates, handle)
            memory = optional(pynvml.nvmlDeviceGetMemoryInfo, handle)
            power_mw = optional(pynvml.nvmlDeviceGetPowerUsage, handle)
            temperature = optional(
                pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU
            )
            readings.append(
                GpuReading(
                    index=index,
                    uuid=str(optional(pynvml.nvmlDeviceGetUUID, handle) or ""),
                    name=str(optional(pynvml.nvmlDeviceGetName, handle) or ""),
                    utilization_pct=float(util.gpu) if util is not None else None,
                    memory_used_mib=memory.used / 2**20 if memory is not None else None,
                    memory_total_mib=memory.total / 2**20 if memory is not None else None,
                    temperature_c=float(temperature) if temperature is not None else None,
                    power_w=power_mw / 1000 if power_mw is not None else None,
                )
            )
        return readings

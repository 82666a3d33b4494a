"""GPU readings: the `nvidia-smi` CSV parser for remote hosts and the NVML reader for this one.

Only this module speaks NVML. Readings are plain dataclasses; a field the GPU does not
report (`[N/A]`, `[Not Supported]`, empty) is None, never a made-up zero.
"""

import logging
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

_MISSING = {"", "[n/a]", "n/a", "[not supported]", "[unknown error]", "[insufficient permissions]"}


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


def _number(raw: str) -> float | None:
    value = raw.strip()
    if value.lower() in _MISSING:
        return None
    try:
        return float(value)
    except ValueError:
        raise GpuOutputError(f"not a number: {raw!r}") from None


def parse_nvidia_smi_csv(text: str) -> list[GpuReading]:
    """Parse `nvidia-smi --query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits`."""
    readings = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(QUERY_FIELDS):
            raise GpuOutputError(
                f"expected {len(QUERY_FIELDS)} columns, got {len(cells)}: {line!r}"
            )
        index, uuid, name, util, mem_used, mem_total, temperature, power = cells
        if not index.isdigit():
            raise GpuOutputError(f"bad GPU index: {index!r}")
        readings.append(
            GpuReading(
                index=int(index),
                uuid=uuid,
                name=name,
                utilization_pct=_number(util),
                memory_used_mib=_number(mem_used),
                memory_total_mib=_number(mem_total),
                temperature_c=_number(temperature),
                power_w=_number(power),
            )
        )
    return readings


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

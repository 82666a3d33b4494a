"""Real nvidia-smi outputs (tests/engine/fixtures/nvidia_smi, sources in its README):
the parser reads them, driver failures become the tool's own message, and the
simulator's broken driver answers the same way."""

from pathlib import Path

import pytest

from arbiter.engine.gpu import GpuOutputError, parse_nvidia_smi_csv
from arbiter.engine.sampler import SECTION_MARK, read_batch
from arbiter.simulator.gpus import GB10, H100_80GB, GpuBoard, HostMemory, nvidia_smi

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia_smi"
MEMINFO = "MemTotal:       128520716 kB\nMemAvailable:   101337820 kB\n"
# The field lists the captures were made with (see the README).
TITAN_X_FIELDS = (
    "index",
    "uuid",
    "name",
    "temperature.gpu",
    "utilization.gpu",
    "memory.used",
    "memory.total",
)
RTX_2080_FIELDS = (
    "power.limit",
    "power.min_limit",
    "power.max_limit",
    "memory.total",
    "vbios_version",
    "driver_version",
    "name",
    "gpu_uuid",
    "power.draw",
    "temperature.gpu",
    "temperature.memory",
    "clocks.current.graphics",
    "clocks.sm",
    "clocks.mem",
    "utilization.gpu",
    "utilization.memory",
    "fan.speed",
    "pcie.link.width.current",
    "pstate",
)
GB10_FIELDS = (
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "power.draw",
    "temperature.gpu",
)
FAULTS = {
    # simulator fault name: (fixture, the real exit status)
    "version_mismatch": ("version_mismatch.stdout", 18),
    "no_devices": ("no_devices.stdout", 6),
    "driver_not_loaded": ("driver_not_loaded.stdout", 9),
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_it_reads_eight_discrete_gpus():
    readings = parse_nvidia_smi_csv(fixture("titan_x_8gpu.csv"), TITAN_X_FIELDS)
    assert [r.index for r in readings] == list(range(8))
    first = readings[0]
    assert first.uuid == "GPU-004f693d-767b-b215-b4a9-a18af0ffd643"
    assert first.name == "GeForce GTX TITAN X"
    assert (first.temperature_c, first.utilization_pct) == (25.0, 0.0)
    assert (first.memory_used_mib, first.memory_total_mib) == (802.0, 12206.0)
    assert first.power_w is None  # not asked for in that capture: unknown, never zero
    assert not first.unified_memory


def test_it_reads_an_rtx_row_from_a_wider_query():
    (gpu,) = parse_nvidia_smi_csv(fixture("rtx_2080.csv"), RTX_2080_FIELDS)
    assert gpu.name == "GeForce RTX 2080"
    assert gpu.uuid == "GPU-22b2c6ac-2d49-4863-197c-9c469071178a"
    assert (gpu.utilization_pct, gpu.temperature_c, gpu.power_w) == (86.0, 45.0, 176.98)
    assert gpu.memory_total_mib == 7979.0 and gpu.memory_used_mib is None
    assert gpu.index == 0


def test_it_reads_a_gb10_as_unified_memory_with_its_power_draw():
    (gpu,) = parse_nvidia_smi_csv(fixture("gb10.csv"), GB10_FIELDS, header=True)
    assert gpu.unified_memory
    assert gpu.memory_used_mib is None and gpu.memory_total_mib is None
    assert (gpu.utilization_pct, gpu.power_w, gpu.temperature_c) == (0.0, 11.17, 35.0)


def test_it_refuses_a_header_for_other_fields():
    with pytest.raises(GpuOutputError, match="unexpected header"):
        parse_nvidia_smi_csv(fixture("gb10.csv"), TITAN_X_FIELDS, header=True)


@pytest.mark.parametrize("name", [f for f, _status in FAULTS.values()])
def test_it_never_reads_a_driver_message_as_readings(name):
    with pytest.raises(GpuOutputError):
        parse_nvidia_smi_csv(fixture(name))


@pytest.mark.parametrize("name", [f for f, _status in FAULTS.values()])
def test_it_gives_a_failed_nvidia_smis_own_message_and_no_readings(name):
    # The batch prints the OK mark only when nvidia-smi exited 0; here it did not.
    sample = read_batch(f"{fixture(name)}{SECTION_MARK}\n{MEMINFO}", stderr="")
    assert sample.readings == []
    assert sample.driver_error == fixture(name).strip()
    assert sample.meminfo.total_mib == 128520716 // 1024  # host memory still sampled


def test_it_takes_the_message_from_stderr_when_stdout_is_empty():
    sample = read_batch(f"{SECTION_MARK}\n{MEMINFO}", stderr="sh: 1: nvidia-smi: not found\n")
    assert sample.driver_error == "sh: 1: nvidia-smi: not found"


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("spec", [H100_80GB, GB10])
def test_it_makes_the_simulated_driver_fault_answer_like_the_real_tool(fault, spec):
    board = GpuBoard("sim-x", [spec], HostMemory(125_000_000))
    board.set_driver_fault(fault)
    out: list[str] = []
    err: list[str] = []
    argv = ["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader,nounits"]
    status = nvidia_smi(argv, board, out.append, err.append)
    name, real_status = FAULTS[fault]
    real = fixture(name).splitlines()
    simulated = "".join(out).splitlines()
    assert (status, "".join(err)) == (real_status, "")
    assert simulated[0] == real[0]
    if fault == "version_mismatch":  # the library version is the simulated driver's
        assert simulated[1].startswith("NVML library version: ") and len(simulated) == 2
    else:
        assert simulated == real


def test_it_brings_the_readings_back_once_the_simulated_driver_is_mended():
    board = GpuBoard("sim-x", [H100_80GB], HostMemory(125_000_000))
    board.set_driver_fault("no_devices")
    board.set_driver_fault("none")
    out: list[str] = []
    argv = ["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"]
    assert nvidia_smi(argv, board, out.append, out.append) == 0
    assert "".join(out) == "0, NVIDIA H100 80GB HBM3\n"
    with pytest.raises(ValueError, match="unknown driver fault"):
        board.set_driver_fault("melted")

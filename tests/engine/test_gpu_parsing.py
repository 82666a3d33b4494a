"""Parsing real `nvidia-smi` CSV lines and /proc/meminfo."""

import pytest

from arbiter.engine.gpu import (
    QUERY_FIELDS,
    ComputeApp,
    GpuOutputError,
    NvmlReader,
    parse_compute_apps,
    parse_meminfo,
    parse_nvidia_smi_csv,
)
from arbiter.engine.sampler import GPU_OK_MARK, SECTION_MARK, parse_batch

# Lines in the shape nvidia-smi prints for
# --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw
# --format=csv,noheader,nounits
RTX_LINES = (
    "0, GPU-5d8c2f1e-5a4b-4c3d-9e2f-1a2b3c4d5e6f, NVIDIA RTX 6000 Ada Generation, 37, 20012, "
    "49140, 61, 182.35\n"
    "1, GPU-0b9e8d7c-6b5a-4f3e-8d2c-1b0a9f8e7d6c, NVIDIA RTX 6000 Ada Generation, 0, 3, 49140, "
    "33, 21.07\n"
)
GB10_LINE = "0, GPU-a1b2c3d4-e5f6-7a8b-9c0d-e1f2a3b4c5d6, NVIDIA GB10, 4, [N/A], [N/A], 44, [N/A]\n"
MEMINFO = """MemTotal:       128520716 kB
MemFree:         9214312 kB
MemAvailable:   101337820 kB
Buffers:          123456 kB
Cached:         88123456 kB
SwapTotal:             0 kB
"""


def test_it_queries_the_fields_it_parses():
    assert QUERY_FIELDS == (
        "index",
        "uuid",
        "name",
        "utilization.gpu",
        "memory.used",
        "memory.total",
        "temperature.gpu",
        "power.draw",
    )


def test_it_parses_discrete_gpus():
    first, second = parse_nvidia_smi_csv(RTX_LINES)
    assert first.index == 0
    assert first.name == "NVIDIA RTX 6000 Ada Generation"
    assert first.utilization_pct == 37.0
    assert first.memory_used_mib == 20012.0
    assert first.memory_total_mib == 49140.0
    assert first.temperature_c == 61.0
    assert first.power_w == 182.35
    assert not first.unified_memory
    assert second.index == 1 and second.memory_used_mib == 3.0


def test_it_reads_gb10_not_available_fields_as_missing():
    (gpu,) = parse_nvidia_smi_csv(GB10_LINE)
    assert gpu.name == "NVIDIA GB10"
    assert gpu.memory_used_mib is None
    assert gpu.memory_total_mib is None
    assert gpu.power_w is None
    assert gpu.unified_memory
    assert gpu.utilization_pct == 4.0


@pytest.mark.parametrize("missing", ["[Not Supported]", "", "[N/A]", "N/A", "[Unknown Error]"])
def test_it_treats_unreported_values_as_missing(missing):
    line = f"0, GPU-x, Tesla T4, {missing}, 100, 15360, 40, 30.5"
    (gpu,) = parse_nvidia_smi_csv(line)
    assert gpu.utilization_pct is None


@pytest.mark.parametrize(
    "text",
    [
        "0, GPU-x, Tesla T4, 5, 100",  # too few columns
        "0, GPU-x, Tesla T4, lots, 100, 15360, 40, 30.5",  # not a number
        "x, GPU-x, Tesla T4, 5, 100, 15360, 40, 30.5",  # bad index
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
    ],
)
def test_it_refuses_output_it_cannot_read(text):
    with pytest.raises(GpuOutputError):
        parse_nvidia_smi_csv(text)


def test_it_parses_meminfo_in_mib():
    meminfo = parse_meminfo(MEMINFO)
    assert meminfo.total_mib == 128520716 // 1024
    assert meminfo.available_mib == 101337820 // 1024


def test_it_falls_back_to_memfree_on_old_kernels():
    meminfo = parse_meminfo("MemTotal: 2048 kB\nMemFree: 1024 kB\n")
    assert meminfo.available_mib == 1


def test_it_splits_the_batched_sample():
    readings, meminfo = parse_batch(f"{GB10_LINE}{GPU_OK_MARK}\n{SECTION_MARK}\n{MEMINFO}")
    assert readings[0].unified_memory
    assert meminfo.total_mib == 125508


def test_it_refuses_a_truncated_batch():
    with pytest.raises(GpuOutputError):
        parse_batch(GB10_LINE)


def test_it_reports_no_local_gpu_without_a_driver():
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert NvmlReader().read() == []  # no driver: "no local GPU", not an error
    else:
        assert NvmlReader().read(), "a machine with a driver reports its GPUs"


def test_it_reads_the_processes_holding_gpu_memory():
    # --query-compute-apps=pid,gpu_uuid,used_memory,process_name --format=csv,noheader,nounits
    # on a discrete GPU (MiB per process; a process name may hold a comma) and on a GB10,
    # which reports the share per process though not per GPU.
    discrete = (
        "48213, GPU-5d8c2f1e-5a4b-4c3d-9e2f-1a2b3c4d5e6f, 20480, /usr/bin/python3\n"
        "48391, GPU-5d8c2f1e-5a4b-4c3d-9e2f-1a2b3c4d5e6f, 512, VLLM::Worker, rank 0\n"
    )
    assert parse_compute_apps(discrete) == [
        ComputeApp(48213, "GPU-5d8c2f1e-5a4b-4c3d-9e2f-1a2b3c4d5e6f", 20480.0, "/usr/bin/python3"),
        ComputeApp(
            48391, "GPU-5d8c2f1e-5a4b-4c3d-9e2f-1a2b3c4d5e6f", 512.0, "VLLM::Worker, rank 0"
        ),
    ]
    gb10 = "3858903, GPU-a1b2c3d4-e5f6-7a8b-9c0d-e1f2a3b4c5d6, 6265, VLLM::EngineCore\n"
    assert parse_compute_apps(gb10)[0].used_mib == 6265.0
    # Where the driver cannot attribute it (WDDM, no permission): listed, share unknown.
    for missing in ("[N/A]", "[Not Supported]", "[Insufficient Permissions]"):
        row = f"7311, GPU-a1b2c3d4-e5f6-7a8b-9c0d-e1f2a3b4c5d6, {missing}, python3\n"
        assert parse_compute_apps(row) == [
            ComputeApp(7311, "GPU-a1b2c3d4-e5f6-7a8b-9c0d-e1f2a3b4c5d6", None, "python3")
        ]
    assert parse_compute_apps("") == []  # no process: nothing at all with noheader
    with pytest.raises(GpuOutputError):
        parse_compute_apps("not, a, row\n")

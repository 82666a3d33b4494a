"""A broken GPU driver on a reachable host: a driver problem in nvidia-smi's own words,
not a stale or offline host (simulated cluster over real SSH, real database)."""

import asyncio
from types import SimpleNamespace

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings
from django.utils import timezone

from arbiter.engine import ssh
from arbiter.engine.sampler import BATCH_ARGV, Sampler
from arbiter.engine.swaps.memory import MemoryNotFreed, MemoryWait
from arbiter.models import GpuSample, Host
from arbiter.simulator.gpus import DRIVER_VERSION

pytestmark = pytest.mark.django_db(transaction=True)

MISMATCH = (
    "Failed to initialize NVML: Driver/library version mismatch\n"
    f"NVML library version: {'.'.join(DRIVER_VERSION.split('.')[:2])}"
)


@sync_to_async
def _host(name):
    host = Host.objects.get(name=name)
    return host, GpuSample.objects.filter(host=host).count()


# A single miss would already read as stale: the driver fault must not count as one.
@override_settings(ARBITER_STALE_AFTER_MISSES=1, ARBITER_OFFLINE_AFTER_MISSES=2)
async def test_it_reports_a_driver_fault_as_a_driver_problem_and_brings_the_host_back_once_mended(
    sim_cluster, hosts
):
    host_id, target = hosts["sim-a"]
    sampler = Sampler(interval=0.5)
    assert await sampler.sample_once(host_id, "ssh", target)
    healthy, samples_before = await _host("sim-a")
    assert healthy.state == "live" and samples_before == 2

    sim_cluster.driver_fault("sim-a", "version_mismatch")
    for _tick in range(2):
        assert await sampler.sample_once(host_id, "ssh", target), "the host answered"
        host, samples = await _host("sim-a")
        assert host.state == "driver_error"
        assert host.driver_error == MISMATCH
        assert (host.missed_samples, host.last_error) == (0, "")
        assert host.last_sample_at > healthy.last_sample_at
        assert host.mem_total_mib and host.mem_available_mib  # /proc/meminfo still read
        assert samples == samples_before, "no GPU readings are invented"

    sim_cluster.driver_fault("sim-a", "none")
    assert await sampler.sample_once(host_id, "ssh", target)
    host, samples = await _host("sim-a")
    assert (host.state, host.driver_error) == ("live", "")
    assert samples == samples_before + 2


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("no_devices", "No devices were found"),
        (
            "driver_not_loaded",
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.",
        ),
    ],
)
async def test_it_shows_the_tools_own_message_for_each_fault(sim_cluster, hosts, fault, message):
    host_id, target = hosts["sim-gb10"]
    sim_cluster.driver_fault("sim-gb10", fault)
    assert await Sampler(interval=0.5).sample_once(host_id, "ssh", target)
    host, samples = await _host("sim-gb10")
    assert (host.state, host.driver_error, samples) == ("driver_error", message, 0)


async def test_it_shows_up_in_the_sampling_loop_within_two_ticks(sim_cluster, hosts):
    def batches():
        return sum(1 for c in sim_cluster.commands("sim-b") if c.argv == BATCH_ARGV)

    task = asyncio.create_task(Sampler(interval=0.4).run_forever())
    try:
        for _ in range(100):
            host, _samples = await _host("sim-b")
            if host.state == "live":
                break
            await asyncio.sleep(0.05)
        assert host.state == "live"
        sim_cluster.driver_fault("sim-b", "version_mismatch")
        ticks_before = batches()
        for _ in range(200):
            host, _samples = await _host("sim-b")
            if host.driver_error:
                break
            await asyncio.sleep(0.02)
        assert host.driver_error == MISMATCH
        assert batches() - ticks_before <= 2
        assert (host.state, host.missed_samples) == ("driver_error", 0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_it_leaves_ssh_docker_and_meminfo_working(sim_cluster, hosts):
    _host_id, target = hosts["sim-a"]
    sim_cluster.driver_fault("sim-a", "version_mismatch")
    smi = await ssh.run(target, ["nvidia-smi", "-L"], timeout=10, check=False)
    # The real tool: its message on stdout, nothing on stderr, NVML's return code 18.
    assert (smi.exit_status, smi.stdout.strip(), smi.stderr) == (18, MISMATCH, "")
    assert (await ssh.run(target, ["docker", "ps"], timeout=10)).exit_status == 0
    meminfo = await ssh.run(target, ["cat", "/proc/meminfo"], timeout=10)
    assert meminfo.stdout.startswith("MemTotal:")


async def test_it_names_the_driver_problem_in_the_swap_memory_wait(sim_cluster, hosts):
    _host_id, target = hosts["sim-a"]
    sim_cluster.driver_fault("sim-a", "version_mismatch")
    # MemoryWait reads only these fields of a LaunchPlan.
    plan = SimpleNamespace(target=target, host_name="sim-a", gpus=None, gpu_memory_utilization=0.9)

    async def say(_line):
        return None

    with pytest.raises(MemoryNotFreed) as failure:
        await MemoryWait(plan, timeout=1.0, say=say).read()
    assert str(failure.value) == (
        f"cannot read GPU memory on sim-a: GPU driver problem: {MISMATCH}"
    )


def test_it_sets_and_clears_a_driver_fault_through_the_control_api(sim_cluster):
    with httpx.Client(base_url=sim_cluster.control_url, timeout=10) as client:
        answer = client.post("/hosts/sim-a/driver", json={"fault": "no_devices"})
        assert (answer.status_code, answer.json()) == (200, {"driver_fault": "no_devices"})
        assert client.get("/hosts/sim-a").json()["driver_fault"] == "no_devices"
        refused = client.post("/hosts/sim-a/driver", json={"fault": "melted"})
        assert refused.status_code == 400 and "driver_not_loaded" in refused.json()["error"]
        refused = client.post("/hosts/sim-a/driver", json={"fault": "none", "extra": 1})
        assert refused.status_code == 400 and "extra" in refused.json()["error"]
        assert client.get("/hosts/sim-a").json()["driver_fault"] == "no_devices"
        assert client.post("/hosts/sim-a/driver", json={"fault": "none"}).status_code == 200
        assert client.get("/hosts/sim-a").json()["driver_fault"] == "none"


def test_it_carries_the_driver_problem_in_api_status(key_client):
    now = timezone.now()
    broken = Host.objects.create(
        name="spark-1",
        address="10.0.0.1",
        last_sample_at=now,
        mem_total_mib=122_000,
        mem_available_mib=100_000,
        driver_error="No devices were found",
    )
    healthy = Host.objects.create(name="rtx-1", address="10.0.0.2", last_sample_at=now)
    for host in (broken, healthy):  # the broken one's GPUs are from before the fault
        GpuSample.objects.create(host=host, taken_at=now, index=0, name="GPU", uuid="GPU-0")
    response = key_client.get("/api/status")
    assert response.status_code == 200
    by_name = {h["name"]: h for h in response.json()["hosts"]}
    assert by_name["spark-1"]["state"] == "driver_error"
    assert by_name["spark-1"]["driver_error"] == "No devices were found"
    assert by_name["spark-1"]["gpus"] == []
    assert by_name["spark-1"]["mem_available_mib"] == 100_000
    assert (by_name["rtx-1"]["state"], by_name["rtx-1"]["driver_error"]) == ("live", "")
    assert len(by_name["rtx-1"]["gpus"]) == 1

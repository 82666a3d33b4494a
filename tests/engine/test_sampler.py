"""GPU sampling over SSH against the simulated cluster, into the real database."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from arbiter.engine.sampler import BATCH_ARGV, Sampler
from arbiter.models import GpuSample, Host

pytestmark = pytest.mark.django_db(transaction=True)


async def _sample(name, hosts, sampler=None):
    host_id, target = hosts[name]
    return await (sampler or Sampler(interval=0.5)).sample_once(host_id, "ssh", target)


@sync_to_async
def _latest(name):
    host = Host.objects.get(name=name)
    return host, list(GpuSample.objects.filter(host=host).order_by("-taken_at", "index"))


async def test_it_stores_the_readings_the_host_reports(sim_cluster, hosts):
    sim_cluster.set_gpu("sim-a", 1, utilization=77, temperature=68, power=250)
    assert await _sample("sim-a", hosts)
    host, samples = await _latest("sim-a")
    by_index = {s.index: s for s in samples}
    assert set(by_index) == {0, 1}
    assert by_index[1].utilization_pct == 77.0
    assert by_index[1].temperature_c == 68.0
    assert by_index[1].power_w == 250.0
    assert by_index[1].memory_total_mib == 49140.0
    assert host.state == "live" and host.missed_samples == 0
    assert host.mem_total_mib > 0


async def test_it_sends_one_batched_command_per_tick(sim_cluster, hosts):
    before = len(sim_cluster.commands("sim-b"))
    await _sample("sim-b", hosts)
    commands = sim_cluster.commands("sim-b")[before:]
    assert len(commands) == 1
    assert commands[0].argv == BATCH_ARGV


async def test_it_shows_unified_memory_from_meminfo(sim_cluster, hosts):
    await _sample("sim-gb10", hosts)
    host, (gpu,) = await _latest("sim-gb10")
    assert gpu.unified_memory
    assert gpu.memory_total_mib == host.mem_total_mib
    assert gpu.memory_used_mib == host.mem_total_mib - host.mem_available_mib
    assert gpu.power_w is not None  # a GB10 reports its draw (only the limit is [N/A])


@override_settings(ARBITER_STALE_AFTER_MISSES=2, ARBITER_OFFLINE_AFTER_MISSES=4)
async def test_it_marks_a_silent_host_stale_then_offline_then_live(sim_cluster, hosts):
    sampler = Sampler(interval=0.5)
    await _sample("sim-a", hosts, sampler)
    sim_cluster.go_down("sim-a")
    states = []
    for _ in range(4):
        assert not await _sample("sim-a", hosts, sampler)
        host, samples = await _latest("sim-a")
        states.append(host.state)
    assert states == ["live", "stale", "stale", "offline"]
    assert "cannot connect" in host.last_error or "connection lost" in host.last_error
    assert samples, "the last good values are kept, visibly aged"

    sim_cluster.come_up("sim-a")
    assert await _sample("sim-a", hosts, sampler)
    host, _ = await _latest("sim-a")
    assert host.state == "live" and host.last_error == ""


async def test_it_runs_one_loop_per_host(sim_cluster, hosts):
    sampler = Sampler(interval=0.3)
    task = asyncio.create_task(sampler.run_forever())
    try:
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for name in ("sim-a", "sim-b", "sim-gb10"):
        _host, samples = await _latest(name)
        assert len({s.taken_at for s in samples}) >= 2, name

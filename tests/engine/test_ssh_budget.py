"""The SSH session budget: at most `max_ssh_sessions` channels per host connection, and a
channel the server refuses (OpenSSH's MaxSessions) waits and retries on the same
connection instead of tearing it down."""

import asyncio

import pytest

from arbiter.engine.ssh import SshPool, SshTarget
from arbiter.errors import CommandTimeout
from tests.sim_fixtures import target_for


async def eleven_sleeps(pool: SshPool, target: SshTarget) -> list[int]:
    runs = [pool.run(target, ["sleep", "0.3"], timeout=20) for _ in range(11)]
    return [result.exit_status for result in await asyncio.gather(*runs)]


async def test_it_succeeds_with_all_eleven_channels_against_ten_sessions_on_one_connection(
    sim, pool
):
    target = target_for(sim, "sim-a")  # the inventory default: 8
    assert target.max_ssh_sessions == 8
    host = sim.hosts["sim-a"]
    assert host.sshd.max_sessions == 10  # OpenSSH's default MaxSessions
    await pool.run(target, ["true"], timeout=5)
    conn = pool._connections["sim-a"][1]

    assert await eleven_sleeps(pool, target) == [0] * 11

    assert pool._connections["sim-a"][1] is conn and not conn.is_closed()
    assert host.session_stats == {"peak": 8, "refused": 0}  # the budget held
    assert pool.refused_channels == 0


async def test_it_retries_refused_channels_of_a_budget_above_maxsessions_without_reconnecting(
    sim, pool
):
    # Misconfigured on purpose: Arbiter may open 12, the host's sshd allows 10. The
    # 11th channel is refused like OpenSSH refuses it, waits, and gets the next free one.
    target = target_for(sim, "sim-a", max_ssh_sessions=12)
    host = sim.hosts["sim-a"]
    await pool.run(target, ["true"], timeout=5)
    conn = pool._connections["sim-a"][1]

    assert await eleven_sleeps(pool, target) == [0] * 11

    assert pool._connections["sim-a"][1] is conn and not conn.is_closed()
    assert host.session_stats["peak"] == 10
    assert host.session_stats["refused"] >= 1
    assert pool.refused_channels == host.session_stats["refused"]
    assert len(host._connections) == 1  # never a second connection


async def test_it_holds_a_streams_slot_until_the_stream_ends(sim, pool):
    target = target_for(sim, "sim-a", max_ssh_sessions=2)
    host = sim.hosts["sim-a"]

    async def follow() -> list[str]:
        return [line async for line in pool.stream(target, ["sleep", "0.3"], timeout=10)]

    assert await asyncio.gather(*(follow() for _ in range(5))) == [[]] * 5
    assert host.session_stats == {"peak": 2, "refused": 0}


async def test_it_times_out_cleanly_on_a_host_that_never_frees_a_session(sim, pool):
    target = target_for(sim, "sim-a")
    sim.hosts["sim-a"].set_sshd(max_sessions=0)  # refuses every session
    with pytest.raises(CommandTimeout):
        await pool.run(target, ["true"], timeout=1.0)
    sim.hosts["sim-a"].set_sshd(max_sessions=10)
    assert (await pool.run(target, ["true"], timeout=5)).exit_status == 0


async def test_it_counts_with_a_probe_what_one_fresh_connection_accepts(sim, pool):
    target = target_for(sim, "sim-b")
    assert await pool.probe_sessions(target, 9) == (9, "")
    sim.hosts["sim-b"].set_sshd(max_sessions=4)
    assert await pool.probe_sessions(target, 9) == (4, "open failed")
    assert pool._connections == {}  # the probe's connection was its own, and is gone

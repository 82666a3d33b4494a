"""Fixtures for the simulator's own tests: an in-loop cluster and SSH connections to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncssh
import pytest

from arbiter.simulator.cluster import SimulatedCluster
from tests.sim_fixtures import *  # noqa: F403 (sim_cluster, sim_cluster_config)
from tests.simulator.client import connect

STARTUP_DELAY = 0.4

Connector = Callable[[str], Awaitable[asyncssh.SSHClientConnection]]


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimulatedCluster]:
    """The default three hosts on the test's own event loop; containers killed at the end."""
    cluster = SimulatedCluster(tmp_path / "sim", startup_delay=STARTUP_DELAY, control=False)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop(kill_containers=True)


@pytest.fixture
async def ssh(sim: SimulatedCluster) -> AsyncIterator[Connector]:
    """`await ssh("sim-a")`: a connection to a host, closed at teardown."""
    opened: list[asyncssh.SSHClientConnection] = []

    async def open_connection(host: str) -> asyncssh.SSHClientConnection:
        conn = await connect(sim, host)
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        conn.close()

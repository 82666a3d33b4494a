"""Fixtures for the simulator's own tests: an in-loop cluster and SSH connections to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncssh
import pytest

from arbiter.simulator.cluster import SimulatedCluster
from tests.sim_fixtures import *  # noqa: F403 (sim, sim_cluster, sim_cluster_config)
from tests.sim_fixtures import SIM_LOOP_STARTUP_DELAY
from tests.simulator.client import connect

STARTUP_DELAY = SIM_LOOP_STARTUP_DELAY  # what `sim` starts its hosts with

Connector = Callable[[str], Awaitable[asyncssh.SSHClientConnection]]


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

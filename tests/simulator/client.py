"""A real SSH client for the simulator's tests, configured the way Arbiter connects."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable

import asyncssh

from arbiter.simulator.cluster import SimulatedCluster


async def connect(
    cluster: SimulatedCluster, host: str, **overrides: object
) -> asyncssh.SSHClientConnection:
    """The cluster's client key and known_hosts, and nothing from ~/.ssh or an agent."""
    options: dict[str, object] = {
        "username": "arbiter",
        "known_hosts": str(cluster.known_hosts_path),
        "client_keys": [str(cluster.client_key_path)],
        "config": None,
        "agent_path": None,
    }
    options.update(overrides)
    return await asyncssh.connect("127.0.0.1", cluster.hosts[host].port, **options)


async def run(
    conn: asyncssh.SSHClientConnection, argv: list[str], **kwargs: object
) -> asyncssh.SSHCompletedProcess:
    """Run an argv the way Arbiter does: joined with shell quoting."""
    return await conn.run(shlex.join(argv), check=False, **kwargs)


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)

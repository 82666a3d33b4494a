"""Pytest fixtures for the simulated cluster (registered from tests/conftest.py).

`sim_cluster` is a `ClusterThread`: the cluster runs on its own event loop in a
daemon thread, so sync tests, async tests and Django's live server can all use it.
`sim` is a `SimulatedCluster` on the test's own event loop (no control API), for tests of
the SSH seam and the simulator itself. Every container they started is killed at teardown.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from arbiter.engine.ssh import SshTarget
from arbiter.inventory import load_inventory
from arbiter.simulator.cluster import ClusterThread, SimulatedCluster
from tests.helpers import free_port

SIM_STARTUP_DELAY = 0.3
SIM_LOOP_STARTUP_DELAY = 0.4


def target_for(cluster: Any, name: str, **changes: Any) -> SshTarget:
    """The SSH target of one simulated host, exactly as Arbiter builds it from the
    cluster's inventory file (`cluster`: a ClusterThread or a SimulatedCluster)."""
    host = next(h for h in load_inventory(cluster.config_path).hosts if h.name == name)
    target = SshTarget(
        name=host.name,
        address=host.address,
        port=host.ssh_port,
        user=host.ssh_user,
        key_path=host.ssh_key or "",
        known_hosts_file=host.known_hosts or "",
        connect_timeout=2.0,
        max_ssh_sessions=host.max_ssh_sessions,
    )
    return dataclasses.replace(target, **changes)


@pytest.fixture
def sim_cluster(tmp_path: Path) -> Iterator[ClusterThread]:
    """A running simulated cluster (sim-a, sim-b, sim-gb10) under tmp_path/sim."""
    cluster = ClusterThread(tmp_path / "sim", startup_delay=SIM_STARTUP_DELAY).start()
    try:
        yield cluster
    finally:
        cluster.stop(kill_containers=True)


@pytest.fixture
def sim_cluster_config(sim_cluster: ClusterThread) -> Path:
    """The cluster.yaml of `sim_cluster`, ready for the inventory loader."""
    return sim_cluster.config_path


@pytest.fixture
def sim_inventory(tmp_path: Path) -> Path:
    """A cluster.yaml for `sim_cluster`'s hosts and services, written by the simulator's own
    writer, with no host started: for tests of what is refused before anything reaches a
    host. Nothing listens on its SSH or service ports, so a test that does reach a host
    fails there."""
    cluster = SimulatedCluster(tmp_path / "sim")
    cluster.data_dir.mkdir(parents=True, exist_ok=True)
    for path in (cluster.client_key_path, cluster.known_hosts_path):
        path.touch()  # the loader checks that they exist; nothing reads them
    # write_config reads only each host's SSH port.
    ports = {spec.name: types.SimpleNamespace(port=free_port()) for spec in cluster.specs}
    cluster.hosts = ports  # type: ignore[assignment]
    cluster.service_ports = {
        service.name: free_port() for spec in cluster.specs for service in spec.service_specs()
    }
    cluster.write_config()
    return cluster.config_path


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimulatedCluster]:
    """The default three hosts on the test's own event loop; containers killed at the end."""
    cluster = SimulatedCluster(
        tmp_path / "sim", startup_delay=SIM_LOOP_STARTUP_DELAY, control=False
    )
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop(kill_containers=True)

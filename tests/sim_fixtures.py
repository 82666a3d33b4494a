"""Pytest fixtures for the simulated cluster (registered from tests/conftest.py).

`sim_cluster` is a `ClusterThread`: the cluster runs on its own event loop in a
daemon thread, so sync tests, async tests and Django's live server can all use it.
Every container it started is killed at teardown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from arbiter.engine.ssh import SshTarget
from arbiter.inventory import load_inventory
from arbiter.simulator.cluster import ClusterThread

SIM_STARTUP_DELAY = 0.3


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

"""Pytest fixtures for the simulated cluster (registered from tests/conftest.py).

`sim_cluster` is a `ClusterThread`: the cluster runs on its own event loop in a
daemon thread, so sync tests, async tests and Django's live server can all use it.
Every container it started is killed at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from arbiter.simulator.cluster import ClusterThread

SIM_STARTUP_DELAY = 0.3


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

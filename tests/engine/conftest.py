"""Engine fixtures: a simulated cluster on the test's own loop, an SSH pool, the hosts.

- `sim` (tests.sim_fixtures) is a `SimulatedCluster` running on the test's event loop
  (no control API), for tests of the SSH seam itself; `target_for(sim, name)` builds the
  target exactly as Arbiter does from its inventory file.
- `pool` is a fresh `SshPool`, closed at the end.
- `hosts` loads `sim_cluster`'s inventory into the database: {name: (host id, target)}.
"""

from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async

from arbiter.engine.ssh import SshPool, SshTarget, get_pool
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Host


@pytest.fixture
async def pool() -> AsyncIterator[SshPool]:
    pool = SshPool()
    yield pool
    await pool.close()


@pytest.fixture
async def hosts(sim_cluster):
    """{name: (host id, target)} for the simulator's hosts, loaded through the inventory."""
    await sync_to_async(apply_inventory)(load_inventory(sim_cluster.config_path))

    @sync_to_async
    def read() -> dict[str, tuple[int, SshTarget]]:
        return {h.name: (h.pk, SshTarget.from_host(h)) for h in Host.objects.all()}

    yield await read()
    await get_pool().close()

"""The "Spark Control pair": one model a launcher script runs across two Sparks, taken
over by Arbiter's own two-host launch once both hosts' services adopt `vllm_node`."""

import pytest
from asgiref.sync import sync_to_async

from arbiter.inventory import apply_inventory, load_inventory
from arbiter.simulator.cluster import ClusterThread
from arbiter.simulator.scenarios import SPARK_CONTAINER
from tests.swaps.conftest import make_model
from tests.swaps.test_ownership import served_ids, service_port, swap_and_wait

pytestmark = pytest.mark.django_db(transaction=True)

HEAD, WORKER = "spark-1", "spark-2"


@pytest.fixture
def cluster(tmp_path, swap_settings, transactional_db):
    """Overrides the swaps' default cluster: the spark-control-pair scenario."""
    sim = ClusterThread(tmp_path / "sim", startup_delay=0.3, scenario="spark-control-pair").start()
    try:
        apply_inventory(load_inventory(sim.config_path))
        make_model(
            "smol-pair",
            hub_repo="HuggingFaceTB/SmolLM2-1.7B-Instruct",
            served_name="smol-pair",
            tensor_parallel_size=2,
            tensor_parallel_hosts=[HEAD, WORKER],
            image="nvcr.io/nvidia/vllm:25.09-py3",
            command=["vllm", "serve"],
            extra_container_args=["--device=/dev/infiniband", "--ulimit=memlock=-1"],
            gpu_memory_utilization=0.4,
        )
        yield sim
    finally:
        sim.stop(kill_containers=True)


async def test_it_replaces_the_script_started_pair_with_arbiters_two_host_launch(
    cluster, dispatcher, aclient, admin_aclient
):
    port = await service_port(f"{HEAD}-vllm")
    assert await served_ids(port) == ["Qwen/Qwen3-0.6B"]  # the script's pair serves
    # Not adopted yet: both hosts' vllm_node are someone else's, and nothing is stopped.
    refused = await swap_and_wait(aclient, "smol-pair", host=HEAD)
    assert refused.state == "failed"
    assert "vllm_node" in refused.error and "adopt_containers" in refused.error
    assert cluster.container(HEAD, SPARK_CONTAINER).running
    assert cluster.container(WORKER, SPARK_CONTAINER).running

    for host in (HEAD, WORKER):
        edited = await admin_aclient.patch(
            f"/api/services/{host}-vllm",
            {"adopt_containers": [SPARK_CONTAINER]},
            "application/json",
        )
        assert edited.status_code == 200, edited.content
    taken = await swap_and_wait(aclient, "smol-pair", host=WORKER)
    assert taken.state == "complete", taken.error
    assert cluster.container(HEAD, SPARK_CONTAINER) is None
    assert cluster.container(WORKER, SPARK_CONTAINER) is None
    for host in (HEAD, WORKER):
        mine = cluster.container(host, "arbiter-vllm")
        assert mine is not None and mine.running
        assert mine.labels.get("arbiter.managed") == "true"
    assert await served_ids(port) == ["smol-pair"]
    assert await sync_to_async(lambda: taken.host.name)() == HEAD

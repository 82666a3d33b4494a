"""The "Spark Control pair" scenario: Arbiter takes over two Sparks a script set up.

Each GB10 host runs `vllm_node` (NVIDIA's NGC vLLM image, `--network host`, on the port
the inventory's service points at), started by a script, not by Arbiter. A swap is
refused until the inventory adopts the container; then it is stopped and replaced.
spark-1 is adopted through the API, spark-2 through the cluster file.
"""

import pytest
import yaml
from asgiref.sync import sync_to_async

from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Service
from arbiter.simulator.cluster import ClusterThread
from arbiter.simulator.scenarios import SPARK_CONTAINER, SPARK_IMAGE
from tests.swaps.conftest import make_model
from tests.swaps.test_ownership import served_ids, service_port, swap_and_wait

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cluster(tmp_path, swap_settings, transactional_db):
    """Overrides the swaps' default cluster: the spark-pair scenario, in the database."""
    sim = ClusterThread(tmp_path / "sim", startup_delay=0.3, scenario="spark-pair").start()
    try:
        apply_inventory(load_inventory(sim.config_path))
        make_model("smollm2", hub_repo="HuggingFaceTB/SmolLM2-1.7B-Instruct", served_name="smol")
        yield sim
    finally:
        sim.stop(kill_containers=True)


def adopt_in_file(sim: ClusterThread, service: str) -> None:
    """What an operator does: add `adopt_containers: [vllm_node]` and reload the file."""
    document = yaml.safe_load(sim.config_path.read_text())
    for entry in document["services"]:
        if entry["name"] == service:
            entry["adopt_containers"] = [SPARK_CONTAINER]
    sim.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    apply_inventory(load_inventory(sim.config_path))


async def test_it_takes_over_the_spark_pair_once_vllm_node_is_adopted(
    cluster, dispatcher, aclient, admin_aclient
):
    ports = {name: await service_port(f"{name}-vllm") for name in ("spark-1", "spark-2")}
    for port in ports.values():
        assert await served_ids(port) == ["Qwen/Qwen3-0.6B"]  # the script's model

    refused = await swap_and_wait(aclient, "smollm2", host="spark-1")
    assert refused.state == "failed"
    assert refused.error.startswith(
        f"pre-flight failed: slot: container vllm_node (image {SPARK_IMAGE}, running) runs "
        f"with host networking while port {ports['spark-1']} answers on spark-1"
    )
    assert "add `adopt_containers: [vllm_node]` to service spark-1-vllm" in refused.error
    assert cluster.container("spark-1", SPARK_CONTAINER).running

    edited = await admin_aclient.patch(
        "/api/services/spark-1-vllm", {"adopt_containers": [SPARK_CONTAINER]}, "application/json"
    )
    assert edited.status_code == 200, edited.content
    taken = await swap_and_wait(aclient, "smollm2", host="spark-1")
    assert taken.state == "complete", taken.error
    assert cluster.container("spark-1", SPARK_CONTAINER) is None
    assert await served_ids(ports["spark-1"]) == ["smol"]
    # The other Spark was not touched: its script's container still serves.
    assert cluster.container("spark-2", SPARK_CONTAINER).running
    assert await served_ids(ports["spark-2"]) == ["Qwen/Qwen3-0.6B"]

    await sync_to_async(adopt_in_file)(cluster, "spark-2-vllm")
    adopted = await sync_to_async(lambda: Service.objects.get(name="spark-2-vllm"))()
    assert adopted.adopt_containers == [SPARK_CONTAINER] and adopted.inventory_overrides == {}
    second = await swap_and_wait(aclient, "smollm2", host="spark-2")
    assert second.state == "complete", second.error
    assert cluster.container("spark-2", SPARK_CONTAINER) is None
    assert await served_ids(ports["spark-2"]) == ["smol"]

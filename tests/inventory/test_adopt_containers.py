"""`adopt_containers` on a service: in the cluster file and through PATCH /api/services/{name}.

A container lives on one host, so only one service there may adopt it (the same name on
two hosts is two containers: a Spark pair's two `vllm_node`s). Names follow docker's rule.
Bad input is a 422 naming `adopt_containers` (or a problem with its key path), and
nothing is written.
"""

from dataclasses import replace

import pytest

from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Service
from catalog.models import CatalogModel
from tests.inventory.conftest import patch, problems_of
from tests.inventory.test_apply_inventory import CHAT, CLUSTER, TTS

FILE = """\
hosts:
  - name: spark-1
    address: 192.168.1.21
  - name: spark-2
    address: 192.168.1.22
services:
  - name: vllm-spark-1
    host: spark-1
    base_url: http://192.168.1.21:8888
    capabilities: [llm]
    adopt_containers: {first}
  - name: vllm-spark-2
    host: spark-2
    base_url: http://192.168.1.22:8888
    capabilities: [llm]
    adopt_containers: [vllm_node]
  - name: tts
    host: spark-1
    kind: http
    base_url: http://192.168.1.21:8880
    capabilities: [tts]
    adopt_containers: {tts}
"""


@pytest.fixture
def write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def write_file(first: str = "[vllm_node]", tts: str = "[]") -> str:
        (tmp_path / "cluster.yaml").write_text(FILE.format(first=first, tts=tts))
        return "cluster.yaml"

    return write_file


def test_it_adopts_the_same_name_on_two_hosts_from_the_file(write, db):
    inventory = load_inventory(write())
    adopted = {s.name: s.adopt_containers for s in inventory.services}
    assert adopted == {
        "vllm-spark-1": ("vllm_node",),
        "vllm-spark-2": ("vllm_node",),
        "tts": (),
    }
    apply_inventory(inventory)
    assert Service.objects.get(name="vllm-spark-1").adopt_containers == ["vllm_node"]
    assert Service.objects.get(name="tts").adopt_containers == []


@pytest.mark.parametrize(
    ("first", "tts", "problem"),
    [
        (
            "[vllm_node]",
            "[kokoro, vllm_node]",
            'cluster.yaml: services[2].adopt_containers[1]: container "vllm_node" on host '
            '"spark-1" is already adopted by services[0]',
        ),
        (
            '["bad name!"]',
            "[]",
            "cluster.yaml: services[0].adopt_containers[0]: must be a container name: "
            "[a-zA-Z0-9][a-zA-Z0-9_.-]+ (docker's rule), at most 128 characters, "
            'got "bad name!"',
        ),
        (
            "[-x]",
            "[]",
            "cluster.yaml: services[0].adopt_containers[0]: must be a container name: "
            '[a-zA-Z0-9][a-zA-Z0-9_.-]+ (docker\'s rule), at most 128 characters, got "-x"',
        ),
        (
            "[ab, ab]",
            "[]",
            'cluster.yaml: services[0].adopt_containers[1]: duplicate "ab"',
        ),
        (
            "vllm_node",
            "[]",
            "cluster.yaml: services[0].adopt_containers: must be a list of container names, "
            'got "vllm_node"',
        ),
    ],
)
def test_it_names_each_bad_adoption_in_the_file_by_its_key_path(write, first, tts, problem):
    assert problems_of(write(first, tts)) == [problem]


# -- PATCH /api/services/{name} ---------------------------------------------------------
@pytest.fixture
def cluster(db):
    # spark-1 has chat (vLLM) and, here, tts too: two services on one host.
    apply_inventory(replace(CLUSTER, services=[CHAT, replace(TTS, host="spark-1")]))


def test_it_stores_an_adoption_as_an_arbiter_edit_and_survives_a_reload(cluster, key_client):
    response = patch(key_client, "/api/services/chat", {"adopt_containers": ["vllm_node"]})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["adopt_containers"] == ["vllm_node"]
    assert body["edited"] == {"adopt_containers": []}  # the file's value
    apply_inventory(replace(CLUSTER, services=[CHAT, replace(TTS, host="spark-1")]))
    assert Service.objects.get(name="chat").adopt_containers == ["vllm_node"]
    reset = key_client.delete("/api/services/chat/edits")
    assert reset.status_code == 200 and reset.json()["adopt_containers"] == []


@pytest.mark.parametrize(
    ("service", "body", "message"),
    [
        (
            "tts",
            {"adopt_containers": ["vllm_node"]},
            'adopt_containers[0]: container "vllm_node" on host spark-1 is already adopted '
            "by service chat",
        ),
        (
            "tts",
            {"adopt_containers": ["kokoro", "arbiter-vllm"]},
            'adopt_containers[1]: "arbiter-vllm" is the container catalog models run in, '
            "started by swaps for the vLLM service of spark-1, not for http service tts",
        ),
        (
            "chat",
            {"adopt_containers": ["ok", "no way"]},
            "adopt_containers[1]: must be a container name: [a-zA-Z0-9][a-zA-Z0-9_.-]+ "
            '(docker\'s rule), at most 128 characters, got "no way"',
        ),
        (
            "chat",
            {"adopt_containers": ["a1", "a1"]},
            'adopt_containers[1]: duplicate "a1"',
        ),
        (
            "chat",
            {"adopt_containers": "vllm_node"},
            'adopt_containers: must be a list of container names, got "vllm_node"',
        ),
        ("chat", {"adopt_containers": [7]}, "adopt_containers[0]: must be a container name"),
    ],
)
def test_it_refuses_a_bad_adoption_with_a_422_naming_the_field_and_writes_nothing(
    cluster, key_client, service, body, message
):
    CatalogModel.objects.create(key="qwen", hub_repo="Qwen/Qwen3-0.6B", served_name="qwen")
    Service.objects.filter(name="chat").update(adopt_containers=["vllm_node"])
    before = {s.name: (s.adopt_containers, s.inventory_overrides) for s in Service.objects.all()}
    response = patch(key_client, f"/api/services/{service}", {**body, "disabled": True})
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["field"] == "adopt_containers"
    assert error["message"].startswith(message)
    after = {s.name: (s.adopt_containers, s.inventory_overrides) for s in Service.objects.all()}
    assert after == before
    assert not Service.objects.filter(disabled=True).exists()


def test_it_lets_the_vllm_service_adopt_an_unlabelled_container_with_arbiters_name(
    cluster, key_client
):
    """An older Arbiter left `arbiter-vllm` without labels: its own service may take it."""
    CatalogModel.objects.create(key="qwen", hub_repo="Qwen/Qwen3-0.6B", served_name="qwen")
    response = patch(key_client, "/api/services/chat", {"adopt_containers": ["arbiter-vllm"]})
    assert response.status_code == 200, response.content

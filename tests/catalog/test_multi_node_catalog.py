"""A catalog model spanning hosts: `tensor_parallel_hosts`, `multi_node`, and the container
args and engine flags such a model may (and may not) carry. Every rule holds alike for
POST, PUT, the seed file and the dashboard form: 422 naming the field, nothing written."""

import pytest
from django.forms.models import model_to_dict
from django.test import Client

from arbiter.engine.served_auth import model_api_key
from arbiter.models import Host
from catalog.loader import CatalogError, seed_catalog
from catalog.models import CatalogModel
from tests.catalog.conftest import hub_model, post, put
from tests.catalog.test_catalog_page import HUB_FORM

pytestmark = pytest.mark.django_db

PAIR = {
    "key": "pair",
    "hub_repo": "meta-llama/Llama-3.3-70B-Instruct",
    "tensor_parallel_size": 2,
    "tensor_parallel_hosts": ["spark-1", "spark-2"],
}


@pytest.fixture(autouse=True)
def hosts(db):
    """Two Sparks on their QSFP link, and a workstation that is on no interconnect."""
    Host.objects.create(name="spark-1", address="192.168.1.21", cluster_address="10.0.0.1")
    Host.objects.create(name="spark-2", address="192.168.1.22", cluster_address="10.0.0.2")
    Host.objects.create(name="workstation", address="192.168.1.30")


def test_it_creates_a_model_on_two_hosts(key_client):
    response = post(key_client, {**PAIR, "multi_node": "ray"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["tensor_parallel_hosts"], body["multi_node"]) == (["spark-1", "spark-2"], "ray")
    model = CatalogModel.objects.get(key="pair")
    assert (model.tensor_parallel_hosts, model.multi_node) == (["spark-1", "spark-2"], "ray")
    assert key_client.get("/api/models/pair").json()["multi_node"] == "ray"


def test_it_defaults_multi_node_to_vllms_native_mode(key_client):
    assert post(key_client, PAIR).json()["multi_node"] == "native"
    assert CatalogModel.objects.get(key="pair").multi_node == "native"


def test_it_accepts_any_multiple_of_the_host_count_as_tensor_parallel_size(key_client):
    response = post(key_client, {**PAIR, "tensor_parallel_size": 4})
    assert response.status_code == 201, response.content


# (changes to PAIR, field, words the message must hold)
BAD_PAIRS = [
    (
        {"tensor_parallel_hosts": ["spark-1", "spark-1"]},
        "tensor_parallel_hosts",
        ["item 1", "'spark-1'", "already item 0"],
    ),
    (
        {"tensor_parallel_hosts": ["spark-1", "spark-2", "spark-1"], "tensor_parallel_size": 3},
        "tensor_parallel_hosts",
        ["item 2", "already item 0"],
    ),
    ({"tensor_parallel_hosts": ["spark-1"]}, "tensor_parallel_hosts", ["at least 2 hosts"]),
    (
        {"tensor_parallel_hosts": ["spark-1", "spark-9"]},
        "tensor_parallel_hosts",
        ["item 1", "unknown host 'spark-9'"],
    ),
    (
        {"tensor_parallel_hosts": ["spark-1", "workstation"]},
        "tensor_parallel_hosts",
        ["item 1", "'workstation'", "no cluster_address", "set cluster_address", "inventory"],
    ),
    ({"tensor_parallel_size": 3}, "tensor_parallel_size", ["divisible", "(2)", "got 3"]),
    ({"tensor_parallel_size": 1}, "tensor_parallel_size", ["divisible", "got 1"]),
    (
        {"tensor_parallel_hosts": ["spark-1", "spark-2", "workstation"], "tensor_parallel_size": 2},
        "tensor_parallel_size",
        ["divisible", "(3)"],
    ),
    ({"multi_node": "mpi"}, "multi_node", ["native, ray", "'mpi'"]),
    ({"multi_node": ""}, "multi_node", ["native, ray"]),
]


@pytest.mark.parametrize(("changes", "field", "words"), BAD_PAIRS)
def test_it_refuses_a_bad_pair_on_post_naming_the_field(key_client, changes, field, words):
    response = post(key_client, {**PAIR, **changes})
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert (error["type"], error["field"]) == ("validation_error", field)
    assert all(word in error["message"] for word in words), error["message"]
    assert not CatalogModel.objects.exists()


@pytest.mark.parametrize(("changes", "field", "words"), BAD_PAIRS)
def test_it_refuses_a_bad_pair_on_put_and_leaves_the_model_as_it_was(
    key_client, changes, field, words
):
    model = hub_model("pair")
    before = model_to_dict(model)
    body = {**PAIR, **changes}
    body.pop("key")
    response = put(key_client, "pair", body)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["field"] == field
    assert all(word in error["message"] for word in words), error["message"]
    model.refresh_from_db()
    assert model_to_dict(model) == before


def test_it_turns_a_model_into_a_pair_and_back_with_put(key_client):
    hub_model("pair")
    body = {key: value for key, value in PAIR.items() if key != "key"}
    response = put(key_client, "pair", {**body, "hub_repo": "Qwen/Qwen3-0.6B"})
    assert response.status_code == 200, response.content
    assert CatalogModel.objects.get(key="pair").tensor_parallel_hosts == ["spark-1", "spark-2"]
    response = put(key_client, "pair", {"hub_repo": "Qwen/Qwen3-0.6B"})
    assert response.status_code == 200, response.content
    assert CatalogModel.objects.get(key="pair").tensor_parallel_hosts == []


def test_it_refuses_a_multi_node_mode_that_is_not_a_string(key_client):
    response = post(key_client, {**PAIR, "multi_node": 1})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "multi_node"
    assert not CatalogModel.objects.exists()


@pytest.mark.parametrize(("changes", "field", "words"), BAD_PAIRS)
def test_it_reports_each_rule_in_the_seed_file_with_its_key_path(changes, field, words):
    with pytest.raises(CatalogError) as caught:
        seed_catalog([{**PAIR, **changes}], source="catalog.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith(f"catalog.yaml: models[0].{field}: "), problem
    assert all(word in problem for word in words), problem
    assert not CatalogModel.objects.exists()


def test_it_creates_a_good_pair_from_the_seed_file():
    result = seed_catalog([{**PAIR, "multi_node": "ray"}])
    assert result.created == ["pair"]
    assert CatalogModel.objects.get(key="pair").multi_node == "ray"


# -- the dashboard ----------------------------------------------------------------------


def test_it_adds_a_pair_from_the_form_with_the_head_first(alice_client):
    form = {
        **HUB_FORM,
        "hub-tensor_parallel_size": "2",
        "hub-tensor_parallel_hosts": "spark-2, spark-1",
        "hub-multi_node": "ray",
    }
    response = alice_client.post("/catalog/add/hub", form)
    assert response.status_code == 200, response.content.decode()
    model = CatalogModel.objects.get(key="qwen3-8b")
    assert (model.tensor_parallel_hosts, model.multi_node) == (["spark-2", "spark-1"], "ray")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (
            {"hub-tensor_parallel_hosts": "spark-1 workstation"},
            "tensor_parallel_hosts",
            "no cluster_address",
        ),
        (
            {"hub-tensor_parallel_hosts": "spark-1,spark-1"},
            "tensor_parallel_hosts",
            "already item 0",
        ),
        ({"hub-tensor_parallel_hosts": "spark-1"}, "tensor_parallel_hosts", "at least 2 hosts"),
        ({"hub-tensor_parallel_size": "3"}, "tensor_parallel_size", "divisible"),
        ({"hub-multi_node": "mpi"}, "multi_node", "Select a valid choice"),
    ],
)
def test_it_shows_a_bad_pair_in_the_form_next_to_its_field(alice_client, changes, field, message):
    form = {
        **HUB_FORM,
        "hub-tensor_parallel_size": "2",
        "hub-tensor_parallel_hosts": "spark-1, spark-2",
        **changes,
    }
    response = alice_client.post("/catalog/add/hub", form)
    assert response.status_code == 422
    html = response.content.decode()
    error_id = f'id="id_hub-{field}-error"'
    assert error_id in html
    assert message in html[html.index(error_id) : html.index("</span>", html.index(error_id))]
    assert not CatalogModel.objects.exists()


def test_it_shows_the_hosts_head_first_and_the_mode_on_the_card(bob):
    hub_model("pair", tensor_parallel_size=2, tensor_parallel_hosts=["spark-1", "spark-2"])
    hub_model("solo")
    client = Client()
    client.force_login(bob)
    html = client.get("/catalog/").content.decode()
    pair = html[
        html.index('id="model-pair"') : html.index("</article>", html.index('id="model-pair"'))
    ]
    head = '<code>spark-1</code> <span class="muted">(head)</span>'
    assert f'<dd class="model-hosts">{head}, <code>spark-2</code>;' in pair
    assert '<span class="model-multi-node">vLLM native</span> multi-node' in pair
    solo = html[
        html.index('id="model-solo"') : html.index("</article>", html.index('id="model-solo"'))
    ]
    assert "model-hosts" not in solo


# -- what a multi-node model may add to its launch ----------------------------------------

GOOD_CONTAINER_ARGS = [
    "--device=/dev/infiniband",
    "--device=/dev/infiniband/uverbs0",
    "--env=NCCL_IB_HCA=rocep1s0f1,roceP2p1s0f1",
    "--env=NCCL_DEBUG=INFO",
    "--env=TP_SOCKET_IFNAME=enp1s0f1np1",
    "--env=OMPI_MCA_btl_tcp_if_include=10.0.0.0/24",
    "--env=RAY_DEDUP_LOGS=0",
]


def test_it_accepts_rdma_devices_and_collective_transport_settings(key_client):
    response = post(key_client, {**PAIR, "extra_container_args": GOOD_CONTAINER_ARGS})
    assert response.status_code == 201, response.content
    assert CatalogModel.objects.get(key="pair").extra_container_args == GOOD_CONTAINER_ARGS


@pytest.mark.parametrize(
    ("arg", "words"),
    [
        (
            "--env=VLLM_HOST_IP=10.0.0.1",
            ["VLLM_HOST_IP", "Arbiter sets it per host", "cluster_address"],
        ),
        ("--env=VLLM_HOST_IP", ["Arbiter sets it per host"]),
        ("--env=RAY_NODE_IP_ADDRESS=10.0.0.1", ["one host's address", "cluster_address"]),
        ("--env=NCCL_SOCKET_IFNAME=^lo,docker0", ["Arbiter sets it per host", "cluster_interface"]),
        ("--env=GLOO_SOCKET_IFNAME=enp1s0f1np1", ["cluster_interface"]),
        ("--env=UCX_NET_DEVICES=mlx5_0:1", ["cluster_interface"]),
        ("--env=VLLM_API_KEY=secret", ["'--env=VLLM_API_KEY' is not allowed", "secrets"]),
        ("--env=HF_TOKEN=hf_x", ["'--env=HF_TOKEN' is not allowed"]),
        ("--env=LD_PRELOAD=/tmp/x.so", ["is not allowed", "NCCL_*"]),
        ("--env=nccl_debug=INFO", ["is not allowed"]),
        ("--env=NCCL_DEBUG", ["must be --env=NCCL_DEBUG=VALUE"]),
        ("--env=NCCL_DEBUG=", ["no spaces or shell characters"]),
        ("--env=NCCL_DEBUG=INFO WARN", ["no spaces or shell characters"]),
        ("--env=NCCL_DEBUG=$(id)", ["no spaces or shell characters"]),
        ("--env=NCCL_DEBUG=`id`", ["no spaces or shell characters"]),
        ("--env=NCCL_DEBUG=a;b", ["no spaces or shell characters"]),
        ("--env=NCCL_DEBUG=INFO\n--privileged", ["no spaces or shell characters"]),
        ("--env=NCCL_DEBUG='x'", ["no spaces or shell characters"]),
        ("--env=NCCL_DEBUG=" + "x" * 257, ["1-256"]),
        ("-e", ["not an allowed docker option"]),
        ("--env-file=/etc/secrets", ["not an allowed docker option"]),
        ("--network=host", ["Arbiter sets the container's network itself", "host networking"]),
        ("--network", ["Arbiter sets the container's network itself"]),
        ("--net=host", ["Arbiter sets the container's network itself"]),
        ("--device=/dev/sda", ["--device=/dev/infiniband or a device below it"]),
        ("--device=/dev/infiniband/../sda", ["--device=/dev/infiniband or a device below it"]),
        ("--device=/dev/infiniband/", ["--device=/dev/infiniband or a device below it"]),
        ("--device=/dev/infiniband:/dev/infiniband:rwm", ["a device below it"]),
        ("--device", ["a device below it"]),
    ],
)
def test_it_refuses_other_container_args_saying_why(key_client, arg, words):
    response = post(key_client, {**PAIR, "extra_container_args": [arg]})
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["field"] == "extra_container_args"
    assert all(word in error["message"] for word in words), error["message"]
    assert not CatalogModel.objects.exists()


def test_it_keeps_a_refused_api_key_from_ever_reaching_the_key_the_prober_sends():
    # served_auth reads VLLM_API_KEY from --env container args; the catalog refuses such
    # an arg, so no stored model can carry a key there.
    arg = "--env=VLLM_API_KEY=secret"
    assert model_api_key([], [arg]) == "secret"  # what would be read, were it stored
    with pytest.raises(CatalogError):
        seed_catalog([{**PAIR, "extra_container_args": [arg]}])
    assert not CatalogModel.objects.exists()


@pytest.mark.parametrize(
    ("flag", "setting"),
    [
        ("--nnodes=2", "tensor_parallel_hosts"),
        ("--node-rank=1", "tensor_parallel_hosts"),
        ("--master-addr=10.0.0.1", "tensor_parallel_hosts"),
        ("--master-port=29501", "tensor_parallel_hosts"),
        ("--headless", "tensor_parallel_hosts"),
        ("--distributed-executor-backend=ray", "multi_node"),
    ],
)
def test_it_refuses_the_multi_node_engine_flags_arbiter_sets(key_client, flag, setting):
    response = post(key_client, {**PAIR, "extra_engine_flags": [flag]})
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["field"] == "extra_engine_flags"
    assert f"is set by the launch setting {setting}" in error["message"]
    assert not CatalogModel.objects.exists()

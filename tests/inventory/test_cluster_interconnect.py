"""A host's interconnect for multi-node models: `cluster_address` and `cluster_interface`
in the cluster file, stored on the host, edited through the API, shown in /api/status."""

import json
from dataclasses import replace

import pytest

from arbiter.inventory import InventoryError, apply_inventory, load_inventory
from arbiter.models import Host
from catalog.models import CatalogModel
from tests.inventory.test_apply_inventory import CLUSTER, SPARK_1, SPARK_2

HOST = """
hosts:
  - name: spark-1
    address: 192.168.1.21
"""


def load(tmp_path, extra: str = "", *, head: str = HOST):
    path = tmp_path / "cluster.yaml"
    path.write_text(head + extra)
    return load_inventory(path)


def problems_of(tmp_path, extra: str, *, head: str = HOST) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        load(tmp_path, extra, head=head)
    return caught.value.problems


def patch(client, name: str, body: object):
    return client.patch(
        f"/api/hosts/{name}", data=json.dumps(body), content_type="application/json"
    )


# -- the cluster file -------------------------------------------------------------------


def test_it_gives_a_host_no_interconnect_unless_the_file_gives_one(tmp_path):
    (host,) = load(tmp_path).hosts
    assert (host.cluster_address, host.cluster_interface) == (None, None)


@pytest.mark.django_db
def test_it_reads_both_and_stores_them_on_the_host(tmp_path):
    inventory = load(
        tmp_path, "    cluster_address: 10.0.0.1\n    cluster_interface: enp1s0f1np1\n"
    )
    apply_inventory(inventory)
    host = Host.objects.get(name="spark-1")
    assert (host.cluster_address, host.cluster_interface) == ("10.0.0.1", "enp1s0f1np1")


@pytest.mark.django_db
def test_it_stores_a_host_without_them_blank_and_a_reload_clears_them(tmp_path):
    apply_inventory(load(tmp_path, "    cluster_address: 10.0.0.1\n    cluster_interface: eth1\n"))
    apply_inventory(load(tmp_path))
    host = Host.objects.get(name="spark-1")
    assert (host.cluster_address, host.cluster_interface) == ("", "")


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "127.0.0.1", "fd00::2", "spark-2-qsfp.lan", "spark-2"]
)
def test_it_takes_an_ip_address_or_a_hostname_as_a_cluster_address(tmp_path, address):
    (host,) = load(tmp_path, f"    cluster_address: '{address}'\n").hosts
    assert host.cluster_address == address


@pytest.mark.parametrize(
    "name", ["enp1s0f1np1", "enP2p1s0f1np1", "eth0", "ib0", "bond0.100", "veth_a-1", "a" * 15]
)
def test_it_takes_a_linux_interface_name_as_a_cluster_interface(tmp_path, name):
    extra = f"    cluster_address: 10.0.0.1\n    cluster_interface: '{name}'\n"
    (host,) = load(tmp_path, extra).hosts
    assert host.cluster_interface == name


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("cluster_address: '10.0.0.1 10.0.0.2'", "must not contain whitespace"),
        ("cluster_address: '-oProxyCommand=x'", 'must not start with "-"'),
        ("cluster_address: 0.0.0.0", "not unspecified or multicast"),
        ("cluster_address: '::'", "not unspecified or multicast"),
        ("cluster_address: 224.0.0.1", "not unspecified or multicast"),
        ("cluster_address: 'fe80::1%eth0'", "must be an IP address or a hostname"),
        ("cluster_address: 192.168.1.300", "must be an IP address or a hostname"),
        ("cluster_address: 'a@b'", "must be an IP address or a hostname"),
        ("cluster_address: 'x;id'", "must be an IP address or a hostname"),
        ("cluster_address: ''", "must be an IP address or a hostname"),
        ("cluster_address: 10", "must be an IP address or a hostname"),
        ("cluster_interface: ''", "must be a Linux network interface name"),
        (f"cluster_interface: {'a' * 16}", "1-15 of"),
        ("cluster_interface: 'eth0:1'", "must be a Linux network interface name"),
        ("cluster_interface: 'en/p1'", "must be a Linux network interface name"),
        ("cluster_interface: 'eth 0'", "must be a Linux network interface name"),
        ("cluster_interface: 'eth0,eth1'", "must be a Linux network interface name"),
        ("cluster_interface: '^lo'", "must be a Linux network interface name"),
        ("cluster_interface: '-eth0'", "must be a Linux network interface name"),
        ("cluster_interface: '..'", "must be a Linux network interface name"),
        ("cluster_interface: 7", "must be a Linux network interface name"),
    ],
)
def test_it_reports_bad_values_with_the_key(tmp_path, line, reason):
    extra = f"    {line}\n"
    if line.startswith("cluster_interface"):
        extra += "    cluster_address: 10.0.0.1\n"
    key = line.split(":")[0]
    problems = problems_of(tmp_path, extra)
    assert any(f"hosts[0].{key}: " in p and reason in p for p in problems), problems


def test_it_needs_an_address_for_an_interface(tmp_path):
    problems = problems_of(tmp_path, "    cluster_interface: enp1s0f1np1\n")
    assert problems == [
        f"{tmp_path / 'cluster.yaml'}: hosts[0].cluster_interface: needs cluster_address "
        "(the host's address on that interface)"
    ]


def test_it_reports_a_bad_address_once_not_again_as_missing(tmp_path):
    problems = problems_of(tmp_path, "    cluster_address: 0.0.0.0\n    cluster_interface: eth1\n")
    assert len(problems) == 1 and "hosts[0].cluster_address" in problems[0]


def test_it_takes_them_per_host_not_as_defaults(tmp_path):
    head = "defaults:\n  cluster_address: 10.0.0.1\n" + HOST
    problems = problems_of(tmp_path, "", head=head)
    assert any("defaults.cluster_address: not allowed in defaults" in p for p in problems)


def test_it_gives_both_sparks_an_interconnect_in_the_example_file():
    from tests.inventory.test_load_inventory import EXAMPLE

    hosts = {host.name: host for host in load_inventory(EXAMPLE).hosts}
    assert hosts["spark-1"].cluster_address and hosts["spark-2"].cluster_address
    assert hosts["workstation"].cluster_address is None


# -- editing in Arbiter -----------------------------------------------------------------

ON_LINK = replace(SPARK_1, cluster_address="10.0.0.1", cluster_interface="enp1s0f1np1")


@pytest.fixture
def cluster(db):
    apply_inventory(replace(CLUSTER, hosts=[ON_LINK, SPARK_2]))


def test_it_keeps_an_edit_across_a_reload_and_a_reset_puts_the_files_values_back(
    cluster, key_client
):
    response = patch(
        key_client, "spark-2", {"cluster_address": "10.0.0.2", "cluster_interface": "eth1"}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["cluster_address"], body["cluster_interface"]) == ("10.0.0.2", "eth1")
    assert body["edited"] == {"cluster_address": "", "cluster_interface": ""}
    apply_inventory(replace(CLUSTER, hosts=[ON_LINK, SPARK_2]))  # what every start does
    host = Host.objects.get(name="spark-2")
    assert (host.cluster_address, host.cluster_interface) == ("10.0.0.2", "eth1")
    reset = key_client.delete("/api/hosts/spark-2/edits")
    assert reset.status_code == 200, reset.content
    assert (reset.json()["cluster_address"], reset.json()["edited"]) == ("", {})
    assert Host.objects.get(name="spark-2").cluster_address == ""


def test_it_clears_them_with_null_or_empty(cluster, key_client):
    response = patch(key_client, "spark-1", {"cluster_address": None, "cluster_interface": ""})
    assert response.status_code == 200, response.content
    host = Host.objects.get(name="spark-1")
    assert (host.cluster_address, host.cluster_interface) == ("", "")
    assert host.inventory_overrides == {
        "cluster_address": "10.0.0.1",
        "cluster_interface": "enp1s0f1np1",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cluster_address": "224.0.0.1"}, "cluster_address"),  # multicast
        ({"cluster_address": "10.0.0.1; id"}, "cluster_address"),
        ({"cluster_address": 10}, "cluster_address"),
        ({"cluster_interface": "eth0:1"}, "cluster_interface"),
        ({"cluster_interface": "x" * 16}, "cluster_interface"),
        ({"cluster_interface": ["eth0"]}, "cluster_interface"),
        # An interface stays with an address: clearing the address alone leaves one.
        ({"cluster_address": None}, "cluster_interface"),
    ],
)
def test_it_refuses_a_bad_edit_naming_the_field_and_changes_nothing(
    cluster, key_client, body, field
):
    before = list(Host.objects.values())
    response = patch(key_client, "spark-1", body)
    assert response.status_code == 422, response.content
    assert response.json()["error"]["field"] == field
    assert list(Host.objects.values()) == before


def test_it_refuses_an_interface_alone_on_a_host_without_an_address(cluster, key_client):
    response = patch(key_client, "spark-2", {"cluster_interface": "eth1"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "cluster_interface"
    assert Host.objects.get(name="spark-2").cluster_interface == ""


def test_it_keeps_the_address_of_a_host_a_multi_node_model_runs_on(cluster, key_client):
    patch(key_client, "spark-2", {"cluster_address": "10.0.0.2"})
    CatalogModel.objects.create(
        key="pair",
        hub_repo="Qwen/Qwen3-0.6B",
        served_name="pair",
        tensor_parallel_size=2,
        tensor_parallel_hosts=["spark-1", "spark-2"],
    )
    response = patch(key_client, "spark-2", {"cluster_address": ""})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "cluster_address"
    assert "pair" in error["message"] and "tensor_parallel_hosts" in error["message"]
    # A reset would put the file's blank address back: refused alike.
    reset = key_client.delete("/api/hosts/spark-2/edits")
    assert reset.status_code == 422 and reset.json()["error"]["field"] == "cluster_address"
    assert Host.objects.get(name="spark-2").cluster_address == "10.0.0.2"
    # Another address is fine: the model still has one to launch with.
    assert patch(key_client, "spark-2", {"cluster_address": "10.0.0.3"}).status_code == 200


def test_it_shows_each_hosts_interconnect_in_status(cluster, key_client):
    hosts = {h["name"]: h for h in key_client.get("/api/status").json()["hosts"]}
    assert (hosts["spark-1"]["cluster_address"], hosts["spark-1"]["cluster_interface"]) == (
        "10.0.0.1",
        "enp1s0f1np1",
    )
    assert (hosts["spark-2"]["cluster_address"], hosts["spark-2"]["cluster_interface"]) == ("", "")

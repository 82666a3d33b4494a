"""What the Configure action writes is what Arbiter reads.

`startos/startos/cluster.ts` (the form -> cluster inventory + known_hosts) is compiled
with the package's own TypeScript and run with node; Arbiter's inventory loader and
the SSH seam's known_hosts matching then read its output. `startos/assets/prepare.py`
(first admin, the configured webhook) runs against the test database.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import asyncssh
import pytest

from arbiter.inventory import InventoryError, load_inventory
from coordination import webhooks
from coordination.models import WebhookEndpoint
from tests.ship.sources import STARTOS

TSC = STARTOS / "node_modules" / "typescript" / "bin" / "tsc"
YAML_JS = STARTOS / "node_modules" / "yaml"

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFB4QQficKvUmPy/7urNDfahbVjhaq0w01RpKyrNRqIS"
FORM = {
    "hosts": [
        {
            "name": "spark-1",
            "address": "192.168.1.21",
            "sshUser": "arbiter",
            "sshPort": 22,
            "vramBudgetMib": 120000,
            "hostKey": f"{HOST_KEY} root@spark-1",
        },
        {
            "name": "workstation",
            "address": "fd00::30",
            "sshUser": "gpu_ops",
            "sshPort": 2222,
            "vramBudgetMib": None,
            "hostKey": None,
        },
    ],
    "vllmPort": 8001,
    "hiddenServices": ["vllm-workstation"],
}


def _missing(reason: str):
    # In CI the package must be checked; elsewhere say loudly what did not run.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster_js(tmp_path_factory) -> Path:
    """cluster.ts compiled to CommonJS with the package's pinned TypeScript."""
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed: the StartOS package's cluster.ts was not run")
    if not TSC.exists():
        _missing("startos/node_modules is missing: run `make startos-check` first")
    out = tmp_path_factory.mktemp("cluster-js")
    subprocess.run(
        [
            node,
            str(TSC),
            "--outDir",
            str(out),
            "--module",
            "commonjs",
            "--target",
            "es2022",
            "--strict",
            "--ignoreConfig",
            "--rootDir",
            str(STARTOS / "startos"),
            str(STARTOS / "startos" / "cluster.ts"),
        ],
        cwd=STARTOS,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out / "cluster.js"


def run_cluster(cluster_js: Path, form: dict) -> dict:
    """The action's output for `form`: the YAML the file model writes, and known_hosts."""
    script = f"""
const cluster = require({json.dumps(str(cluster_js))})
const YAML = require({json.dumps(str(YAML_JS))})
const form = {json.dumps(form)}
process.stdout.write(JSON.stringify({{
  problems: cluster.clusterProblems(form),
  yaml: YAML.stringify(cluster.clusterDocument(form)),
  knownHosts: cluster.knownHostsText(form),
}}))
"""
    done = subprocess.run(
        [shutil.which("node"), "-e", script], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def write_volume(tmp_path: Path, output: dict) -> Path:
    """The `main` volume as the package leaves it: cluster file, SSH key, known_hosts."""
    (tmp_path / "ssh").mkdir()
    (tmp_path / "ssh" / "id_ed25519").write_text("key\n")
    (tmp_path / "ssh" / "known_hosts").write_text(output["knownHosts"])
    path = tmp_path / "cluster.yaml"
    path.write_text(output["yaml"])
    return path


def test_it_writes_an_inventory_arbiter_loads(cluster_js, tmp_path):
    output = run_cluster(cluster_js, FORM)
    assert output["problems"] == []

    inventory = load_inventory(write_volume(tmp_path, output))

    spark, workstation = inventory.hosts
    assert (spark.name, spark.address, spark.ssh_user, spark.ssh_port) == (
        "spark-1",
        "192.168.1.21",
        "arbiter",
        22,
    )
    assert spark.vram_budget_mib == 120000 and workstation.vram_budget_mib is None
    assert (workstation.ssh_user, workstation.ssh_port) == ("gpu_ops", 2222)
    for host in inventory.hosts:
        assert host.sampling == "ssh"
        assert host.ssh_key == str(tmp_path / "ssh" / "id_ed25519")
        assert host.known_hosts == str(tmp_path / "ssh" / "known_hosts")

    services = {service.name: service for service in inventory.services}
    assert set(services) == {"vllm-spark-1", "vllm-workstation"}
    assert services["vllm-spark-1"].base_url == "http://192.168.1.21:8001"
    assert services["vllm-workstation"].base_url == "http://[fd00::30]:8001"
    assert services["vllm-spark-1"].kind == "vllm"
    assert services["vllm-spark-1"].capabilities == ("llm",)
    assert not services["vllm-spark-1"].disabled
    assert services["vllm-workstation"].disabled


def test_it_trusts_exactly_the_host_keys_entered(cluster_js, tmp_path):
    output = run_cluster(
        cluster_js,
        {**FORM, "hosts": [{**FORM["hosts"][0], "sshPort": 2200}, FORM["hosts"][1]]},
    )
    known = asyncssh.import_known_hosts(output["knownHosts"])

    # Matched the way arbiter.engine.ssh matches a host: address and port.
    host_keys, *_ = asyncssh.match_known_hosts(known, "192.168.1.21", "192.168.1.21", 2200)
    # (asyncssh lists a key once per matching name: the host and its address.)
    assert {key.export_public_key("openssh").decode().split()[1] for key in host_keys} == {
        HOST_KEY.split()[1]
    }
    assert not asyncssh.match_known_hosts(known, "192.168.1.21", "192.168.1.21", 22)[0]
    # A host without a key is not trusted at all (Arbiter refuses it until one is given).
    assert not asyncssh.match_known_hosts(known, "fd00::30", "fd00::30", 2222)[0]


def test_it_refuses_to_hide_a_service_that_does_not_exist(cluster_js, tmp_path):
    output = run_cluster(cluster_js, {**FORM, "hiddenServices": ["vllm-nowhere"]})

    assert output["problems"] == [
        'No service named "vllm-nowhere" to hide (services: vllm-spark-1, vllm-workstation).'
    ]


def test_it_lets_arbiter_name_the_field_of_a_bad_value_the_form_let_through(cluster_js, tmp_path):
    # The form's patterns are loose on purpose (Arbiter validates again); the loader
    # names the field, so a bad value shows up in the service log, not as silence.
    host = {**FORM["hosts"][0], "address": "not a host"}
    output = run_cluster(cluster_js, {**FORM, "hosts": [host], "hiddenServices": []})

    with pytest.raises(InventoryError, match=r"hosts\[0\]\.address"):
        load_inventory(write_volume(tmp_path, output))


# --- assets/prepare.py -----------------------------------------------------------------
@pytest.fixture
def prepare():
    spec = importlib.util.spec_from_file_location(
        "startos_prepare", STARTOS / "assets" / "prepare.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SECRET = "whsec_" + "c2hpcC10ZXN0LXNlY3JldC1vZi0zMi1ieXRlcyEhISE="
OTHER_SECRET = "whsec_" + "YW5vdGhlci1zZWNyZXQtb2YtMzItYnl0ZXMhISEhISE="


@pytest.mark.django_db
def test_it_creates_the_admin_only_when_there_is_none(prepare, django_user_model):
    assert prepare.ensure_admin("admin", "first-password-1") is True
    assert prepare.ensure_admin("admin", "second-password") is False

    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("first-password-1")


@pytest.mark.django_db
def test_it_creates_updates_and_removes_the_configured_webhook(prepare):
    api_endpoint, _secret = webhooks.create_endpoint("https://hooks.lan/api-made")

    assert prepare.apply_webhook("https://hooks.lan/arbiter", SECRET) == "created"
    endpoint = WebhookEndpoint.objects.get(description=prepare.CONFIGURED_WEBHOOK)
    assert endpoint.url == "https://hooks.lan/arbiter"
    assert webhooks.signing_secrets(endpoint) == [SECRET]

    assert prepare.apply_webhook("https://hooks.lan/arbiter", SECRET) == "unchanged"
    assert prepare.apply_webhook("https://hooks.lan/v2", OTHER_SECRET) == "updated url and secret"
    endpoint.refresh_from_db()
    assert endpoint.url == "https://hooks.lan/v2"
    assert webhooks.signing_secrets(endpoint) == [OTHER_SECRET]

    assert prepare.apply_webhook("", "") == "removed"
    assert not WebhookEndpoint.objects.filter(description=prepare.CONFIGURED_WEBHOOK).exists()
    # Endpoints made through the API are not the package's to manage.
    assert WebhookEndpoint.objects.filter(pk=api_endpoint.pk).exists()


@pytest.mark.django_db
def test_it_does_not_keep_arbiter_from_starting_over_a_refused_webhook_url(
    prepare, monkeypatch, settings, capsys
):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = []
    monkeypatch.setenv("STARTOS_ADMIN_PASSWORD", "")
    monkeypatch.setenv("STARTOS_WEBHOOK_URL", "http://192.168.1.5/hook")
    assert prepare.main() == 0
    printed = capsys.readouterr().out
    assert "webhook: not applied: url:" in printed
    assert "192.168.1.5" in printed
    assert not WebhookEndpoint.objects.filter(description=prepare.CONFIGURED_WEBHOOK).exists()

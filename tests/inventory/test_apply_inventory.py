"""apply_inventory and `manage.py load_inventory`: upsert by name, retire, keep live state."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from arbiter.inventory import HostConfig, Inventory, ServiceConfig, apply_inventory
from arbiter.models import Host, Service

ROOT = Path(__file__).resolve().parents[2]

SPARK_1 = HostConfig(name="spark-1", address="192.168.1.21", vram_budget_mib=120000)
SPARK_2 = HostConfig(
    name="spark-2", address="spark-2.lan", ssh_user="ops", ssh_port=2222, ssh_key="/keys/id"
)
CHAT = ServiceConfig(
    name="chat",
    host="spark-1",
    base_url="http://192.168.1.21:8000",
    capabilities=("llm",),
    request_paths=("/v1/chat/completions", "/v1/completions"),
    vram_resident_mib=90000,
)
TTS = ServiceConfig(
    name="tts",
    host="spark-2",
    kind="http",
    base_url="http://spark-2.lan:8880",
    capabilities=("tts",),
    request_paths=("/v1/audio/speech",),
    can_coexist_with=("chat",),
    load_route="/load",
    unload_route="/unload",
)
CLUSTER = Inventory(hosts=[SPARK_1, SPARK_2], services=[CHAT, TTS])


def test_it_creates_hosts_and_services(db):
    result = apply_inventory(CLUSTER)

    assert (result.hosts_created, result.hosts_updated, result.hosts_retired) == (2, 0, 0)
    assert (result.services_created, result.services_updated, result.services_retired) == (2, 0, 0)
    spark_2 = Host.objects.get(name="spark-2")
    assert (spark_2.address, spark_2.ssh_user, spark_2.ssh_port) == ("spark-2.lan", "ops", 2222)
    assert (spark_2.ssh_key, spark_2.known_hosts, spark_2.sampling) == ("/keys/id", "", "ssh")
    assert (spark_2.vram_budget_mib, spark_2.vram_margin_mib) == (None, 0)
    assert spark_2.in_inventory and not spark_2.simulated
    tts = Service.objects.get(name="tts")
    assert tts.host == spark_2
    assert (tts.kind, tts.base_url, tts.health_path) == (
        "http",
        "http://spark-2.lan:8880",
        "/health",
    )
    assert tts.capabilities == ["tts"]
    assert tts.request_paths == ["/v1/audio/speech"]
    assert tts.can_coexist_with == ["chat"]
    assert (tts.load_route, tts.unload_route, tts.disabled) == ("/load", "/unload", False)
    assert Service.objects.get(name="chat").load_route == ""


def test_it_updates_in_place_without_touching_live_state_or_trusted_keys(db):
    apply_inventory(CLUSTER)
    host_ids = dict(Host.objects.values_list("name", "id"))
    service_ids = dict(Service.objects.values_list("name", "id"))
    sampled_at = timezone.now()
    Host.objects.filter(name="spark-1").update(
        trusted_host_keys="ssh-ed25519 AAAAC3Nza spark-1",
        last_sample_at=sampled_at,
        missed_samples=3,
        last_error="timeout",
        mem_total_mib=128000,
    )
    Service.objects.filter(name="chat").update(
        health="up", last_probe_at=sampled_at, last_latency_ms=12.5, loaded_model="qwen"
    )

    changed = Inventory(
        hosts=[replace(SPARK_1, ssh_port=2200, vram_margin_mib=4096), SPARK_2],
        services=[replace(CHAT, base_url="http://192.168.1.21:9000", disabled=True), TTS],
    )
    result = apply_inventory(changed)

    assert (result.hosts_created, result.hosts_updated, result.hosts_retired) == (0, 2, 0)
    assert (result.services_created, result.services_updated) == (0, 2)
    assert dict(Host.objects.values_list("name", "id")) == host_ids
    assert dict(Service.objects.values_list("name", "id")) == service_ids
    spark_1 = Host.objects.get(name="spark-1")
    assert (spark_1.ssh_port, spark_1.vram_margin_mib) == (2200, 4096)
    assert spark_1.trusted_host_keys == "ssh-ed25519 AAAAC3Nza spark-1"
    assert (spark_1.last_sample_at, spark_1.missed_samples) == (sampled_at, 3)
    assert (spark_1.last_error, spark_1.mem_total_mib) == ("timeout", 128000)
    chat = Service.objects.get(name="chat")
    assert (chat.base_url, chat.disabled) == ("http://192.168.1.21:9000", True)
    assert (chat.health, chat.last_probe_at) == ("up", sampled_at)
    assert (chat.last_latency_ms, chat.loaded_model) == (12.5, "qwen")


def test_it_retires_hosts_and_services_missing_from_the_file(db):
    apply_inventory(CLUSTER)

    result = apply_inventory(Inventory(hosts=[SPARK_1], services=[CHAT]))

    assert (result.hosts_retired, result.services_retired) == (1, 1)
    assert Host.objects.count() == 2
    assert dict(Host.objects.values_list("name", "in_inventory")) == {
        "spark-1": True,
        "spark-2": False,
    }
    assert dict(Service.objects.values_list("name", "in_inventory")) == {
        "chat": True,
        "tts": False,
    }


def test_it_retires_a_service_removed_from_a_host_that_stays(db):
    apply_inventory(CLUSTER)

    apply_inventory(Inventory(hosts=[SPARK_1, SPARK_2], services=[CHAT]))

    assert Host.objects.get(name="spark-2").in_inventory is True
    assert Service.objects.get(name="tts").in_inventory is False


def test_it_counts_a_retirement_once_and_brings_rows_back(db):
    apply_inventory(CLUSTER)
    apply_inventory(Inventory(hosts=[SPARK_1], services=[]))

    again = apply_inventory(Inventory(hosts=[SPARK_1], services=[]))
    back = apply_inventory(CLUSTER)

    assert (again.hosts_retired, again.services_retired) == (0, 0)
    assert (back.hosts_created, back.hosts_updated, back.services_updated) == (0, 2, 2)
    assert Host.objects.filter(in_inventory=True).count() == 2
    assert Service.objects.filter(in_inventory=True).count() == 2


def test_it_moves_a_service_to_another_host(db):
    apply_inventory(CLUSTER)

    apply_inventory(replace(CLUSTER, services=[replace(CHAT, host="spark-2"), TTS]))

    assert Service.objects.get(name="chat").host.name == "spark-2"


def test_it_marks_hosts_of_a_simulated_file(db):
    apply_inventory(replace(CLUSTER, simulated=True))

    assert set(Host.objects.values_list("simulated", flat=True)) == {True}


# --- manage.py load_inventory ---------------------------------------------------------

VALID_FILE = """
hosts:
  - name: spark-1
    address: 192.168.1.21
services:
  - name: chat
    host: spark-1
    base_url: http://192.168.1.21:8000
    capabilities: [llm]
"""

INVALID_FILE = """
hosts:
  - name: spark-1
    address: 192.168.1.21
    ssh_port: x
    sampling: local
"""


def test_it_loads_the_file_given_on_the_command_line(db, tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text(VALID_FILE)

    call_command("load_inventory", str(path))

    assert capsys.readouterr().out == (
        f"Loaded {path}: hosts: 1 created, 0 updated, 0 retired; "
        "services: 1 created, 0 updated, 0 retired\n"
    )
    assert Service.objects.get(name="chat").host.name == "spark-1"


def test_it_loads_arbiter_config_by_default(db, tmp_path, settings, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text(VALID_FILE)
    settings.ARBITER_CONFIG = str(path)

    call_command("load_inventory")

    assert capsys.readouterr().out.startswith(f"Loaded {path}: hosts: 1 created")
    assert Host.objects.filter(name="spark-1").exists()


def test_it_needs_a_path_or_arbiter_config(db, settings):
    settings.ARBITER_CONFIG = ""

    with pytest.raises(CommandError) as caught:
        call_command("load_inventory")

    assert str(caught.value) == "No cluster file: pass PATH or set ARBITER_CONFIG."


def test_it_reports_every_problem_and_writes_nothing(db, tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(INVALID_FILE)

    with pytest.raises(CommandError) as caught:
        call_command("load_inventory", str(path))

    assert str(caught.value) == (
        f'{path}: hosts[0].ssh_port: must be an integer 1-65535, got "x"\n'
        f'{path}: hosts[0].sampling: must be one of "ssh", "nvml", got "local"'
    )
    assert not Host.objects.exists()


def test_it_exits_with_status_1_and_problems_on_stderr(tmp_path):
    (tmp_path / "cluster.yaml").write_text(INVALID_FILE)
    # Its own data dir, so the subprocess never touches the developer's database.
    env = {**os.environ, "ARBITER_DATA_DIR": str(tmp_path / "data"), "ARBITER_CONFIG": ""}

    completed = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "load_inventory", "cluster.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 1
    assert completed.stdout == ""
    assert 'cluster.yaml: hosts[0].ssh_port: must be an integer 1-65535, got "x"\n' in (
        completed.stderr
    )
    assert 'cluster.yaml: hosts[0].sampling: must be one of "ssh", "nvml", got "local"' in (
        completed.stderr
    )

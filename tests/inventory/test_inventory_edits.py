"""Editing hosts and services in Arbiter: the API, and edits surviving an inventory reload."""

import asyncio
import json
from dataclasses import replace

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.test import AsyncClient

from arbiter.inventory import apply_inventory
from arbiter.models import Host, Service
from dashboard.live import DASHBOARD_GROUP
from tests.inventory.conftest import patch
from tests.inventory.test_apply_inventory import CHAT, CLUSTER, SPARK_1, TTS


@pytest.fixture
def cluster(db):
    apply_inventory(CLUSTER)


def test_it_keeps_a_service_disabled_in_arbiter_disabled_across_reloads(cluster, key_client):
    response = patch(key_client, "/api/services/chat", {"disabled": True})
    assert response.status_code == 200, response.content
    assert response.json() == {
        "name": "chat",
        "host": "spark-1",
        "disabled": True,
        "vram_resident_mib": 90000,
        "adopt_containers": [],
        "edited": {"disabled": False},  # the file's value
    }
    apply_inventory(CLUSTER)  # what every start does
    chat = Service.objects.get(name="chat")
    assert chat.disabled and chat.inventory_overrides == {"disabled": False}
    endpoints = {e["name"]: e for e in key_client.get("/api/endpoints").json()}
    assert endpoints["chat"]["disabled"] is True


def test_it_still_updates_unedited_fields_on_a_reload_and_remembers_the_files_new_value(
    cluster, key_client
):
    patch(key_client, "/api/hosts/spark-1", {"vram_margin_mib": 4096})
    moved = replace(SPARK_1, address="192.168.1.99", vram_margin_mib=1024)
    apply_inventory(replace(CLUSTER, hosts=[moved, CLUSTER.hosts[1]]))
    host = Host.objects.get(name="spark-1")
    assert (host.address, host.vram_margin_mib) == ("192.168.1.99", 4096)
    assert host.inventory_overrides == {"vram_margin_mib": 1024}
    reset = key_client.delete("/api/hosts/spark-1/edits")
    assert reset.status_code == 200
    assert reset.json()["vram_margin_mib"] == 1024 and reset.json()["edited"] == {}
    assert Host.objects.get(name="spark-1").vram_margin_mib == 1024


def test_it_ends_the_edit_when_the_files_value_is_set_again(cluster, key_client):
    patch(key_client, "/api/hosts/spark-1", {"vram_budget_mib": 100000, "vram_margin_mib": 512})
    again = patch(key_client, "/api/hosts/spark-1", {"vram_budget_mib": 120000})
    assert again.json() == {
        "name": "spark-1",
        "vram_budget_mib": 120000,
        "vram_margin_mib": 512,
        "cluster_address": "",
        "cluster_interface": "",
        "edited": {"vram_margin_mib": 0},
    }


def test_it_changes_only_the_fields_sent(cluster, key_client):
    response = patch(key_client, "/api/services/tts", {"vram_resident_mib": 2048})
    assert response.json()["disabled"] is False
    tts = Service.objects.get(name="tts")
    assert (tts.vram_resident_mib, tts.disabled) == (2048, False)
    assert tts.inventory_overrides == {"vram_resident_mib": 0}


def test_it_can_clear_a_budget(cluster, key_client):
    response = patch(key_client, "/api/hosts/spark-1", {"vram_budget_mib": None})
    assert response.status_code == 200
    assert Host.objects.get(name="spark-1").vram_budget_mib is None


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/services/chat", {"disabled": "yes"}, "disabled"),
        ("/api/services/chat", {"disabled": 1}, "disabled"),
        ("/api/services/chat", {"vram_resident_mib": -1}, "vram_resident_mib"),
        ("/api/services/chat", {"vram_resident_mib": 2.5}, "vram_resident_mib"),
        ("/api/services/chat", {"vram_resident_mib": "8"}, "vram_resident_mib"),
        ("/api/services/chat", {"vram_resident_mib": 10**12}, "vram_resident_mib"),
        ("/api/services/chat", {"base_url": "http://elsewhere:1"}, "base_url"),
        ("/api/services/chat", {}, "body"),
        ("/api/hosts/spark-1", {"vram_budget_mib": 0}, "vram_budget_mib"),
        ("/api/hosts/spark-1", {"vram_margin_mib": None}, "vram_margin_mib"),
        ("/api/hosts/spark-1", {"address": "10.0.0.1"}, "address"),
        ("/api/hosts/spark-1", {}, "body"),
    ],
)
def test_it_refuses_bad_input_naming_the_field_and_changes_nothing(
    cluster, key_client, path, body, field
):
    before = list(Service.objects.values()) + list(Host.objects.values())
    response = patch(key_client, path, body)
    assert response.status_code == 422, response.content
    assert response.json()["error"]["field"] == field
    assert list(Service.objects.values()) + list(Host.objects.values()) == before


def test_it_refuses_a_body_that_is_not_json(cluster, key_client):
    response = key_client.patch(
        "/api/services/chat", data="disabled=true", content_type="application/json"
    )
    assert response.status_code in (400, 422)
    assert "error" in response.json()
    assert not Service.objects.get(name="chat").disabled


@pytest.mark.parametrize(
    "path", ["/api/services/nope", "/api/hosts/nope", "/api/services/nope/edits"]
)
def test_it_answers_404_for_an_unknown_name(cluster, key_client, path):
    if path.endswith("/edits"):
        response = key_client.delete(path)
    else:
        body = {"disabled": True} if "services" in path else {"vram_margin_mib": 1}
        response = patch(key_client, path, body)
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "name"


def test_it_refuses_to_edit_a_retired_row(cluster, key_client):
    apply_inventory(replace(CLUSTER, services=[CHAT]))  # tts dropped from the file
    response = patch(key_client, "/api/services/tts", {"disabled": True})
    assert response.status_code == 404


def test_it_needs_authentication_for_edits(cluster, client):
    assert patch(client, "/api/services/chat", {"disabled": True}).status_code == 401
    assert client.delete("/api/hosts/spark-1/edits").status_code == 401
    assert not Service.objects.get(name="chat").disabled


@pytest.mark.django_db(transaction=True)
async def test_it_pushes_the_services_panel_when_a_service_is_disabled(admin_key):
    api_key = admin_key  # disabling a service is an inventory edit: an admin's
    await sync_to_async(apply_inventory)(replace(CLUSTER, services=[CHAT, TTS]))
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(DASHBOARD_GROUP, channel)
    client = AsyncClient(headers={"Authorization": f"Bearer {api_key}"})
    response = await client.patch(
        "/api/services/chat",
        data=json.dumps({"disabled": True}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 200
    html = (await asyncio.wait_for(layer.receive(channel), 2))["html"]
    assert 'id="services-panel"' in html and 'hx-swap-oob="true"' in html
    assert 'id="service-chat"' not in html  # no tile
    assert 'id="service-disabled-chat"' in html and ">Enable</button>" in html
    assert 'id="service-tts"' in html

"""/api/models: create, read, replace, delete — status, body and database state."""

import pytest
from django.forms.models import model_to_dict
from django.test import Client

from arbiter.models import Host, Swap
from catalog.models import CatalogModel
from tests.catalog.conftest import hub_model, local_model, post, put

pytestmark = pytest.mark.django_db


def test_it_creates_a_hub_model(key_client):
    response = post(
        key_client,
        {
            "key": "qwen3-8b",
            "hub_repo": "Qwen/Qwen3-8B",
            "hub_revision": "main",
            "extra_engine_flags": ["--enable-prefix-caching"],
            "extra_container_args": ["--shm-size=16g"],
            "estimated_vram_mib": 20000,
            "idle_unload_seconds": 1800,
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert body["idle_unload_seconds"] == 1800
    assert body["key"] == "qwen3-8b"
    assert body["local"] is False
    assert body["served_name"] == "Qwen/Qwen3-8B"
    assert body["source"] == "Qwen/Qwen3-8B"
    model = CatalogModel.objects.get(key="qwen3-8b")
    assert (model.hub_repo, model.hub_revision, model.local_path) == ("Qwen/Qwen3-8B", "main", "")
    assert model.extra_engine_flags == ["--enable-prefix-caching"]
    assert model.extra_container_args == ["--shm-size=16g"]
    assert model.image == "vllm/vllm-openai:latest"
    assert model.idle_unload_seconds == 1800


def test_it_creates_a_local_model_with_its_path_normalised(key_client):
    response = post(key_client, {"key": "ft", "local_path": "//models//team/run-3/"})
    assert response.status_code == 201
    assert response.json()["local"] is True
    assert response.json()["local_path"] == "/models/team/run-3"
    assert CatalogModel.objects.get(key="ft").local_path == "/models/team/run-3"


def test_it_lists_models_with_the_local_flag(key_client):
    hub_model("b-hub")
    local_model("a-local")
    listed = key_client.get("/api/models").json()
    assert [(m["key"], m["local"]) for m in listed] == [("a-local", True), ("b-hub", False)]


def test_it_returns_one_model(key_client):
    hub_model("qwen", display_name="Qwen")
    response = key_client.get("/api/models/qwen")
    assert response.status_code == 200
    assert response.json()["display_name"] == "Qwen"


def test_it_answers_404_naming_the_key(key_client):
    response = key_client.get("/api/models/nope")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "type": "not_found",
        "message": "no catalog model with key 'nope'",
        "field": "key",
    }
    assert put(key_client, "nope", {"hub_repo": "a/b"}).status_code == 404
    assert key_client.delete("/api/models/nope").status_code == 404


def test_it_refuses_a_duplicate_key(key_client):
    hub_model("qwen")
    response = post(key_client, {"key": "qwen", "hub_repo": "Other/Model"})
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "key"
    assert CatalogModel.objects.get(key="qwen").hub_repo == "Qwen/Qwen3-0.6B"


def test_it_replaces_every_field_on_put(key_client):
    hub_model("qwen", port=9000, extra_engine_flags=["--enforce-eager"], display_name="Q")
    Host.objects.create(name="gpu-1", address="10.0.0.1")
    response = put(
        key_client,
        "qwen",
        {"local_path": "/models/qwen-ft", "served_name": "qwen-ft", "default_host": "gpu-1"},
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["local"], body["local_path"], body["default_host"]) == (
        True,
        "/models/qwen-ft",
        "gpu-1",
    )
    model = CatalogModel.objects.get(key="qwen")
    # A full update: what the body leaves out goes back to its default.
    assert (model.hub_repo, model.port, model.extra_engine_flags, model.display_name) == (
        "",
        8000,
        [],
        "",
    )
    assert model.default_host.name == "gpu-1"


def test_it_writes_nothing_on_a_bad_put(key_client):
    hub_model("qwen", port=9000)
    before = model_to_dict(CatalogModel.objects.get(key="qwen"))
    response = put(
        key_client,
        "qwen",
        {"hub_repo": "Qwen/Qwen3-8B", "port": 9100, "extra_container_args": ["--privileged"]},
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "extra_container_args"
    assert model_to_dict(CatalogModel.objects.get(key="qwen")) == before


def test_it_refuses_to_rename_on_put(key_client):
    hub_model("qwen")
    response = put(key_client, "qwen", {"key": "other", "hub_repo": "Qwen/Qwen3-0.6B"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "key"
    assert CatalogModel.objects.filter(key="qwen").exists()
    assert not CatalogModel.objects.filter(key="other").exists()


def test_it_deletes_a_model(key_client):
    hub_model("qwen")
    response = key_client.delete("/api/models/qwen")
    assert response.status_code == 204
    assert not CatalogModel.objects.exists()


def _active_swap(model: CatalogModel) -> Swap:
    host = Host.objects.create(name="gpu-1", address="10.0.0.1")
    return Swap.objects.create(model=model, model_key=model.key, host=host, state="launching")


def test_it_refuses_to_delete_a_model_while_it_is_being_swapped_in(key_client):
    swap = _active_swap(hub_model("qwen"))
    response = key_client.delete("/api/models/qwen")
    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["type"], error["field"], error["swap_id"]) == ("conflict", "key", swap.pk)
    assert CatalogModel.objects.filter(key="qwen").exists()

    Swap.objects.filter(pk=swap.pk).update(state="complete")
    assert key_client.delete("/api/models/qwen").status_code == 204
    swap.refresh_from_db()
    assert (swap.model_id, swap.model_key) == (None, "qwen")  # history survives


def test_it_refuses_to_change_a_model_while_it_is_being_swapped_in(key_client):
    _active_swap(hub_model("qwen", port=9000))
    response = put(key_client, "qwen", {"hub_repo": "Qwen/Qwen3-0.6B", "port": 9100})
    assert response.status_code == 409
    assert CatalogModel.objects.get(key="qwen").port == 9000


def test_it_requires_authentication():
    client = Client()
    assert client.get("/api/models").status_code == 401
    assert post(client, {"key": "x", "hub_repo": "a/b"}).status_code == 401
    assert not CatalogModel.objects.exists()


def test_it_lets_a_logged_in_non_staff_operator_add_a_model_with_csrf(operator_bob, csrf_client):
    csrf_client.force_login(operator_bob)
    refused = post(csrf_client, {"key": "x", "hub_repo": "a/b"})
    assert refused.status_code == 403  # session without the CSRF token
    csrf_client.get("/catalog/")  # sets the CSRF cookie, as the page does for htmx
    token = csrf_client.cookies["csrftoken"].value
    response = csrf_client.post(
        "/api/models",
        {"key": "x", "hub_repo": "a/b"},
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 201

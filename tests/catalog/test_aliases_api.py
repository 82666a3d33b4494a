"""/api/aliases: create, read, replace, delete; every validation case writes nothing."""

import pytest
from django.test import Client

from arbiter.models import ApiKey, AuditEvent
from catalog.models import CatalogAlias, CatalogModel
from tests.catalog.conftest import hub_model, post

pytestmark = pytest.mark.django_db


def post_alias(client, body):
    return client.post("/api/aliases", body, content_type="application/json")


def put_alias(client, name, body):
    return client.put(f"/api/aliases/{name}", body, content_type="application/json")


@pytest.fixture
def two_models(db):
    hub_model("qwen", hub_repo="Qwen/Qwen3-8B")
    hub_model("llama", hub_repo="meta-llama/Llama-3.1-8B", served_name="llama-8b")


def test_it_creates_lists_reads_replaces_and_deletes_an_alias_with_audit_rows(
    key_client, two_models
):
    body = {"name": "chat-default", "model_keys": ["qwen", "llama"], "description": "chat"}
    response = post_alias(key_client, body)
    assert response.status_code == 201, response.content
    assert response.json()["model_keys"] == ["qwen", "llama"]
    assert CatalogAlias.objects.get(name="chat-default").model_keys == ["qwen", "llama"]
    assert [a["name"] for a in key_client.get("/api/aliases").json()] == ["chat-default"]
    assert key_client.get("/api/aliases/chat-default").json()["description"] == "chat"

    response = put_alias(key_client, "chat-default", {"model_keys": ["llama", "qwen"]})
    assert response.status_code == 200, response.content
    assert response.json()["model_keys"] == ["llama", "qwen"]
    assert CatalogAlias.objects.get(name="chat-default").description == ""

    assert key_client.delete("/api/aliases/chat-default").status_code == 204
    assert not CatalogAlias.objects.exists()
    assert key_client.get("/api/aliases/chat-default").status_code == 404
    rows = list(AuditEvent.objects.filter(object_type="catalog_alias").order_by("pk"))
    assert [row.action for row in rows] == [
        "catalog.alias_create",
        "catalog.alias_update",
        "catalog.alias_delete",
    ]
    assert rows[0].actor_name == "nightly cron" and rows[0].object_id == "chat-default"
    assert rows[1].before == {"model_keys": ["qwen", "llama"], "description": "chat"}
    assert rows[1].after == {"model_keys": ["llama", "qwen"], "description": ""}


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"name": "", "model_keys": ["qwen"]}, 422, "name", "is required"),
        ({"model_keys": ["qwen"]}, 422, "name", "is required"),
        ({"name": "-x", "model_keys": ["qwen"]}, 422, "name", "must not start with '-'"),
        ({"name": "chat default", "model_keys": ["qwen"]}, 422, "name", "whitespace"),
        ({"name": "chat\ndefault", "model_keys": ["qwen"]}, 422, "name", "control"),
        ({"name": "Qwen/Qwen3-8B", "model_keys": ["qwen"]}, 409, "name", "catalog model 'qwen'"),
        ({"name": "llama", "model_keys": ["qwen"]}, 409, "name", "catalog model 'llama'"),
        ({"name": "chat", "model_keys": []}, 422, "model_keys", "non-empty"),
        ({"name": "chat", "model_keys": ["nope"]}, 422, "model_keys", "'nope'"),
        ({"name": "chat", "model_keys": ["qwen", "qwen"]}, 422, "model_keys", "listed twice"),
        ({"name": "chat", "model_keys": "qwen"}, 422, "model_keys", "list"),
        ({"name": "chat", "model_keys": ["qwen"], "extra": 1}, 422, "extra", "not permitted"),
    ],
)
def test_it_refuses_a_bad_alias_naming_the_field_and_writes_nothing(
    key_client, two_models, body, status, field, words
):
    response = post_alias(key_client, body)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"].startswith(field) and words in error["message"]
    assert not CatalogAlias.objects.exists()
    assert not AuditEvent.objects.filter(object_type="catalog_alias").exists()


def test_it_refuses_a_second_alias_of_the_same_name_and_a_rename_on_put(key_client, two_models):
    assert post_alias(key_client, {"name": "chat", "model_keys": ["qwen"]}).status_code == 201
    again = post_alias(key_client, {"name": "chat", "model_keys": ["llama"]})
    assert (again.status_code, again.json()["error"]["field"]) == (409, "name")
    renamed = put_alias(key_client, "chat", {"name": "other", "model_keys": ["llama"]})
    assert (renamed.status_code, renamed.json()["error"]["field"]) == (422, "name")
    bad = put_alias(key_client, "chat", {"model_keys": ["qwen", "nope"]})
    assert (bad.status_code, bad.json()["error"]["field"]) == (422, "model_keys")
    assert CatalogAlias.objects.get(name="chat").model_keys == ["qwen"]


def test_it_refuses_a_model_whose_served_name_or_key_is_an_alias(key_client, two_models):
    CatalogAlias.objects.create(name="chat-default", model_keys=["qwen"])
    response = post(key_client, {"key": "other", "hub_repo": "a/b", "served_name": "chat-default"})
    assert (response.status_code, response.json()["error"]["field"]) == (409, "served_name")
    response = post(key_client, {"key": "chat-default", "hub_repo": "a/b", "served_name": "x"})
    assert (response.status_code, response.json()["error"]["field"]) == (409, "key")
    assert not CatalogModel.objects.filter(key__in=["other", "chat-default"]).exists()
    # Renaming an existing model to the alias's name is refused as well.
    response = key_client.put(
        "/api/models/llama",
        {"hub_repo": "meta-llama/Llama-3.1-8B", "served_name": "chat-default"},
        content_type="application/json",
    )
    assert (response.status_code, response.json()["error"]["field"]) == (409, "served_name")
    assert CatalogModel.objects.get(key="llama").served_name == "llama-8b"


def test_it_refuses_to_delete_a_model_an_alias_lists_naming_the_alias(key_client, two_models):
    CatalogAlias.objects.create(name="chat-default", model_keys=["qwen", "llama"])
    CatalogAlias.objects.create(name="fast", model_keys=["llama"])
    response = key_client.delete("/api/models/llama")
    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["field"], error["aliases"]) == ("key", ["chat-default", "fast"])
    assert "chat-default, fast" in error["message"]
    assert CatalogModel.objects.filter(key="llama").exists()
    CatalogAlias.objects.filter(name="fast").delete()
    CatalogAlias.objects.filter(name="chat-default").update(model_keys=["qwen"])
    assert key_client.delete("/api/models/llama").status_code == 204


def test_it_lets_readers_list_aliases_and_only_operators_write_them(two_models):
    CatalogAlias.objects.create(name="chat", model_keys=["qwen"])
    _key, raw = ApiKey.objects.create_key(name="reader", role=ApiKey.ROLE_INFERENCE)
    reader = Client(headers={"Authorization": f"Bearer {raw}"})
    assert reader.get("/api/aliases").status_code == 200
    assert post_alias(reader, {"name": "x", "model_keys": ["qwen"]}).status_code == 403
    assert put_alias(reader, "chat", {"model_keys": ["llama"]}).status_code == 403
    assert reader.delete("/api/aliases/chat").status_code == 403
    assert CatalogAlias.objects.get(name="chat").model_keys == ["qwen"]

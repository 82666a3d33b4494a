"""API keys: created once, stored hashed, managed by staff."""

import io

import pytest
from django.core.management import call_command
from django.test import Client

from arbiter.models import ApiKey

pytestmark = pytest.mark.django_db


def test_it_prints_only_the_key_on_stdout():
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", "nightly eval", stdout=out, stderr=err)
    raw_key = out.getvalue().strip()
    assert raw_key.startswith("arb_")
    assert "\n" not in raw_key
    assert ApiKey.objects.verify(raw_key).name == "nightly eval"
    assert raw_key not in err.getvalue()


def test_it_never_stores_the_key_in_plaintext():
    _key, raw_key = ApiKey.objects.create_key(name="cron")
    secret = raw_key.rsplit("_", 1)[1]
    for row in ApiKey.objects.values():
        for value in row.values():
            assert raw_key not in str(value)
            assert secret not in str(value)


def test_it_shows_a_visible_prefix():
    key, raw_key = ApiKey.objects.create_key(name="cron")
    assert raw_key.startswith(key.visible_prefix)
    assert len(key.visible_prefix) == len("arb_") + 8 + 1


def test_it_lets_staff_create_and_revoke_keys(alice):
    client = Client()
    client.force_login(alice)
    created = client.post("/api/keys", {"name": "ci"}, content_type="application/json")
    assert created.status_code == 201
    body = created.json()
    assert ApiKey.objects.verify(body["key"]).pk == body["id"]

    listed = client.get("/api/keys").json()
    assert [k["name"] for k in listed] == ["ci"]
    assert "key" not in listed[0]

    assert client.delete(f"/api/keys/{body['id']}").status_code == 204
    assert ApiKey.objects.verify(body["key"]) is None


def test_it_refuses_key_management_to_non_staff(bob):
    client = Client()
    client.force_login(bob)
    response = client.post("/api/keys", {"name": "ci"}, content_type="application/json")
    assert response.status_code == 403
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": 5}, "name"),
        ({"name": "ci", "priority": "urgent"}, "priority"),
        ({"name": "ci", "priority": 1}, "priority"),
    ],
)
def test_it_names_the_bad_field(alice, body, field):
    client = Client()
    client.force_login(alice)
    response = client.post("/api/keys", body, content_type="application/json")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert not ApiKey.objects.exists()


def test_it_gives_a_key_the_priority_asked_for_by_the_command_and_the_api(alice):
    call_command("create_api_key", "batch job", "--priority", "batch", stdout=io.StringIO())
    assert ApiKey.objects.get(name="batch job").priority == "batch"
    client = Client()
    client.force_login(alice)
    created = client.post(
        "/api/keys", {"name": "desk", "priority": "interactive"}, content_type="application/json"
    )
    assert created.status_code == 201, created.content
    assert ApiKey.objects.get(name="desk").priority == "interactive"
    assert ApiKey.objects.get(name="desk").priority in [
        k["priority"] for k in client.get("/api/keys").json()
    ]


def test_it_rejects_malformed_json(alice):
    client = Client()
    client.force_login(alice)
    response = client.post("/api/keys", "{not json", content_type="application/json")
    assert response.status_code in (400, 422)
    assert "error" in response.json()


def test_it_answers_404_for_an_unknown_key(alice):
    client = Client()
    client.force_login(alice)
    response = client.delete("/api/keys/999")
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "key_id"

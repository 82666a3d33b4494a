"""API keys with roles, model lists and expiry: created by command and API, enforced."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from arbiter.models import ApiKey
from tests.conftest import grant

pytestmark = pytest.mark.django_db


def create(*args: str) -> tuple[str, ApiKey]:
    out = StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=StringIO())
    raw = out.getvalue().strip()
    return raw, ApiKey.objects.verify(raw)


def test_it_takes_role_models_and_expiry_from_the_command():
    raw, key = create("chat app", "--role", "inference", "--models", "qwen, llama,qwen")
    assert key.role == "inference" and key.allowed_models == ["qwen", "llama"]
    assert key.expires_at is None
    _raw, key = create("short", "--role", "admin", "--expires-in-days", "7")
    assert key.role == "admin"
    assert timedelta(days=6, hours=23) < key.expires_at - timezone.now() <= timedelta(days=7)
    _raw, key = create("default")
    assert key.role == "operator"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--role", "operator", "--models", "qwen"], "--models"),
        (["--expires-in-days", "0"], "--expires-in-days"),
        (["--expires-in-days", "3651"], "--expires-in-days"),
    ],
)
def test_it_refuses_bad_flags_to_the_command(args, words):
    with pytest.raises(CommandError, match=words):
        call_command("create_api_key", "x", *args, stdout=StringIO(), stderr=StringIO())
    assert not ApiKey.objects.exists()


def test_it_takes_the_same_fields_in_post_keys(admin_person):
    response = admin_person.post(
        "/api/keys",
        {"name": "chat app", "role": "inference", "models": ["qwen"], "expires_in_days": 30},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["role"] == "inference" and body["models"] == ["qwen"]
    assert body["expires_at"] is not None
    key = ApiKey.objects.verify(body["key"])
    assert key.role == "inference" and key.allowed_models == ["qwen"]
    listed = admin_person.get("/api/keys").json()[0]
    assert {listed["role"], tuple(listed["models"])} == {"inference", ("qwen",)}
    assert "key" not in listed

    default = admin_person.post("/api/keys", {"name": "ci"}, content_type="application/json")
    assert default.json()["role"] == "operator" and default.json()["expires_at"] is None


@pytest.mark.parametrize(
    "data, field",
    [
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "x", "role": "operator", "models": ["qwen"]}, "models"),
        ({"name": "x", "models": ["qwen"]}, "models"),  # the default role is operator
        ({"name": "x", "role": "inference", "models": [" "]}, "models"),
        ({"name": "x", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "x", "expires_in_days": 3651}, "expires_in_days"),
    ],
)
def test_it_names_the_bad_field_in_post_keys(admin_person, data, field):
    response = admin_person.post("/api/keys", data, content_type="application/json")
    assert response.status_code == 422, response.content
    assert response.json()["error"]["field"] == field
    assert not ApiKey.objects.exists()


def test_it_lets_only_an_admin_person_manage_keys(bob, admin_key):
    client = Client()
    client.force_login(grant(bob, "operator"))
    refused = client.post("/api/keys", {"name": "x"}, content_type="application/json")
    assert refused.status_code == 403
    assert "user 'bob' has role operator" in refused.json()["error"]["message"]
    by_key = Client(headers={"Authorization": f"Bearer {admin_key}"})
    refused = by_key.post("/api/keys", {"name": "x"}, content_type="application/json")
    assert refused.status_code == 403
    assert "never done with a key" in refused.json()["error"]["message"]
    assert ApiKey.objects.count() == 1  # the admin key itself


def test_it_no_longer_authenticates_an_expired_key(settings):
    settings.ARBITER_ANONYMOUS_READS = False
    key, raw = ApiKey.objects.create_key(name="old", expires_at=timezone.now() + timedelta(hours=1))
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    assert client.get("/api/status").status_code == 200
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ApiKey.objects.verify(raw) is None
    assert client.get("/api/status").status_code == 401


def test_it_lets_an_inference_key_read_but_write_nothing():
    _key, raw = ApiKey.objects.create_key(name="chat app", role="inference")
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    assert client.get("/api/status").status_code == 200
    refused = client.post("/api/swap", {"model": "x"}, content_type="application/json")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["type"] == "forbidden"
    assert error["message"] == "this needs the operator role; key 'chat app' has role inference"


def test_it_refuses_the_catalog_form_to_a_viewer(bob):
    client = Client()
    client.force_login(bob)
    response = client.post("/catalog/add/hub", {"hub-key": "x"})
    assert response.status_code == 403
    client.force_login(grant(bob, "operator"))
    assert client.post("/catalog/add/hub", {"hub-key": "x"}).status_code == 422

"""Authentication on the API: keys, sessions with CSRF, anonymous reads."""

import pytest
from django.test import Client, override_settings

from arbiter.models import ApiKey

pytestmark = pytest.mark.django_db


def test_it_refuses_anonymous_status():
    response = Client().get("/api/status")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_accepts_a_bearer_key(key_client):
    response = key_client.get("/api/status")
    assert response.status_code == 200
    body = response.json()
    assert (body["hosts"], body["services"], body["swaps"]) == ([], [], [])
    assert body["lock"]["held"] is False


def test_it_records_when_a_key_was_last_used(key_client, api_key):
    key_client.get("/api/status")
    assert ApiKey.objects.verify(api_key).last_used_at is not None


def test_it_writes_the_last_use_at_most_once_a_minute(key_client, api_key):
    """Not one database write per API call (bounded data, issue 17)."""
    from datetime import timedelta

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    key_client.get("/api/status")
    first = ApiKey.objects.verify(api_key).last_used_at
    with CaptureQueriesContext(connection) as queries:
        key_client.get("/api/status")
    assert not [q for q in queries if "last_used_at" in q["sql"] and "UPDATE" in q["sql"]]
    assert ApiKey.objects.verify(api_key).last_used_at == first
    # A minute later the next call records it again.
    ApiKey.objects.filter(last_used_at=first).update(last_used_at=first - timedelta(seconds=61))
    key_client.get("/api/status")
    assert ApiKey.objects.verify(api_key).last_used_at > first - timedelta(seconds=61)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer arb_nope_nope",
        "Bearer ",
        "Bearer garbage",
        "Basic dXNlcjpwYXNz",
        "arb_12345678_x",
    ],
)
def test_it_refuses_bad_credentials(header):
    response = Client(headers={"Authorization": header}).get("/api/status")
    assert response.status_code == 401


def test_it_refuses_a_revoked_key(api_key, key_client):
    ApiKey.objects.update(revoked_at="2026-01-01T00:00:00Z")
    assert key_client.get("/api/status").status_code == 401


def test_it_refuses_a_key_with_the_right_prefix_but_wrong_secret(api_key):
    forged = api_key[:-4] + ("AAAA" if not api_key.endswith("AAAA") else "BBBB")
    response = Client(headers={"Authorization": f"Bearer {forged}"}).get("/api/status")
    assert response.status_code == 401


def test_it_accepts_a_logged_in_session_for_reads(bob):
    client = Client()
    client.force_login(bob)
    assert client.get("/api/status").status_code == 200


def test_it_requires_csrf_for_session_writes(alice, csrf_client):
    csrf_client.force_login(alice)
    response = csrf_client.post("/api/keys", {"name": "x"}, content_type="application/json")
    assert response.status_code == 403
    assert not ApiKey.objects.exists()


def test_it_accepts_session_writes_with_the_csrf_token(alice, csrf_client):
    csrf_client.force_login(alice)
    csrf_client.get("/")  # the page sets the CSRF cookie
    token = csrf_client.cookies["csrftoken"].value
    response = csrf_client.post(
        "/api/keys", {"name": "x"}, content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert response.status_code == 201


def test_it_needs_no_csrf_with_a_bearer_key(alice, api_key):
    client = Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {api_key}"})
    # The key is accepted (no 401/CSRF 403); key management itself wants a staff person.
    response = client.post("/api/keys", {"name": "x"}, content_type="application/json")
    assert response.status_code == 403
    assert "managing API keys is never done with a key" in response.json()["error"]["message"]


@override_settings(ARBITER_ANONYMOUS_READS=True)
def test_it_allows_anonymous_reads_when_enabled():
    assert Client().get("/api/status").status_code == 200
    assert Client().get("/api/endpoints").status_code == 200


@override_settings(ARBITER_ANONYMOUS_READS=True)
def test_it_still_refuses_anonymous_writes_when_reads_are_open(csrf_client):
    response = csrf_client.post("/api/keys", {"name": "x"}, content_type="application/json")
    assert response.status_code in (401, 403)
    assert not ApiKey.objects.exists()


def test_it_answers_401_not_a_csrf_error_for_a_wrong_key_on_a_write(csrf_client):
    client = Client(enforce_csrf_checks=True, headers={"Authorization": "Bearer arb_0000_x"})
    response = client.post("/api/keys", {"name": "x"}, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"

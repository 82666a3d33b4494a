"""The webhook API: endpoints, secrets shown once, validation, deliveries, redelivery."""

import base64
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from standardwebhooks import Webhook

from coordination import webhooks
from coordination.models import WebhookDelivery, WebhookEndpoint
from coordination.webhooks.secrets_box import secret_key_bytes
from tests.conftest import grant
from tests.coordination.test_webhook_receiver import Receiver, Reply, make_endpoint

pytestmark = pytest.mark.django_db

GOOD_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def post(client: Client, path: str, data=None):
    return client.post(path, data if data is not None else {}, content_type="application/json")


def emit(event_type="swap_complete", payload=None):
    from django.db import transaction

    with transaction.atomic():
        return webhooks.emit_event(event_type, payload or {"swap_id": 1})


def test_it_creates_an_endpoint_and_shows_the_secret_once(admin_key_client):
    response = post(
        admin_key_client,
        "/api/webhooks",
        {"url": "https://hooks.example.com/arbiter", "events": ["swap_failed"]},
    )
    assert response.status_code == 201
    body = response.json()
    secret = body["secret"]
    assert secret.startswith("whsec_") and len(secret_key_bytes(secret)) == 32
    assert body["url"] == "https://hooks.example.com/arbiter"
    assert body["events"] == ["swap_failed"]
    assert body["enabled"] is True
    assert body["previous_secret_expires_at"] is None

    listed = admin_key_client.get("/api/webhooks")
    assert listed.status_code == 200
    assert [e["id"] for e in listed.json()] == [body["id"]]
    assert "secret" not in listed.json()[0]
    assert secret.removeprefix("whsec_") not in listed.content.decode()

    again = post(
        admin_key_client, "/api/webhooks", {"url": "http://hooks.example.net:9000/hook"}
    ).json()
    assert again["secret"] != secret
    assert again["events"] == []  # every event


def test_it_keeps_a_given_secret_and_signs_with_it(admin_key_client):
    with Receiver() as receiver:
        response = post(
            admin_key_client, "/api/webhooks", {"url": receiver.url, "secret": GOOD_SECRET}
        )
        assert response.json()["secret"] == GOOD_SECRET
        delivery = WebhookDelivery.objects.get(event=emit())
        webhooks.attempt_delivery(delivery.pk)
    request = receiver.requests[0]
    assert Webhook(GOOD_SECRET).verify(request.body, request.headers)["data"] == {"swap_id": 1}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"url": "ftp://files.example.com/x"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": ""}, "url"),
        ({"url": "https://exa mple.com/"}, "url"),
        ({"url": "http://example.com:99999/"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": 5}, "url"),
        ({}, "url"),
        ({"url": "http://x.example/", "events": ["swap_started"]}, "events"),
        ({"url": "http://x.example/", "events": "swap_complete"}, "events"),
        ({"url": "http://x.example/", "events": [1]}, "events.0"),
        ({"url": "http://x.example/", "secret": "hunter2-hunter2-hunter2"}, "secret"),
        ({"url": "http://x.example/", "secret": "whsec_!!!not-base64!!!"}, "secret"),
        (
            {"url": "http://x.example/", "secret": "whsec_" + base64.b64encode(b"s" * 8).decode()},
            "secret",
        ),
        ({"url": "http://x.example/", "description": "d" * 201}, "description"),
        ({"url": "http://x.example/", "colour": "blue"}, "colour"),
    ],
)
def test_it_rejects_bad_input_naming_the_field(admin_key_client, data, field):
    response = post(admin_key_client, "/api/webhooks", data)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["field"] == field
    assert not WebhookEndpoint.objects.exists()
    secret = data.get("secret")
    if isinstance(secret, str):
        assert secret not in response.content.decode()


def test_it_rejects_a_body_that_is_not_json(admin_key_client):
    response = admin_key_client.post("/api/webhooks", "url=x", content_type="application/json")
    assert response.status_code in (400, 422)
    assert not WebhookEndpoint.objects.exists()


def test_it_lets_only_admins_change_endpoints(alice, bob, api_key, settings):
    staff = Client()
    staff.force_login(alice)
    assert post(staff, "/api/webhooks", {"url": "http://a.example/"}).status_code == 201

    viewer = Client()
    viewer.force_login(bob)
    assert viewer.get("/api/webhooks").status_code == 403  # reading them needs an operator
    grant(bob, "operator")
    watcher = Client()
    watcher.force_login(bob)
    refused = post(watcher, "/api/webhooks", {"url": "http://b.example/"})
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "forbidden"
    assert "needs the admin role" in refused.json()["error"]["message"]
    endpoint = WebhookEndpoint.objects.get()
    assert watcher.delete(f"/api/webhooks/{endpoint.pk}").status_code == 403
    assert post(watcher, f"/api/webhooks/{endpoint.pk}/rotate").status_code == 403
    assert watcher.get("/api/webhooks").status_code == 200

    operator_key = Client(headers={"Authorization": f"Bearer {api_key}"})
    assert post(operator_key, "/api/webhooks", {"url": "http://d.example/"}).status_code == 403
    assert operator_key.get("/api/webhooks").status_code == 200

    assert post(Client(), "/api/webhooks", {"url": "http://c.example/"}).status_code == 401
    settings.ARBITER_ANONYMOUS_READS = True
    assert Client().get("/api/webhooks").status_code == 403
    assert WebhookEndpoint.objects.count() == 1


def test_it_deletes_an_endpoint_with_its_deliveries(admin_key_client):
    endpoint, _ = make_endpoint("http://127.0.0.1:9/hook")
    emit()
    assert admin_key_client.delete(f"/api/webhooks/{endpoint.pk}").status_code == 204
    assert not WebhookEndpoint.objects.exists()
    assert not WebhookDelivery.objects.exists()
    missing = admin_key_client.delete(f"/api/webhooks/{endpoint.pk}")
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "webhook_id"


def test_it_rotates_a_secret_keeping_the_previous_for_24_hours(admin_key_client):
    endpoint, old_secret = make_endpoint("http://127.0.0.1:9/hook")
    response = post(admin_key_client, f"/api/webhooks/{endpoint.pk}/rotate")
    assert response.status_code == 200
    body = response.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != old_secret
    endpoint.refresh_from_db()
    assert webhooks.signing_secrets(endpoint) == [body["secret"], old_secret]
    left = endpoint.previous_secret_expires_at - timezone.now()
    assert timedelta(hours=23, minutes=59) < left <= timedelta(hours=24)
    listed = admin_key_client.get("/api/webhooks").json()[0]
    assert listed["previous_secret_expires_at"] is not None
    assert body["secret"] not in admin_key_client.get("/api/webhooks").content.decode()


def test_it_rotates_to_a_given_secret_for_a_given_overlap(admin_key_client):
    endpoint, old_secret = make_endpoint("http://127.0.0.1:9/hook")
    response = post(
        admin_key_client,
        f"/api/webhooks/{endpoint.pk}/rotate",
        {"secret": GOOD_SECRET, "previous_valid_hours": 2},
    )
    assert response.json()["secret"] == GOOD_SECRET
    endpoint.refresh_from_db()
    left = endpoint.previous_secret_expires_at - timezone.now()
    assert timedelta(hours=1, minutes=59) < left <= timedelta(hours=2)

    post(admin_key_client, f"/api/webhooks/{endpoint.pk}/rotate", {"previous_valid_hours": 0})
    endpoint.refresh_from_db()
    assert len(webhooks.signing_secrets(endpoint)) == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"previous_valid_hours": -1}, "previous_valid_hours"),
        ({"previous_valid_hours": 721}, "previous_valid_hours"),
        ({"previous_valid_hours": "soon"}, "previous_valid_hours"),
        ({"secret": "whsec_tooshort"}, "secret"),
        ({"secret": ""}, "secret"),
    ],
)
def test_it_rejects_a_bad_rotation(admin_key_client, data, field):
    endpoint, old_secret = make_endpoint("http://127.0.0.1:9/hook")
    response = post(admin_key_client, f"/api/webhooks/{endpoint.pk}/rotate", data)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    endpoint.refresh_from_db()
    assert webhooks.signing_secrets(endpoint) == [old_secret]


def test_it_answers_404_for_an_unknown_webhook(admin_key_client):
    assert post(admin_key_client, "/api/webhooks/999/rotate").status_code == 404
    assert admin_key_client.get("/api/webhooks/999/deliveries").status_code == 404
    assert post(admin_key_client, "/api/webhooks/deliveries/999/redeliver").status_code == 404


def test_it_lists_deliveries_with_every_attempt(admin_key_client):
    with Receiver(Reply(503, body=b"warming up"), 200) as receiver:
        endpoint, _ = make_endpoint(receiver.url)
        event = emit()
        delivery = WebhookDelivery.objects.get(event=event)
        now = timezone.now()
        webhooks.attempt_delivery(delivery.pk, now=now)
        webhooks.attempt_delivery(delivery.pk, now=now + timedelta(seconds=5))
    response = admin_key_client.get(f"/api/webhooks/{endpoint.pk}/deliveries")
    assert response.status_code == 200
    [listed] = response.json()
    assert listed["event_id"] == event.event_id
    assert listed["event_type"] == "swap_complete"
    assert (listed["status"], listed["attempts"], listed["last_status_code"]) == (
        "delivered",
        2,
        200,
    )
    assert listed["next_attempt_at"] is None
    assert [a["status_code"] for a in listed["attempt_log"]] == [503, 200]
    assert [a["response_excerpt"] for a in listed["attempt_log"]] == ["warming up", "ok"]
    assert all(a["latency_ms"] >= 0 and a["at"] for a in listed["attempt_log"])

    bad_limit = admin_key_client.get(f"/api/webhooks/{endpoint.pk}/deliveries?limit=0")
    assert bad_limit.status_code == 422
    assert bad_limit.json()["error"]["field"] == "limit"


def test_it_redelivers_the_same_event_with_the_same_id(
    admin_key_client, django_capture_on_commit_callbacks
):
    with Receiver() as receiver:
        endpoint, secret = make_endpoint(receiver.url)
        event = emit()
        delivery = WebhookDelivery.objects.get(event=event)
        webhooks.attempt_delivery(delivery.pk)

        with django_capture_on_commit_callbacks() as callbacks:
            response = post(admin_key_client, f"/api/webhooks/deliveries/{delivery.pk}/redeliver")
        assert response.status_code == 202
        assert response.json()["event_id"] == event.event_id
        assert response.json()["status"] == "pending"
        assert callbacks == [webhooks.wake_workers]  # huey is asked once it commits
        webhooks.attempt_delivery(delivery.pk)

    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event.event_id
    assert first.body == second.body
    Webhook(secret).verify(second.body, second.headers)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.attempt_log.count()) == (
        "delivered",
        1,
        2,
    )


def test_it_refuses_redeliver_for_a_disabled_endpoint(admin_key_client):
    with Receiver(410) as receiver:
        make_endpoint(receiver.url)
        delivery = WebhookDelivery.objects.get(event=emit())
        webhooks.attempt_delivery(delivery.pk)
    response = post(admin_key_client, f"/api/webhooks/deliveries/{delivery.pk}/redeliver")
    assert response.status_code == 409
    assert "disabled" in response.json()["error"]["message"]

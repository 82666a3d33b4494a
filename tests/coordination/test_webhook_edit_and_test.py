"""Editing an endpoint (PATCH /api/webhooks/{id}) and sending it one test event
(POST /api/webhooks/{id}/test): issue 13, item 7. Real receivers, real database."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from standardwebhooks import Webhook

from arbiter.models import AuditEvent
from coordination.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint
from tests.conftest import grant
from tests.coordination.test_webhook_api import GOOD_SECRET
from tests.coordination.test_webhook_receiver import Receiver, Reply, make_endpoint

pytestmark = pytest.mark.django_db


def patch(client: Client, path: str, data) -> object:
    return client.patch(path, json.dumps(data), content_type="application/json")


def row(endpoint: WebhookEndpoint) -> dict:
    """Everything an edit could touch, to compare before and after a refused one."""
    endpoint.refresh_from_db()
    return {
        name: getattr(endpoint, name)
        for name in ("url", "description", "events", "enabled", "disabled_reason")
    }


@pytest.fixture
def endpoint() -> WebhookEndpoint:
    created, _ = make_endpoint(
        "https://hooks.example.com/a", events=["swap_failed"], description="ops"
    )
    return created


# -- edit -------------------------------------------------------------------------------


def test_it_edits_every_field_and_audits_what_changed(admin_key_client, endpoint):
    response = patch(
        admin_key_client,
        f"/api/webhooks/{endpoint.pk}",
        {
            "url": "https://hooks.example.net/b",
            "description": "  on-call pager ",
            "events": ["swap_complete", "lock.force_released", "swap_complete"],
            "enabled": False,
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["url"] == "https://hooks.example.net/b"
    assert body["description"] == "on-call pager"
    assert body["events"] == ["swap_complete", "lock.force_released"]
    assert body["enabled"] is False
    assert "secret" not in body
    assert row(endpoint) == {
        "url": "https://hooks.example.net/b",
        "description": "on-call pager",
        "events": ["swap_complete", "lock.force_released"],
        "enabled": False,
        "disabled_reason": "",
    }
    entry = AuditEvent.objects.get(action="webhook.update")
    assert (entry.object_type, entry.object_id) == ("webhook", str(endpoint.pk))
    assert entry.actor_name == "admin automation"
    assert entry.before == {
        "url": "https://hooks.example.com/a",
        "description": "ops",
        "events": ["swap_failed"],
        "enabled": True,
    }
    assert entry.after == {
        "url": "https://hooks.example.net/b",
        "description": "on-call pager",
        "events": ["swap_complete", "lock.force_released"],
        "enabled": False,
    }


def test_it_changes_only_the_fields_given(admin_key_client, endpoint):
    response = patch(admin_key_client, f"/api/webhooks/{endpoint.pk}", {"description": "new"})
    assert response.status_code == 200
    assert row(endpoint)["url"] == "https://hooks.example.com/a"
    assert row(endpoint)["events"] == ["swap_failed"]
    entry = AuditEvent.objects.get(action="webhook.update")
    assert (entry.before, entry.after) == ({"description": "ops"}, {"description": "new"})

    # The same value again changes nothing, so nothing is audited.
    assert (
        patch(admin_key_client, f"/api/webhooks/{endpoint.pk}", {"description": "new"}).status_code
        == 200
    )
    assert AuditEvent.objects.filter(action="webhook.update").count() == 1


def test_it_clears_the_disabled_reason_on_re_enabling(admin_key_client, endpoint):
    reason = "the receiver answered 410 Gone at 2026-01-01 00:00:00 UTC"
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False, disabled_reason=reason)
    response = patch(admin_key_client, f"/api/webhooks/{endpoint.pk}", {"enabled": True})
    assert response.status_code == 200
    assert response.json()["disabled_reason"] == ""
    assert row(endpoint)["enabled"] is True and row(endpoint)["disabled_reason"] == ""
    entry = AuditEvent.objects.get(action="webhook.update")
    assert entry.before == {"enabled": False, "disabled_reason": reason}
    assert entry.after == {"enabled": True, "disabled_reason": ""}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"url": "ftp://files.example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": ""}, "url"),
        ({"url": "http://example.com:99999/"}, "url"),
        ({"url": 5}, "url"),
        ({"url": None}, "url"),
        ({"url": "http://x.example/" + "a" * 1000}, "url"),
        ({"events": ["swap_started"]}, "events"),
        ({"events": "swap_complete"}, "events"),
        ({"events": [1]}, "events.0"),
        ({"events": None}, "events"),
        ({"description": "d" * 201}, "description"),
        ({"description": None}, "description"),
        ({"description": 3}, "description"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"enabled": None}, "enabled"),
        ({"secret": GOOD_SECRET}, "secret"),  # rotation has its own route
        ({"colour": "blue"}, "colour"),
        # One bad field among good ones: none of them is written.
        ({"description": "fine", "enabled": False, "events": ["nope"]}, "events"),
        ({"description": "fine", "url": "http://169.254.169.254/latest/"}, "url"),
    ],
)
def test_it_rejects_bad_fields_naming_them_and_writes_nothing(
    admin_key_client, endpoint, data, field
):
    before = row(endpoint)
    response = patch(admin_key_client, f"/api/webhooks/{endpoint.pk}", data)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["field"] == field
    assert row(endpoint) == before
    assert not AuditEvent.objects.filter(action="webhook.update").exists()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://10.1.2.3/hook", "10.1.2.3 is a private"),
        ("http://[::1]:8080/hook", "::1 is a"),
    ],
)
def test_it_refuses_an_edit_to_an_internal_url(admin_key_client, endpoint, url, words):
    # 127.0.0.0/8 is allowed for these tests (conftest): other internal networks are not.
    response = patch(admin_key_client, f"/api/webhooks/{endpoint.pk}", {"url": url})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "url"
    assert words in error["message"]
    assert row(endpoint)["url"] == "https://hooks.example.com/a"


def test_it_lets_an_edit_to_loopback_follow_allow_networks(admin_key_client, endpoint, settings):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = []
    refused = patch(
        admin_key_client, f"/api/webhooks/{endpoint.pk}", {"url": "http://127.0.0.1:9/"}
    )
    assert refused.status_code == 422
    assert "ARBITER_WEBHOOK_ALLOW_NETWORKS" in refused.json()["error"]["message"]
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["127.0.0.0/8"]
    allowed = patch(
        admin_key_client, f"/api/webhooks/{endpoint.pk}", {"url": "http://127.0.0.1:9/"}
    )
    assert allowed.status_code == 200
    assert row(endpoint)["url"] == "http://127.0.0.1:9/"


def test_it_answers_404_for_an_unknown_endpoint(admin_key_client):
    assert patch(admin_key_client, "/api/webhooks/999", {"description": "x"}).status_code == 404
    response = admin_key_client.post("/api/webhooks/999/test")
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "webhook_id"


def test_it_lets_only_admins_edit_and_test(alice, bob, api_key, endpoint):
    operator_key = Client(headers={"Authorization": f"Bearer {api_key}"})
    grant(bob, "operator")
    operator = Client()
    operator.force_login(bob)
    with Receiver() as receiver:
        endpoint.url = receiver.url
        endpoint.save()
        for client in (operator_key, operator):
            refused = patch(client, f"/api/webhooks/{endpoint.pk}", {"description": "mine"})
            assert refused.status_code == 403
            assert client.post(f"/api/webhooks/{endpoint.pk}/test").status_code == 403
        assert (
            patch(Client(), f"/api/webhooks/{endpoint.pk}", {"description": "x"}).status_code == 401
        )
        assert Client().post(f"/api/webhooks/{endpoint.pk}/test").status_code == 401
        time_ok = receiver.wait_for(1, timeout=0.2)
    assert time_ok == []  # nothing was sent
    assert row(endpoint)["description"] == "ops"
    assert not WebhookDelivery.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="webhook.").exists()

    staff = Client()
    staff.force_login(alice)
    assert (
        patch(staff, f"/api/webhooks/{endpoint.pk}", {"description": "alice's"}).status_code == 200
    )
    assert AuditEvent.objects.get(action="webhook.update").actor_name == "alice"


# -- test send --------------------------------------------------------------------------


def test_it_signs_a_test_send_with_the_endpoints_secret(admin_key_client):
    with Receiver(Reply(status=202, body=b"thanks, got it")) as receiver:
        endpoint, _ = make_endpoint(receiver.url, secret=GOOD_SECRET, events=["swap_failed"])
        response = admin_key_client.post(f"/api/webhooks/{endpoint.pk}/test")
    assert response.status_code == 200, response.content
    result = response.json()
    assert result["ok"] is True
    assert result["status_code"] == 202
    assert result["error"] == ""
    assert result["response_excerpt"] == "thanks, got it"
    assert 0 <= result["duration_ms"] < 10_000

    [request] = receiver.requests  # exactly one request, to this endpoint
    assert request.headers["webhook-id"] == result["event_id"]
    sent = Webhook(GOOD_SECRET).verify(request.body, request.headers)
    assert sent["type"] == "webhook.test"
    assert sent["data"]["webhook_id"] == endpoint.pk

    # Logged like any delivery (the event filter does not apply to a test), and final:
    # no worker will send it again.
    delivery = WebhookDelivery.objects.select_related("event").get(pk=result["delivery_id"])
    assert (delivery.endpoint_id, delivery.event.event_id) == (endpoint.pk, result["event_id"])
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 202)
    assert delivery.attempt_log.get().response_excerpt == "thanks, got it"
    listed = admin_key_client.get(f"/api/webhooks/{endpoint.pk}/deliveries").json()
    assert [d["event_type"] for d in listed] == ["webhook.test"]

    entry = AuditEvent.objects.get(action="webhook.test")
    assert (entry.object_type, entry.object_id) == ("webhook", str(endpoint.pk))
    assert entry.after == {
        "ok": True,
        "status_code": 202,
        "error": "",
        "event_id": result["event_id"],
    }


def test_it_reports_a_500_to_a_test_send_and_does_not_retry_it(admin_key_client):
    with Receiver(Reply(status=500, body=b"boom " * 400)) as receiver:
        endpoint, _ = make_endpoint(receiver.url)
        response = admin_key_client.post(f"/api/webhooks/{endpoint.pk}/test")
        assert len(receiver.requests) == 1
    result = response.json()
    assert response.status_code == 200
    assert result["ok"] is False
    assert result["status_code"] == 500
    assert result["response_excerpt"].startswith("boom boom")
    assert len(result["response_excerpt"]) == 500  # capped
    delivery = WebhookDelivery.objects.get(pk=result["delivery_id"])
    assert delivery.status == "failed" and delivery.locked_until is None
    endpoint.refresh_from_db()
    assert endpoint.enabled  # a test never disables the endpoint


def test_it_does_not_disable_the_endpoint_on_a_410_to_a_test(admin_key_client):
    with Receiver(410) as receiver:
        endpoint, _ = make_endpoint(receiver.url)
        result = admin_key_client.post(f"/api/webhooks/{endpoint.pk}/test").json()
    assert (result["ok"], result["status_code"]) == (False, 410)
    assert row(endpoint)["enabled"] is True


def test_it_refuses_a_test_to_an_internal_address_at_connect(admin_key_client, settings):
    with Receiver() as receiver:
        endpoint, _ = make_endpoint(receiver.url)  # allowed while 127.0.0.0/8 was
        settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = []
        response = admin_key_client.post(f"/api/webhooks/{endpoint.pk}/test")
        assert receiver.wait_for(1, timeout=0.2) == []
    assert response.status_code == 200
    result = response.json()
    assert result["ok"] is False and result["status_code"] is None
    assert result["error"].startswith("not sent: ")
    assert "127.0.0.1 is a loopback address" in result["error"]
    attempt = DeliveryAttempt.objects.get(delivery_id=result["delivery_id"])
    assert attempt.error == result["error"]


def test_it_reports_the_connection_error_of_a_test_to_a_dead_receiver(admin_key_client):
    with Receiver() as receiver:
        url = receiver.url
    endpoint, _ = make_endpoint(url)  # nothing listens there any more
    result = admin_key_client.post(f"/api/webhooks/{endpoint.pk}/test").json()
    assert result["ok"] is False and result["status_code"] is None
    assert "ConnectError" in result["error"]


def test_it_can_test_a_disabled_endpoint_before_re_enabling(admin_key_client):
    with Receiver() as receiver:
        endpoint, _ = make_endpoint(receiver.url)
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False)
        result = admin_key_client.post(f"/api/webhooks/{endpoint.pk}/test").json()
        assert len(receiver.requests) == 1
    assert result["ok"] is True
    assert row(endpoint)["enabled"] is False


# -- the dashboard's controls -----------------------------------------------------------


def test_it_gives_admins_edit_and_test_on_the_webhooks_page_and_operators_neither(
    alice, bob, endpoint
):
    admin = Client()
    admin.force_login(alice)
    page = admin.get("/webhooks/").content.decode()
    assert f'id="webhook-{endpoint.pk}-edit"' in page
    assert f'hx-post="/actions/webhooks/{endpoint.pk}/edit"' in page  # dashboard/actions.py
    assert 'value="https://hooks.example.com/a"' in page
    assert 'value="ops"' in page
    assert 'value="swap_failed" checked' in page
    assert 'value="swap_complete" checked' not in page
    assert f'hx-post="/actions/webhooks/{endpoint.pk}/test"' in page

    grant(bob, "operator")
    operator = Client()
    operator.force_login(bob)
    for path in ("/webhooks/", "/fragments/webhooks"):
        html = operator.get(path).content.decode()
        assert "https://hooks.example.com/a" in html  # operators read the endpoint
        assert "webhook-edit" not in html and "webhook-test" not in html

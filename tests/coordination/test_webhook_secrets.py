"""Webhook secrets: encrypted at rest, never in a log line, a response or an attempt."""

import base64
import logging

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from coordination import webhooks
from coordination.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint
from coordination.webhooks import secrets_box
from coordination.webhooks.secrets_box import secret_key_bytes
from tests.coordination.test_webhook_receiver import Receiver, Reply, make_endpoint

pytestmark = pytest.mark.django_db

GIVEN_SECRET = "whsec_" + base64.b64encode(b"correct horse battery staple!!!!").decode()


def emit(event_type="swap_complete"):
    with transaction.atomic():
        return webhooks.emit_event(event_type, {"swap_id": 3})


def forms_of(secret: str) -> list[str]:
    """The ways a secret could leak: as given, its base64 part, its key bytes."""
    key = secret_key_bytes(secret)
    return [secret, secret.removeprefix("whsec_"), key.hex(), repr(key)]


def stored_columns() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT url, description, secret_encrypted, previous_secret_encrypted "
            "FROM coordination_webhookendpoint"
        )
        return [str(value) for row in cursor.fetchall() for value in row]


def test_it_stores_secrets_encrypted(admin_key_client):
    response = admin_key_client.post(
        "/api/webhooks",
        {"url": "http://127.0.0.1:9/hook", "secret": GIVEN_SECRET},
        content_type="application/json",
    )
    endpoint = WebhookEndpoint.objects.get(pk=response.json()["id"])
    rotated = admin_key_client.post(
        f"/api/webhooks/{endpoint.pk}/rotate", {}, content_type="application/json"
    ).json()["secret"]

    columns = stored_columns()
    for secret in (GIVEN_SECRET, rotated):
        for form in forms_of(secret):
            assert not any(form in value for value in columns)
    endpoint.refresh_from_db()
    assert secrets_box.decrypt_secret(endpoint.previous_secret_encrypted) == GIVEN_SECRET
    assert secrets_box.decrypt_secret(endpoint.secret_encrypted) == rotated


def test_it_derives_the_key_from_secret_key_when_none_is_configured(settings):
    settings.ARBITER_WEBHOOK_KEY = ""
    token = secrets_box.encrypt_secret(GIVEN_SECRET)
    assert secrets_box.decrypt_secret(token) == GIVEN_SECRET
    settings.SECRET_KEY = "a different secret key for this instance"
    with pytest.raises(secrets_box.SecretUnreadable) as excinfo:
        secrets_box.decrypt_secret(token)
    assert "SECRET_KEY" in str(excinfo.value)
    assert GIVEN_SECRET not in str(excinfo.value) and token not in str(excinfo.value)


def test_it_uses_arbiter_webhook_key_and_accepts_a_list_for_key_rotation(settings):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ARBITER_WEBHOOK_KEY = old_key
    old_token = secrets_box.encrypt_secret(GIVEN_SECRET)
    assert Fernet(old_key).decrypt(old_token.encode()).decode() == GIVEN_SECRET

    settings.ARBITER_WEBHOOK_KEY = f"{new_key}, {old_key}"
    assert secrets_box.decrypt_secret(old_token) == GIVEN_SECRET
    new_token = secrets_box.encrypt_secret(GIVEN_SECRET)
    assert Fernet(new_key).decrypt(new_token.encode()).decode() == GIVEN_SECRET


def test_it_reports_a_malformed_key_as_a_configuration_error_without_echoing_it(settings):
    settings.ARBITER_WEBHOOK_KEY = "not-a-fernet-key-but-sensitive"
    with pytest.raises(ImproperlyConfigured) as excinfo:
        secrets_box.encrypt_secret(GIVEN_SECRET)
    assert "not-a-fernet-key" not in str(excinfo.value)


def test_it_fails_the_attempt_without_sending_when_the_secret_is_unreadable(settings):
    with Receiver() as receiver:
        make_endpoint(receiver.url, secret=GIVEN_SECRET)
        settings.SECRET_KEY = "rotated by an operator"
        delivery = WebhookDelivery.objects.get(event=emit())
        result = webhooks.attempt_delivery(delivery.pk)
    assert receiver.requests == []
    assert result.status == "pending"  # retried: restoring the key fixes it
    assert "cannot be decrypted" in delivery.attempt_log.get().error


def test_it_never_shows_secrets_in_logs_responses_or_attempts(admin_key_client, caplog):
    caplog.set_level(logging.DEBUG)
    with (
        Receiver(Reply(503, body=b"nope"), 200) as flaky,
        Receiver(Reply(410), default=500) as gone,
    ):
        created = admin_key_client.post(
            "/api/webhooks",
            {"url": flaky.url, "secret": GIVEN_SECRET},
            content_type="application/json",
        ).json()
        generated = admin_key_client.post(
            "/api/webhooks", {"url": gone.url}, content_type="application/json"
        ).json()["secret"]
        rotated = admin_key_client.post(
            f"/api/webhooks/{created['id']}/rotate", {}, content_type="application/json"
        ).json()["secret"]
        bad = admin_key_client.post(
            f"/api/webhooks/{created['id']}/rotate",
            {"secret": "whsec_" + base64.b64encode(b"short").decode()},
            content_type="application/json",
        )
        assert bad.status_code == 422
        event = emit()
        for delivery in WebhookDelivery.objects.filter(event=event):
            webhooks.attempt_delivery(delivery.pk)
        for delivery in WebhookDelivery.objects.filter(event=event, status="pending"):
            delivery.refresh_from_db()
            webhooks.attempt_delivery(delivery.pk, now=delivery.next_attempt_at)
        listing = admin_key_client.get("/api/webhooks").content.decode()
        deliveries = admin_key_client.get(
            f"/api/webhooks/{created['id']}/deliveries"
        ).content.decode()

    assert len(flaky.requests) == 2 and len(gone.requests) == 1
    assert "webhook" in caplog.text  # the flow did log
    attempts = " ".join(f"{a.error} {a.response_excerpt}" for a in DeliveryAttempt.objects.all())
    for secret in (GIVEN_SECRET, generated, rotated):
        for form in forms_of(secret):
            assert form not in caplog.text
            assert form not in listing
            assert form not in deliveries
            assert form not in attempts

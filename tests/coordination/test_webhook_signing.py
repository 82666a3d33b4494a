"""Signing: every delivered request verifies with the `standardwebhooks` package."""

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from coordination import webhooks
from coordination.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from coordination.webhooks.secrets_box import secret_key_bytes
from tests.coordination.test_webhook_receiver import Receiver, make_endpoint

pytestmark = pytest.mark.django_db

# JSON values a swap payload could carry: non-ASCII and emoji included. No NUL (PostgreSQL
# jsonb refuses it), no lone surrogates (not text; emit_event replaces them, tested below)
# and integers within what every JSON reader keeps exact.
json_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40
) | st.sampled_from(["Rīga", "数据", "🚀 swap ✨", "naïve café", "\u200b", "👩‍💻"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.dictionaries(json_text, json_values, max_size=6)


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as running:
        yield running


def deliver(event_type, payload, receiver):
    """Emit in a transaction, make the first attempt now, return the request received."""
    with transaction.atomic():
        event = webhooks.emit_event(event_type, payload)
    delivery = WebhookDelivery.objects.get(event=event)
    before = len(receiver.requests)
    result = webhooks.attempt_delivery(delivery.pk)
    assert result is not None and result.status == WebhookDelivery.DELIVERED
    assert len(receiver.requests) == before + 1
    return event, receiver.requests[-1]


def flip_one_byte(body: bytes, position: int) -> bytes:
    # Flip the lowest bit of an ASCII byte so the result is still valid UTF-8 (the verifier
    # decodes the body before checking it).
    ascii_positions = [i for i, b in enumerate(body) if b < 0x80]
    i = ascii_positions[position % len(ascii_positions)]
    return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(
    payload={"model": "🦙 Llama-3 ✨", "host": "spark-ā"}, event_type="swap_complete", position=3
)
@example(payload={}, event_type="lock.force_released", position=0)
@given(
    payload=payloads,
    event_type=st.sampled_from(webhooks.EVENT_TYPES),
    position=st.integers(0, 10_000),
)
def test_it_verifies_with_standardwebhooks_for_random_payloads(
    receiver, payload, event_type, position
):
    WebhookDelivery.objects.all().delete()
    WebhookEndpoint.objects.all().delete()
    _endpoint, secret = make_endpoint(receiver.url)
    event, request = deliver(event_type, payload, receiver)

    parsed = Webhook(secret).verify(request.body, request.headers)
    assert parsed["type"] == event_type
    # The same JSON value; numbers compared as decimals, since PostgreSQL's jsonb may
    # rewrite a float such as 1e+16 as 10000000000000000.
    assert json.loads(request.body, parse_float=Decimal)["data"] == json.loads(
        json.dumps(payload), parse_float=Decimal
    )
    assert request.headers["webhook-id"] == event.event_id
    assert request.headers["content-type"] == "application/json"
    # Non-ASCII travels as UTF-8, not as \u escapes.
    assert request.body.decode("utf-8") == webhooks.event_body(event).decode("utf-8")

    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(flip_one_byte(request.body, position), request.headers)
    _other, wrong_secret = make_endpoint(receiver.url)
    with pytest.raises(WebhookVerificationError):
        Webhook(wrong_secret).verify(request.body, request.headers)


def test_it_is_rejected_with_a_timestamp_older_than_the_tolerance(receiver):
    _endpoint, secret = make_endpoint(receiver.url)
    event, request = deliver("swap_complete", {"swap": 1}, receiver)
    stale = int(time.time()) - 6 * 60  # the verifier allows 5 minutes
    headers = webhooks.signature_headers(event.event_id, request.body, [secret], timestamp=stale)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(request.body, headers)
    # The same signature with a fresh timestamp passes: only the age was wrong.
    fresh = webhooks.signature_headers(
        event.event_id, request.body, [secret], timestamp=int(time.time())
    )
    Webhook(secret).verify(request.body, fresh)


def test_it_signs_the_id_timestamp_and_body_of_each_attempt(receiver):
    _endpoint, secret = make_endpoint(receiver.url)
    _event, request = deliver("swap_failed", {"error": "OOM"}, receiver)
    timestamp = int(request.headers["webhook-timestamp"])
    assert abs(timestamp - request.at) < 2
    signed = f"{request.headers['webhook-id']}.{timestamp}.".encode() + request.body
    key = secret_key_bytes(secret)
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    assert request.headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()


def test_it_sends_x_spark_signature_over_the_body_with_the_whole_secret(receiver):
    _endpoint, secret = make_endpoint(receiver.url)
    _event, request = deliver("swap_complete", {"model": "qwen3 ✨"}, receiver)
    expected = hmac.new(secret.encode("utf-8"), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-spark-signature"] == f"sha256={expected}"


def test_it_signs_with_both_secrets_while_a_secret_rotates(receiver):
    endpoint, old_secret = make_endpoint(receiver.url)
    new_secret = webhooks.rotate_secret(endpoint)
    assert new_secret != old_secret
    event, request = deliver("swap_complete", {"swap": 7}, receiver)

    signatures = request.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    Webhook(old_secret).verify(request.body, request.headers)
    Webhook(new_secret).verify(request.body, request.headers)
    # Each secret verifies alone: each signature is valid for exactly one of them.
    for secret, signature in ((new_secret, signatures[0]), (old_secret, signatures[1])):
        alone = {**request.headers, "webhook-signature": signature}
        Webhook(secret).verify(request.body, alone)
        other = old_secret if secret == new_secret else new_secret
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(request.body, alone)
    # The simple signature uses the current secret.
    simple = hmac.new(new_secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-spark-signature"] == f"sha256={simple}"

    endpoint.refresh_from_db()
    assert endpoint.previous_secret_expires_at - timezone.now() > timedelta(hours=23, minutes=59)


def test_it_stops_signing_with_the_previous_secret_once_it_expires(receiver):
    endpoint, old_secret = make_endpoint(receiver.url)
    new_secret = webhooks.rotate_secret(endpoint, previous_valid_hours=1)
    endpoint.refresh_from_db()
    assert len(webhooks.signing_secrets(endpoint)) == 2
    later = timezone.now() + timedelta(hours=1, seconds=1)
    assert webhooks.signing_secrets(endpoint, later) == [new_secret]

    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    _event, request = deliver("swap_complete", {"swap": 8}, receiver)
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    Webhook(new_secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old_secret).verify(request.body, request.headers)


def test_it_builds_the_body_once_per_event():
    with transaction.atomic():
        event = webhooks.emit_event(
            "lock.force_released", {"b": 1, "a": {"y": "ž", "x": [1.5, None]}}
        )
    stored = WebhookEvent.objects.get(pk=event.pk)
    body = webhooks.event_body(stored)
    assert body == webhooks.event_body(event)
    assert json.loads(body) == {
        "type": "lock.force_released",
        "timestamp": stored.created_at.isoformat().replace("+00:00", "Z"),
        "data": {"a": {"x": [1.5, None], "y": "ž"}, "b": 1},
    }
    assert body.startswith(b'{"type":"lock.force_released","timestamp":')


def test_it_replaces_lone_surrogates_so_the_body_is_utf8(receiver):
    _endpoint, secret = make_endpoint(receiver.url)
    _event, request = deliver("swap_failed", {"error": "bad byte \udcff here"}, receiver)
    parsed = Webhook(secret).verify(request.body, request.headers)
    assert parsed["data"]["error"].startswith("bad byte \ufffd")

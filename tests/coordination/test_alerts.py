"""Alerts: service and restart-policy events, and the chat delivery format.

The service events come from the real prober against a real HTTP backend that the
test turns down and up (host events: tests/engine/test_host_alerts.py, the real sampler
against the simulated cluster); chat messages are delivered to a real local receiver."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone

from arbiter import events
from arbiter.engine.probes import probe_services_once
from arbiter.models import Host, Service, Swap, SwapHost
from coordination import webhooks
from coordination.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from coordination.webhooks.chat import MESSAGES, chat_text
from tests.coordination.test_webhook_receiver import Receiver, make_endpoint

pytestmark = pytest.mark.django_db(transaction=True)


class Backend:
    """A health endpoint whose answer the test sets: 200, or 503 as a dying vLLM."""

    def __init__(self) -> None:
        self.status = 200
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self.send_response(backend.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def backend():
    running = Backend()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture
def service(backend) -> Service:
    host = Host.objects.create(name="gpu-1", address="127.0.0.1")
    return Service.objects.create(
        name="chat", host=host, kind=Service.KIND_HTTP, base_url=backend.url
    )


def probe() -> str:
    return async_to_sync(probe_services_once)()["chat"].health


def alerts() -> list[tuple[str, dict]]:
    rows = WebhookEvent.objects.exclude(event_type__startswith="swap_").order_by("pk")
    return [(e.event_type, e.payload) for e in rows]


def test_it_sends_service_down_and_recovered_when_a_served_service_flips(backend, service):
    assert probe() == "up"  # unknown → up: first sight, not news
    backend.status = 503
    assert probe() == "down"
    assert probe() == "down"  # still down: said once
    backend.status = 200
    assert probe() == "up"

    sent = alerts()
    assert [kind for kind, _ in sent] == ["service_down", "service_recovered"]
    down = sent[0][1]
    assert down["service"] == "chat" and down["host"] == "gpu-1"
    assert down["health"] == "down" and down["detail"] == "HTTP 503"
    assert down["base_url"] == backend.url and down["since"]
    assert sent[1][1]["health"] == "up"


def test_it_does_not_alert_for_a_service_never_seen_up(backend, service):
    backend.status = 503
    assert probe() == "down"
    backend.status = 200
    assert probe() == "up"
    assert alerts() == []


def test_it_does_not_alert_while_a_swap_works_on_the_host(backend, service):
    assert probe() == "up"
    swap = Swap.objects.create(
        model_key="m", host=service.host, service=service, state=Swap.STOPPING
    )
    SwapHost.objects.create(swap=swap, host=service.host, node_rank=0)
    backend.status = 503
    assert probe() == "down"
    Swap.objects.filter(pk=swap.pk).update(state=Swap.COMPLETE)
    SwapHost.objects.filter(swap=swap).update(active=False)
    backend.status = 200
    assert probe() == "up"
    assert alerts() == []  # no down, so no recovery either


def test_it_does_not_alert_for_a_service_the_broker_unloaded(backend, service):
    assert probe() == "up"
    Service.objects.filter(pk=service.pk).update(unloaded_at=timezone.now())
    backend.status = 503
    assert probe() == "down"
    assert alerts() == []


def test_it_does_not_alert_for_a_disabled_service(backend, service):
    assert probe() == "up"
    Service.objects.filter(pk=service.pk).update(disabled=True)
    backend.status = 503
    assert async_to_sync(probe_services_once)() == {}  # not contacted at all
    assert Service.objects.get(pk=service.pk).health == "up"  # its last probed health
    assert alerts() == []


def test_it_sends_restart_gave_up_with_the_reason(service):
    with transaction.atomic():
        Service.objects.filter(pk=service.pk).update(
            failed_reason="m crashed 3 times", failed_at=timezone.now()
        )
        events.restart_gave_up.send(
            Service,
            service_id=service.pk,
            swap_id=None,
            model_key="m",
            host_id=service.host_id,
            reason="m crashed 3 times",
        )
    [(kind, payload)] = alerts()
    assert kind == "restart_gave_up"
    assert payload["service"] == "chat" and payload["model"] == "m"
    assert payload["reason"] == "m crashed 3 times" and payload["failed_at"]


SAMPLE_PAYLOADS = {
    "swap_complete": {"swap_id": 7, "model": "qwen", "host": "spark-1", "kind": "swap"},
    "swap_failed": {"swap_id": 8, "model": "qwen", "host": "spark-1", "error": "load: boom"},
    "lock.force_released": {"old_holder": "nightly", "actor": "alice", "reason": "stuck"},
    "lease.force_released": {
        "model": "qwen",
        "host": "spark-1",
        "old_holder": "eval",
        "actor": "bob",
    },
    "warm_up_missed": {
        "job_id": "nightly",
        "model": "qwen",
        "host": "spark-1",
        "run_at": "2026-12-04T02:00:00Z",
    },
    "service_down": {
        "service": "chat",
        "host": "spark-1",
        "detail": "HTTP 503",
        "since": "2026-12-04T12:03:04.250Z",
    },
    "service_recovered": {"service": "chat", "host": "spark-1", "since": "2026-12-04T12:09:00Z"},
    "host_offline": {
        "host": "spark-2",
        "missed_samples": 5,
        "last_error": "timed out",
        "last_sample_at": "2026-12-04T12:00:00+00:00",
    },
    "host_online": {"host": "spark-2"},
    "restart_gave_up": {"service": "chat", "host": "spark-1", "model": "qwen", "reason": "x"},
}


def test_it_has_a_readable_chat_message_for_every_event_type():
    assert set(MESSAGES) >= set(WebhookEndpoint.EVENT_TYPES)
    for event_type in WebhookEndpoint.EVENT_TYPES:
        text = chat_text(event_type, SAMPLE_PAYLOADS[event_type])
        assert "None" not in text and "{" not in text and "?" not in text, (event_type, text)
    assert chat_text("service_down", SAMPLE_PAYLOADS["service_down"]) == (
        "🔴 Service chat on spark-1 is down: HTTP 503 (since 2026-12-04 12:03:04 UTC)"
    )


def test_it_escapes_what_slack_reads_as_control_characters():
    text = chat_text(
        "swap_failed",
        {"swap_id": 3, "model": "m", "host": "h", "error": "<!channel> HTTP 500 <b>a & b</b>"},
    )
    assert text == (
        "❌ Swap 3 of m on h failed: &lt;!channel&gt; HTTP 500 &lt;b&gt;a &amp; b&lt;/b&gt;"
    )


def test_it_posts_each_event_as_a_chat_message_to_a_chat_endpoint():
    with Receiver() as receiver:
        endpoint, _secret = make_endpoint(receiver.url, format=WebhookEndpoint.FORMAT_CHAT)
        for event_type in WebhookEndpoint.EVENT_TYPES:
            with transaction.atomic():
                event = webhooks.emit_event(event_type, SAMPLE_PAYLOADS[event_type])
            delivery = WebhookDelivery.objects.get(event=event, endpoint=endpoint)
            result = webhooks.attempt_delivery(delivery.pk)
            assert result is not None and result.status == WebhookDelivery.DELIVERED
        received = receiver.wait_for(len(WebhookEndpoint.EVENT_TYPES))

    texts = [json.loads(r.body) for r in received]
    assert all(set(body) == {"text"} for body in texts)
    assert texts[0]["text"].startswith("✅ Swap 7 complete: qwen is served on spark-1")
    assert "Host spark-2 is offline: 5 samples missed: timed out" in texts[7]["text"]
    assert received[0].headers["content-type"] == "application/json"


def test_it_retries_a_chat_delivery_and_stops_at_410_like_any_other():
    # Slack answers 500 on its own trouble and 410 channel_is_archived for a dead channel.
    with Receiver(500, 410) as receiver:
        endpoint, _ = make_endpoint(receiver.url, format=WebhookEndpoint.FORMAT_CHAT)
        with transaction.atomic():
            event = webhooks.emit_event("host_online", {"host": "spark-2"})
        delivery = WebhookDelivery.objects.get(event=event)
        first = webhooks.attempt_delivery(delivery.pk)
        assert first is not None and first.status == WebhookDelivery.PENDING
        second = webhooks.attempt_delivery(delivery.pk, now=first.next_attempt_at)
        assert second is not None and second.status == WebhookDelivery.FAILED
    endpoint.refresh_from_db()
    assert not endpoint.enabled and "410" in endpoint.disabled_reason
    assert [json.loads(r.body)["text"] for r in receiver.requests] == [
        "🟢 Host spark-2 is online again"
    ] * 2


def test_it_takes_the_format_through_the_api_and_refuses_an_unknown_one(admin_key_client):
    url = "https://hooks.slack.example/services/T0/B0/x"
    created = admin_key_client.post(
        "/api/webhooks", {"url": url, "format": "chat"}, content_type="application/json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["format"] == "chat"
    endpoint_id = created.json()["id"]

    refused = admin_key_client.post(
        "/api/webhooks", {"url": url, "format": "teams"}, content_type="application/json"
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "format"
    assert WebhookEndpoint.objects.count() == 1

    patched = admin_key_client.patch(
        f"/api/webhooks/{endpoint_id}", {"format": "standard"}, content_type="application/json"
    )
    assert patched.status_code == 200 and patched.json()["format"] == "standard"
    bad = admin_key_client.patch(
        f"/api/webhooks/{endpoint_id}", {"format": "xml"}, content_type="application/json"
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "format"
    assert WebhookEndpoint.objects.get().format == "standard"

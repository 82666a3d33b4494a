"""The dashboard's writes (dashboard/actions.py): htmx form posts answered with fragments.

For each action: it does what the API route does (the row changes, the same audit row),
answers with the re-rendered fragment, refuses bad input with 4xx and the field named next
to it, and a person below the route's level gets 403 (arbiter/route_policy.py)."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from arbiter.models import ApiKey, AuditEvent, Host, Service, Swap
from coordination import locks
from coordination.models import LockAudit, WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.conftest import grant
from tests.coordination.test_webhook_receiver import Receiver, Reply, make_endpoint

pytestmark = pytest.mark.django_db


def person(django_user_model, role: str) -> Client:
    client = Client()
    client.force_login(
        grant(django_user_model.objects.create_user(f"{role}-p", password="pw"), role)
    )
    return client


@pytest.fixture
def admin(django_user_model) -> Client:
    return person(django_user_model, "admin")


@pytest.fixture
def operator(django_user_model) -> Client:
    return person(django_user_model, "operator")


@pytest.fixture
def viewer(django_user_model) -> Client:
    return person(django_user_model, "viewer")


def last_audit(action: str) -> AuditEvent:
    row = AuditEvent.objects.filter(action=action).order_by("-pk").first()
    assert row is not None, f"no {action} audit row"
    return row


def field_error(html: str) -> str:
    found = re.search(r'<small class="field-error" role="alert">([^<]*)</small>', html)
    assert found, html
    return found.group(1)


# -- API keys ----------------------------------------------------------------------------

KEY_FORM = {
    "name": "chat app",
    "role": "inference",
    "models": "tiny-chat, tiny-embed",
    "expires_in_days": "30",
    "requests_per_minute": "5",
    "tokens_per_day": "",
}


def test_it_creates_a_key_shown_once_with_the_table(admin):
    response = admin.post("/actions/keys", KEY_FORM)
    assert response.status_code == 200
    html = response.content.decode()
    raw = re.search(r'<code id="new-key-value" class="secret-once">([^<]+)</code>', html).group(1)
    key = ApiKey.objects.get(name="chat app")
    assert raw.startswith(f"arb_{key.visible_prefix.split('_')[1]}") or key.visible_prefix in raw
    assert (key.role, key.allowed_models, key.requests_per_minute) == (
        "inference",
        ["tiny-chat", "tiny-embed"],
        5,
    )
    assert key.expires_at is not None and key.tokens_per_day is None
    # The table comes along out of band; the form comes back empty.
    assert '<table id="keys-table" class="keys" hx-swap-oob="true">' in html
    assert 'name="name" maxlength="100" required value=""' in html
    row = last_audit("key.create")
    assert (row.actor_name, row.object_id) == ("admin-p", str(key.pk))
    assert raw not in str(row.after) and row.after["models"] == ["tiny-chat", "tiny-embed"]
    # Shown once: the page and the table never show it again.
    assert raw not in admin.get("/keys/").content.decode()


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"name": "  "}, "name", "must not be blank"),
        ({"requests_per_minute": "many"}, "requests_per_minute", "valid integer"),
        ({"expires_in_days": "0"}, "expires_in_days", "greater than or equal to 1"),
        ({"role": "root"}, "role", "'inference', 'operator' or 'admin'"),
        ({"role": "operator"}, "models", "only an inference key is limited to models"),
    ],
)
def test_it_names_a_bad_key_field_next_to_it(admin, change, field, words):
    response = admin.post("/actions/keys", {**KEY_FORM, **change})
    assert response.status_code == 422
    html = response.content.decode()
    message = field_error(html)
    assert message.startswith(f"{field}: ") and words in message.replace("&#x27;", "'")
    assert 'value="chat app"' in html or change.get("name")  # what was typed stays
    assert not ApiKey.objects.exists()
    assert not AuditEvent.objects.filter(action="key.create").exists()


def test_it_revokes_a_key_and_answers_with_the_table(admin):
    key, _raw = ApiKey.objects.create_key(name="cron")
    response = admin.post(f"/actions/keys/{key.pk}/revoke")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="key-{key.pk}" class="api-key key-revoked" data-revoked="true"' in html
    key.refresh_from_db()
    assert key.revoked_at is not None
    row = last_audit("key.revoke")
    assert row.object_id == str(key.pk) and row.before == {"name": "cron", "revoked_at": None}

    missing = admin.post("/actions/keys/999999/revoke")
    assert missing.status_code == 404
    assert "no API key with id 999999" in missing.content.decode()


def test_it_lets_only_admin_people_manage_keys(operator, admin_key):
    key, _raw = ApiKey.objects.create_key(name="cron")
    assert operator.post("/actions/keys", KEY_FORM).status_code == 403
    assert operator.post(f"/actions/keys/{key.pk}/revoke").status_code == 403
    # A key is no person: people's pages send it to log in.
    with_key = Client(headers={"Authorization": f"Bearer {admin_key}"})
    assert with_key.post("/actions/keys", KEY_FORM).status_code == 302
    assert ApiKey.objects.filter(name="chat app").count() == 0
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_it_only_takes_an_action_as_a_post(admin):
    assert admin.get("/actions/keys").status_code == 405


# -- webhooks ----------------------------------------------------------------------------


def test_it_adds_a_webhook_and_shows_its_secret_once(admin):
    form = {"url": "https://hooks.example.com/a", "description": "ops", "events": ["swap_failed"]}
    response = admin.post("/actions/webhooks", form)
    assert response.status_code == 200
    html = response.content.decode()
    secret = re.search(r'id="new-webhook-secret-value" class="secret-once">([^<]+)<', html)
    assert secret and secret.group(1).startswith("whsec_")
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.url, endpoint.events, endpoint.description) == (
        "https://hooks.example.com/a",
        ["swap_failed"],
        "ops",
    )
    assert 'id="webhook-panel"' in html and 'hx-swap-oob="true"' in html
    assert f'id="webhook-{endpoint.pk}"' in html
    assert last_audit("webhook.create").after == {
        "url": endpoint.url,
        "events": ["swap_failed"],
        "format": "standard",
    }
    assert secret.group(1) not in admin.get("/webhooks/").content.decode()


def test_it_adds_a_chat_webhook_from_the_form(admin):
    form = {"url": "https://hooks.example.com/slack", "format": "chat"}
    response = admin.post("/actions/webhooks", form)
    assert response.status_code == 200
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.format == "chat"
    assert 'class="badge webhook-format"' in response.content.decode()
    refused = admin.post("/actions/webhooks", {"url": "https://h.example.com/x", "format": "irc"})
    assert refused.status_code == 422 and "format" in refused.content.decode()
    assert WebhookEndpoint.objects.count() == 1


@pytest.mark.parametrize(
    ("form", "field", "words"),
    [
        ({"url": "ftp://hooks.example.com/a"}, "url", "http"),
        ({"url": "https://hooks.example.com/a", "events": ["nope"]}, "events", "nope"),
        ({"url": "https://hooks.example.com/a", "secret": "short"}, "secret", "whsec_"),
    ],
)
def test_it_names_a_bad_webhook_field_next_to_it(admin, form, field, words):
    response = admin.post("/actions/webhooks", form)
    assert response.status_code == 422
    message = field_error(response.content.decode())
    assert message.startswith(f"{field}: ") and words in message
    assert not WebhookEndpoint.objects.exists()


def test_it_edits_a_webhook_and_answers_with_the_panel(admin):
    endpoint, _ = make_endpoint("https://hooks.example.com/a", events=["swap_failed"])
    form = {"url": endpoint.url, "description": "after", "events": ["swap_failed"]}
    response = admin.post(f"/actions/webhooks/{endpoint.pk}/edit", form)  # "enabled" unticked
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="webhook-panel"')
    assert '<span class="muted webhook-description">after</span>' in html
    endpoint.refresh_from_db()
    assert (endpoint.description, endpoint.enabled) == ("after", False)
    row = last_audit("webhook.update")
    assert row.after["description"] == "after" and row.after["enabled"] is False


def test_it_switches_a_webhook_to_the_chat_format_with_the_alert_events(admin):
    endpoint, _ = make_endpoint("https://hooks.example.com/a")
    page = admin.get("/webhooks/").content.decode()
    for event in ("service_down", "service_recovered", "host_offline", "host_online"):
        assert f'name="events" value="{event}"' in page
    assert '<option value="chat"' in page
    form = {
        "url": endpoint.url,
        "events": ["service_down", "restart_gave_up"],
        "format": "chat",
        "enabled": "on",
    }
    response = admin.post(f"/actions/webhooks/{endpoint.pk}/edit", form)
    assert response.status_code == 200
    assert 'class="badge webhook-format"' in response.content.decode()
    endpoint.refresh_from_db()
    assert (endpoint.format, endpoint.events) == ("chat", ["service_down", "restart_gave_up"])
    assert last_audit("webhook.update").after["format"] == "chat"


def test_it_sends_a_refused_edit_back_as_its_form_with_the_field_named(admin):
    endpoint, _ = make_endpoint("https://hooks.example.com/a")
    form = {"url": "http://10.0.0.5/hook", "description": "typed", "enabled": "on"}
    response = admin.post(f"/actions/webhooks/{endpoint.pk}/edit", form)
    assert response.status_code == 422
    assert response["HX-Retarget"] == f"#webhook-{endpoint.pk}-edit-form"
    html = response.content.decode()
    assert field_error(html).startswith("url: ") and "10.0.0.5" in field_error(html)
    assert 'value="http://10.0.0.5/hook"' in html and 'value="typed"' in html
    endpoint.refresh_from_db()
    assert endpoint.url == "https://hooks.example.com/a"
    assert not AuditEvent.objects.filter(action="webhook.update").exists()


def test_it_deletes_a_webhook(admin):
    endpoint, _ = make_endpoint("https://hooks.example.com/a")
    response = admin.post(f"/actions/webhooks/{endpoint.pk}/delete")
    assert response.status_code == 200
    assert f'id="webhook-{endpoint.pk}"' not in response.content.decode()
    assert not WebhookEndpoint.objects.exists()
    assert last_audit("webhook.delete").before["url"] == "https://hooks.example.com/a"

    missing = admin.post("/actions/webhooks/999999/delete")
    assert missing.status_code == 404
    assert missing["HX-Retarget"] == "#webhook-999999-error"
    assert "no webhook with id 999999" in missing.content.decode()


def test_it_sends_a_test_event_and_the_panel_shows_the_answer(admin, settings):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["127.0.0.0/8"]  # the receiver is on loopback
    with Receiver(Reply(status=202, body=b"thanks")) as receiver:
        endpoint, _ = make_endpoint(receiver.url)
        response = admin.post(f"/actions/webhooks/{endpoint.pk}/test")
        receiver.wait_for(1)
    assert response.status_code == 200
    html = response.content.decode()
    result = re.search(
        rf'id="webhook-{endpoint.pk}-test-result"[^>]*data-ok="(\w+)">([^<]*)<', html
    )
    assert result and result.group(1) == "true"
    assert re.fullmatch(r"✓ HTTP 202 in \d+ ms · thanks", result.group(2)), result.group(2)
    assert '<code class="delivery-type">webhook.test</code>' in html
    assert last_audit("webhook.test").after["status_code"] == 202
    # The answer stays on every later render of the panel (polls, pushes).
    again = admin.get("/fragments/webhooks").content.decode()
    assert result.group(2) in again


def test_it_redelivers_a_delivery(admin):
    endpoint, _ = make_endpoint("https://hooks.example.com/a")
    event = WebhookEvent.objects.create(event_id="msg_1", event_type="swap_failed", payload={})
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event=event, status=WebhookDelivery.FAILED
    )
    response = admin.post(f"/actions/webhooks/deliveries/{delivery.pk}/redeliver")
    assert response.status_code == 200
    assert f'id="delivery-{delivery.pk}" class="delivery delivery-pending"' in (
        response.content.decode()
    )
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.PENDING
    assert last_audit("webhook.redeliver").after == {"endpoint": endpoint.pk, "event_id": "msg_1"}

    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False)
    refused = admin.post(f"/actions/webhooks/deliveries/{delivery.pk}/redeliver")
    assert refused.status_code == 409
    assert refused["HX-Retarget"] == f"#delivery-{delivery.pk}-error"
    assert "is disabled" in refused.content.decode()


def test_it_keeps_webhook_writes_for_admins(operator):
    endpoint, _ = make_endpoint("https://hooks.example.com/a")
    for path in (
        "/actions/webhooks",
        f"/actions/webhooks/{endpoint.pk}/edit",
        f"/actions/webhooks/{endpoint.pk}/delete",
        f"/actions/webhooks/{endpoint.pk}/test",
        "/actions/webhooks/deliveries/1/redeliver",
    ):
        assert operator.post(path, {"url": "https://hooks.example.com/b"}).status_code == 403
    assert WebhookEndpoint.objects.get().url == "https://hooks.example.com/a"
    assert not AuditEvent.objects.exists()


# -- services ----------------------------------------------------------------------------


@pytest.fixture
def service(db) -> Service:
    host = Host.objects.create(name="gpu-a", address="10.0.0.1")
    return Service.objects.create(name="svc-a", host=host, base_url="http://10.0.0.1:8000")


def test_it_disables_and_enables_a_service(admin, service):
    response = admin.post("/actions/services/svc-a", {"disabled": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="service-disabled-svc-a"' in html and 'id="service-svc-a"' not in html
    assert (
        '<output id="services-error" class="action-error" role="alert" hx-swap-oob="true">' in html
    )
    service.refresh_from_db()
    assert service.disabled is True
    row = last_audit("service.update")
    assert (row.object_id, row.before, row.after) == (
        "svc-a",
        {"disabled": False},
        {"disabled": True},
    )

    assert admin.post("/actions/services/svc-a", {"disabled": "false"}).status_code == 200
    service.refresh_from_db()
    assert service.disabled is False


def test_it_names_the_field_of_a_bad_service_toggle(admin, service):
    response = admin.post("/actions/services/svc-a", {"disabled": "maybe"})
    assert response.status_code == 422
    assert response["HX-Retarget"] == "#services-error"
    assert "disabled: " in response.content.decode()
    missing = admin.post("/actions/services/no-such", {"disabled": "true"})
    assert missing.status_code == 404


def test_it_makes_a_service_toggle_follow_the_lock(admin, service):
    grant_ = locks.acquire("nightly-eval", 600)
    response = admin.post("/actions/services/svc-a", {"disabled": "true"})
    assert response.status_code == 423
    assert response["HX-Retarget"] == "#services-error"
    assert "nightly-eval" in response.content.decode()
    service.refresh_from_db()
    assert service.disabled is False
    locks.release(grant_.token)


def test_it_does_not_let_an_operator_toggle_a_service(operator, service):
    assert operator.post("/actions/services/svc-a", {"disabled": "true"}).status_code == 403
    service.refresh_from_db()
    assert service.disabled is False


# -- swaps -------------------------------------------------------------------------------


@pytest.fixture
def pending_swap(db) -> Swap:
    host = Host.objects.create(name="gpu-b", address="10.0.0.2")
    return Swap.objects.create(model_key="qwen3-small", host=host, state=Swap.PENDING)


def test_it_lets_an_operator_cancel_a_swap(operator, pending_swap):
    response = operator.post(f"/actions/swaps/{pending_swap.pk}/cancel")
    assert response.status_code == 200
    assert 'id="swap-panel"' in response.content.decode()
    pending_swap.refresh_from_db()
    assert pending_swap.state == Swap.CANCELLED
    row = last_audit("swap.cancel")
    assert (row.object_id, row.actor_name) == (str(pending_swap.pk), "operator-p")
    assert row.before == {"state": "pending"} and row.after == {"state": "cancelled"}

    again = operator.post(f"/actions/swaps/{pending_swap.pk}/cancel")
    assert again.status_code == 409
    assert again["HX-Retarget"] == f"#swap-{pending_swap.pk}-cancel-error"
    assert "already cancelled" in again.content.decode()


def test_it_makes_a_cancel_follow_the_lock(operator, pending_swap):
    grant_ = locks.acquire("nightly-eval", 600)
    response = operator.post(f"/actions/swaps/{pending_swap.pk}/cancel")
    assert response.status_code == 423
    assert "nightly-eval" in response.content.decode()
    assert response["Retry-After"]
    pending_swap.refresh_from_db()
    assert pending_swap.state == Swap.PENDING
    locks.release(grant_.token)


def test_it_does_not_let_a_viewer_cancel_a_swap(viewer, pending_swap):
    assert viewer.post(f"/actions/swaps/{pending_swap.pk}/cancel").status_code == 403
    pending_swap.refresh_from_db()
    assert pending_swap.state == Swap.PENDING


# -- the lock ----------------------------------------------------------------------------


def test_it_lets_an_admin_force_release_the_lock_from_the_banner(admin):
    grant_ = locks.acquire("nightly-eval", 600, "weekly benchmark")
    response = admin.post(
        "/actions/lock/force-release", {"reason": "stuck job", "lock_delay_seconds": "0"}
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="lock-banner"' in html and 'data-state="free"' in html
    assert "stuck job" in html and "nightly-eval" in html  # the release's notice
    assert locks.current_lock().held is False
    assert LockAudit.objects.get().reason == "stuck job"
    row = last_audit("lock.force_release")
    assert row.before == {"holder": "nightly-eval", "generation": grant_.generation}
    assert row.after["reason"] == "stuck job" and row.after["lock_delay_seconds"] == 0


def test_it_sends_a_bad_force_release_back_as_its_form(admin):
    locks.acquire("nightly-eval", 600)
    response = admin.post(
        "/actions/lock/force-release", {"reason": "typed", "lock_delay_seconds": "soon"}
    )
    assert response.status_code == 422
    assert response["HX-Retarget"] == "#lock-force-release"
    html = response.content.decode()
    assert field_error(html) == "lock_delay_seconds: must be an integer number of seconds"
    assert 'value="typed"' in html and " open>" in html
    assert locks.current_lock().held is True
    assert not AuditEvent.objects.filter(action="lock.force_release").exists()


def test_it_says_so_when_force_releasing_a_free_lock(admin):
    response = admin.post("/actions/lock/force-release", {"reason": "", "lock_delay_seconds": "0"})
    assert response.status_code == 409
    assert "not held" in response.content.decode()


def test_it_does_not_let_an_operator_force_release(operator):
    locks.acquire("nightly-eval", 600)
    response = operator.post(
        "/actions/lock/force-release", {"reason": "mine now", "lock_delay_seconds": "0"}
    )
    assert response.status_code == 403
    assert locks.current_lock().held is True


def test_it_needs_the_csrf_token_for_an_action(csrf_client, django_user_model):
    # base.html puts the token into every htmx request (hx-headers on <body>).
    csrf_client.force_login(
        grant(django_user_model.objects.create_user("a", password="pw"), "admin")
    )
    assert csrf_client.post("/actions/keys", KEY_FORM).status_code == 403
    page = csrf_client.get("/keys/").content.decode()
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)
    sent = csrf_client.post("/actions/keys", KEY_FORM, headers={"X-CSRFToken": token})
    assert sent.status_code == 200
    assert ApiKey.objects.filter(name="chat app").count() == 1

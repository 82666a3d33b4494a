"""The audit trail: every state change leaves exactly one AuditEvent naming its actor.

Each test performs an action through its real route (HTTP through Django's test client,
the real database) and checks the one new row: the action, who (kind, name, role), the
object, the values before and after, and the client address. Catalog disk actions are
in tests/catalog/test_audit_disk.py, the broker's in tests/broker/test_audit_broker.py.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from arbiter import audit
from arbiter.inventory import apply_inventory
from arbiter.models import ApiKey, AuditEvent, Swap
from catalog.models import CatalogModel
from coordination import locks, webhooks
from coordination.models import ScheduledJob, WebhookDelivery
from tests.conftest import grant
from tests.inventory.test_apply_inventory import CLUSTER

pytestmark = pytest.mark.django_db

ADDRESS = "192.0.2.7"  # every request below comes from here (REMOTE_ADDR)
OPERATOR_KEY = "nightly cron"  # tests/conftest.py's api_key
ADMIN_KEY = "admin automation"  # tests/conftest.py's admin_key


# -- helpers ---------------------------------------------------------------------------
class Trail:
    """The rows written since it was made."""

    def __init__(self) -> None:
        self.last = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

    def new(self) -> list[AuditEvent]:
        rows = list(AuditEvent.objects.filter(pk__gt=self.last).order_by("pk"))
        self.last = rows[-1].pk if rows else self.last
        return rows

    def one(self, action: str, actor: tuple[str, str, str], obj: tuple[str, str]) -> AuditEvent:
        """Exactly one new row, with this action, (kind, name, role) and (type, id)."""
        rows = self.new()
        assert [r.action for r in rows] == [action]
        row = rows[0]
        assert (row.actor_kind, row.actor_name, row.actor_role) == actor
        assert (row.object_type, row.object_id) == obj
        return row


@pytest.fixture
def trail(db) -> Trail:
    return Trail()


def send(client: Client, method: str, path: str, body=None, **headers):
    data = json.dumps(body) if body is not None else ""
    return client.generic(
        method, path, data, content_type="application/json", REMOTE_ADDR=ADDRESS, **headers
    )


OPERATOR = (AuditEvent.KEY, OPERATOR_KEY, ApiKey.ROLE_OPERATOR)
ADMIN = (AuditEvent.KEY, ADMIN_KEY, ApiKey.ROLE_ADMIN)
ALICE = (AuditEvent.PERSON, "alice", "admin")


# -- swaps -----------------------------------------------------------------------------
@pytest.fixture
def cluster(db) -> None:
    apply_inventory(CLUSTER)  # spark-1 has the vLLM service "chat"
    CatalogModel.objects.create(key="qwen", hub_repo="Qwen/Qwen3-0.6B", served_name="qwen")


def test_it_records_a_swap_start_and_its_cancel_as_one_row_each(cluster, key_client, trail):
    started = send(key_client, "POST", "/api/swap", {"model": "qwen", "host": "spark-1"})
    assert started.status_code == 202, started.content
    swap_id = started.json()["id"]
    row = trail.one("swap.start", OPERATOR, ("swap", str(swap_id)))
    assert row.after == {"model": "qwen", "host": "spark-1", "dry_run": False}
    assert row.client_address == ADDRESS and row.on_behalf_of == ""

    # Nothing runs it here, so it is still pending and the cancel is immediate.
    cancelled = send(key_client, "POST", f"/api/swap/{swap_id}/cancel")
    assert cancelled.status_code == 202, cancelled.content
    row = trail.one("swap.cancel", OPERATOR, ("swap", str(swap_id)))
    assert (row.before, row.after) == ({"state": "pending"}, {"state": "cancelled"})


def test_it_records_no_row_for_a_refused_swap(cluster, key_client, trail):
    locks.acquire("someone else", 600)
    trail.new()
    refused = send(key_client, "POST", "/api/swap", {"model": "qwen", "host": "spark-1"})
    assert refused.status_code == 423
    assert trail.new() == [] and not Swap.objects.exists()


# -- the lock --------------------------------------------------------------------------
def test_it_records_lock_acquire_extend_and_release_as_one_row_each_and_never_the_token(
    key_client, trail
):
    granted = send(key_client, "POST", "/api/swap/lock", {"holder": "eval", "ttl_seconds": 60})
    assert granted.status_code == 201, granted.content
    token = granted.json()["token"]
    row = trail.one("lock.acquire", OPERATOR, ("lock", locks.GLOBAL))
    assert row.after["holder"] == "eval" and row.after["generation"] == 1
    assert row.client_address == ADDRESS

    header = {"headers": {locks.TOKEN_HEADER: token}}
    extended = send(
        key_client, "POST", "/api/swap/lock", {"holder": "eval", "ttl_seconds": 300}, **header
    )
    assert extended.status_code == 200, extended.content
    row = trail.one("lock.extend", OPERATOR, ("lock", locks.GLOBAL))
    assert row.before["expires_at"] < row.after["expires_at"]

    released = send(key_client, "DELETE", "/api/swap/lock", **header)
    assert released.status_code == 204, released.content
    row = trail.one("lock.release", OPERATOR, ("lock", locks.GLOBAL))
    assert row.before == {"holder": "eval", "generation": 1}
    assert token not in json.dumps([row.before, row.after])
    for event in AuditEvent.objects.all():
        assert token not in json.dumps([event.before, event.after])
        assert locks.hash_token(token) not in json.dumps([event.before, event.after])


def test_it_records_no_row_for_a_release_with_a_wrong_token(key_client, trail):
    locks.acquire("eval", 60)
    trail.new()
    wrong = send(key_client, "DELETE", "/api/swap/lock", headers={locks.TOKEN_HEADER: "nope"})
    assert wrong.status_code == 409
    assert trail.new() == []


def test_it_records_a_force_release_as_one_row_by_the_admin_person(alice_client, trail):
    locks.acquire("eval", 600, "tonight")
    trail.new()
    response = send(alice_client, "DELETE", "/api/swap/lock?force=true&reason=stuck")
    assert response.status_code == 204, response.content
    row = trail.one("lock.force_release", ALICE, ("lock", locks.GLOBAL))
    assert row.before == {"holder": "eval", "generation": 1}
    assert row.after["reason"] == "stuck" and row.after["generation"] == 2
    assert row.client_address == ADDRESS


# -- the catalog -----------------------------------------------------------------------
def test_it_records_a_catalog_create_update_and_delete_as_one_row_each(key_client, trail):
    body = {"key": "qwen3-8b", "hub_repo": "Qwen/Qwen3-8B", "served_name": "qwen3-8b"}
    assert send(key_client, "POST", "/api/models", body).status_code == 201
    row = trail.one("catalog.create", OPERATOR, ("catalog_model", "qwen3-8b"))
    assert row.after["hub_repo"] == "Qwen/Qwen3-8B"

    changed = {**body, "estimated_vram_mib": 20000}
    response = send(key_client, "PUT", "/api/models/qwen3-8b", changed)
    assert response.status_code == 200, response.content
    row = trail.one("catalog.update", OPERATOR, ("catalog_model", "qwen3-8b"))
    assert row.after == {"estimated_vram_mib": 20000}
    assert list(row.before) == ["estimated_vram_mib"]

    assert send(key_client, "DELETE", "/api/models/qwen3-8b").status_code == 204
    row = trail.one("catalog.delete", OPERATOR, ("catalog_model", "qwen3-8b"))
    assert row.before["hub_repo"] == "Qwen/Qwen3-8B" and row.client_address == ADDRESS


def test_it_records_a_create_from_the_catalog_form_like_one_from_the_api(operator_bob, trail):
    client = Client()
    client.force_login(operator_bob)
    form = {
        "hub-key": "qwen3-8b",
        "hub-kind": "llm",
        "hub-hub_repo": "Qwen/Qwen3-8B",
        "hub-image": "vllm/vllm-openai:latest",
        "hub-port": "8000",
        "hub-container_name": "arbiter-vllm",
        "hub-tensor_parallel_size": "1",
        "hub-gpu_memory_utilization": "0.9",
        "hub-estimated_vram_mib": "20000",
    }
    response = client.post("/catalog/add/hub", form, REMOTE_ADDR=ADDRESS)
    assert response.status_code == 200, response.content
    row = trail.one(
        "catalog.create", (AuditEvent.PERSON, "bob", "operator"), ("catalog_model", "qwen3-8b")
    )
    assert row.client_address == ADDRESS


# -- the inventory ---------------------------------------------------------------------
def test_it_records_host_and_service_edits_and_resets_as_one_row_each(admin_key_client, trail):
    apply_inventory(CLUSTER)
    trail.new()
    response = send(admin_key_client, "PATCH", "/api/hosts/spark-1", {"vram_margin_mib": 4096})
    assert response.status_code == 200, response.content
    row = trail.one("host.update", ADMIN, ("host", "spark-1"))
    assert (row.before, row.after) == ({"vram_margin_mib": 0}, {"vram_margin_mib": 4096})

    assert send(admin_key_client, "DELETE", "/api/hosts/spark-1/edits").status_code == 200
    row = trail.one("host.edits_reset", ADMIN, ("host", "spark-1"))
    assert (row.before, row.after) == ({"vram_margin_mib": 4096}, {"vram_margin_mib": 0})

    # The dashboard's disable / enable buttons call this same route.
    response = send(admin_key_client, "PATCH", "/api/services/chat", {"disabled": True})
    assert response.status_code == 200, response.content
    row = trail.one("service.update", ADMIN, ("service", "chat"))
    assert (row.before, row.after) == ({"disabled": False}, {"disabled": True})
    assert row.client_address == ADDRESS

    assert send(admin_key_client, "DELETE", "/api/services/chat/edits").status_code == 200
    row = trail.one("service.edits_reset", ADMIN, ("service", "chat"))
    assert (row.before, row.after) == ({"disabled": True}, {"disabled": False})


def test_it_records_no_row_for_a_refused_service_edit(admin_key_client, trail):
    apply_inventory(CLUSTER)
    locks.acquire("someone else", 600)
    trail.new()
    response = send(admin_key_client, "PATCH", "/api/services/chat", {"disabled": True})
    assert response.status_code == 423
    assert trail.new() == []


# -- schedules -------------------------------------------------------------------------
def test_it_records_a_schedule_register_update_and_delete_as_one_row_each(key_client, trail):
    CatalogModel.objects.create(key="qwen", hub_repo="Qwen/Qwen3-0.6B", served_name="qwen")
    trail.new()
    job = {
        "id": "nightly",
        "name": "Nightly eval",
        "cron": "30 3 * * *",
        "timezone": "UTC",
        "target_model": "qwen",
    }
    assert send(key_client, "POST", "/api/schedule", job).status_code == 201
    row = trail.one("schedule.register", OPERATOR, ("schedule", "nightly"))
    assert row.before is None and row.after["cron"] == "30 3 * * *"

    assert (
        send(key_client, "POST", "/api/schedule", {**job, "cron": "0 4 * * *"}).status_code == 200
    )
    row = trail.one("schedule.register", OPERATOR, ("schedule", "nightly"))
    assert (row.before["cron"], row.after["cron"]) == ("30 3 * * *", "0 4 * * *")

    assert send(key_client, "DELETE", "/api/schedule/nightly").status_code == 204
    row = trail.one("schedule.delete", OPERATOR, ("schedule", "nightly"))
    assert row.before["name"] == "Nightly eval" and not ScheduledJob.objects.exists()


# -- webhooks --------------------------------------------------------------------------
def test_it_records_webhook_create_rotate_redeliver_and_delete_as_one_row_each_without_secrets(
    admin_key_client, trail, settings
):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["127.0.0.0/8"]
    created = send(admin_key_client, "POST", "/api/webhooks", {"url": "http://127.0.0.1:9/hook"})
    assert created.status_code == 201, created.content
    webhook_id, secret = created.json()["id"], created.json()["secret"]
    row = trail.one("webhook.create", ADMIN, ("webhook", str(webhook_id)))
    assert row.after["url"] == "http://127.0.0.1:9/hook"

    rotated = send(admin_key_client, "POST", f"/api/webhooks/{webhook_id}/rotate", {})
    assert rotated.status_code == 200, rotated.content
    new_secret = rotated.json()["secret"]
    trail.one("webhook.rotate", ADMIN, ("webhook", str(webhook_id)))

    from django.db import transaction

    with transaction.atomic():
        event = webhooks.emit_event("swap_complete", {"swap_id": 1})
    delivery = WebhookDelivery.objects.get(event=event)
    trail.new()
    redelivered = send(
        admin_key_client, "POST", f"/api/webhooks/deliveries/{delivery.pk}/redeliver"
    )
    assert redelivered.status_code == 202, redelivered.content
    row = trail.one("webhook.redeliver", ADMIN, ("webhook_delivery", str(delivery.pk)))
    assert row.after["endpoint"] == webhook_id

    assert send(admin_key_client, "DELETE", f"/api/webhooks/{webhook_id}").status_code == 204
    trail.one("webhook.delete", ADMIN, ("webhook", str(webhook_id)))
    stored = json.dumps(list(AuditEvent.objects.values("before", "after")))
    assert secret not in stored and new_secret not in stored


# -- API keys --------------------------------------------------------------------------
def test_it_records_a_key_create_and_revoke_by_an_admin_person_as_one_row_each(alice_client, trail):
    created = send(alice_client, "POST", "/api/keys", {"name": "app1", "role": "inference"})
    assert created.status_code == 201, created.content
    key_id, raw = created.json()["id"], created.json()["key"]
    row = trail.one("key.create", ALICE, ("api_key", str(key_id)))
    assert row.after["name"] == "app1" and row.after["role"] == "inference"
    assert row.client_address == ADDRESS
    hashed = ApiKey.objects.get(pk=key_id).key_hash
    assert raw not in json.dumps(row.after) and hashed not in json.dumps(row.after)

    assert send(alice_client, "DELETE", f"/api/keys/{key_id}").status_code == 204
    row = trail.one("key.revoke", ALICE, ("api_key", str(key_id)))
    assert row.before["revoked_at"] is None and row.after["revoked_at"]
    # Revoking it again changes nothing: no second row.
    assert send(alice_client, "DELETE", f"/api/keys/{key_id}").status_code == 204
    assert trail.new() == []


def test_it_records_the_create_api_key_command_as_the_engine(trail):
    call_command(
        "create_api_key",
        "cron-box",
        "--role",
        "operator",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    key = ApiKey.objects.get(name="cron-box")
    row = trail.one(
        "key.create", (AuditEvent.ENGINE, "manage.py create_api_key", ""), ("api_key", str(key.pk))
    )
    assert row.after["role"] == "operator" and row.client_address is None


# -- retention -------------------------------------------------------------------------
def test_it_deletes_rows_older_than_the_retention_setting_and_keeps_newer_ones(settings):
    settings.ARBITER_AUDIT_RETENTION_DAYS = 30
    now = timezone.now()
    old = audit.record(audit.ENGINE, "swap.start", "swap", 1)
    edge = audit.record(audit.ENGINE, "swap.start", "swap", 2)
    new = audit.record(audit.ENGINE, "swap.start", "swap", 3)
    AuditEvent.objects.filter(pk=old.pk).update(at=now - timedelta(days=31))
    AuditEvent.objects.filter(pk=edge.pk).update(at=now - timedelta(days=29))
    assert audit.prune(now) == 1
    assert set(AuditEvent.objects.values_list("pk", flat=True)) == {edge.pk, new.pk}


def test_it_keeps_every_row_with_a_retention_of_zero(settings):
    settings.ARBITER_AUDIT_RETENTION_DAYS = 0
    row = audit.record(audit.ENGINE, "swap.start", "swap", 1)
    AuditEvent.objects.filter(pk=row.pk).update(at=timezone.now() - timedelta(days=5000))
    assert audit.prune() == 0 and AuditEvent.objects.filter(pk=row.pk).exists()


def test_it_is_pruned_by_the_periodic_housekeeping(settings):
    from asgiref.sync import async_to_sync

    from arbiter.loops import prune_retained

    settings.ARBITER_AUDIT_RETENTION_DAYS = 1
    row = audit.record(audit.ENGINE, "swap.start", "swap", 1)
    AuditEvent.objects.filter(pk=row.pk).update(at=timezone.now() - timedelta(days=2))
    kept = audit.record(audit.ENGINE, "swap.start", "swap", 2)
    async_to_sync(prune_retained)()  # what the retention loop awaits every hour
    assert list(AuditEvent.objects.values_list("pk", flat=True)) == [kept.pk]


# -- GET /api/audit ----------------------------------------------------------------------
@pytest.fixture
def rows(db) -> list[AuditEvent]:
    """Five rows, oldest first, an hour apart, ending an hour ago."""
    base = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    made = []
    for offset, (who, action, kind, obj) in enumerate(
        [
            (audit.Actor(AuditEvent.KEY, "app1", "operator"), "swap.start", "swap", "1"),
            (audit.Actor(AuditEvent.KEY, "app1", "operator"), "swap.cancel", "swap", "1"),
            (audit.Actor(AuditEvent.PERSON, "alice", "admin"), "lock.acquire", "lock", "global"),
            (audit.for_key("app1", "inference", "192.0.2.9"), "broker.load", "catalog_model", "q"),
            (audit.Actor(AuditEvent.PERSON, "alice", "admin"), "key.create", "api_key", "7"),
        ]
    ):
        row = audit.record(who, action, kind, obj, after={"n": offset})
        AuditEvent.objects.filter(pk=row.pk).update(at=base + timedelta(hours=offset))
        made.append(AuditEvent.objects.get(pk=row.pk))
    return made


def listed(client: Client, query: str = "") -> list[str]:
    response = client.get(f"/api/audit{query}")
    assert response.status_code == 200, response.content
    return [e["action"] for e in response.json()["events"]]


def test_it_lists_newest_first_with_every_field_in_the_audit_api(admin_key_client, rows):
    response = admin_key_client.get("/api/audit")
    assert response.status_code == 200
    events = response.json()["events"]
    assert [e["action"] for e in events] == [
        "key.create",
        "broker.load",
        "lock.acquire",
        "swap.cancel",
        "swap.start",
    ]
    broker = events[1]
    assert (broker["actor_kind"], broker["actor_name"], broker["on_behalf_of"]) == (
        "engine",
        "engine",
        "app1",
    )
    assert broker["client_address"] == "192.0.2.9" and broker["after"] == {"n": 3}
    assert response.json()["next_before_id"] is None


def test_it_filters_the_audit_api_by_action_actor_object_and_time(admin_key_client, rows):
    assert listed(admin_key_client, "?action=swap.") == ["swap.cancel", "swap.start"]
    assert listed(admin_key_client, "?action=swap.start") == ["swap.start"]
    assert listed(admin_key_client, "?action=swap") == []  # exact unless it ends in "."
    # A key's own rows and the engine's on its behalf.
    assert listed(admin_key_client, "?actor=app1") == ["broker.load", "swap.cancel", "swap.start"]
    assert listed(admin_key_client, "?object_type=swap&object_id=1") == [
        "swap.cancel",
        "swap.start",
    ]
    window = "?since=2026-12-01T13:00:00Z&until=2026-12-01T15:00:00%2B00:00"
    assert listed(admin_key_client, window) == ["lock.acquire", "swap.cancel"]
    assert listed(admin_key_client, "?since=2026-12-01T15:00:00") == ["key.create", "broker.load"]
    assert listed(admin_key_client, "?until=2026-12-01") == []


def test_it_pages_the_audit_api_with_a_cursor(admin_key_client, rows):
    first = admin_key_client.get("/api/audit?limit=2").json()
    assert [e["action"] for e in first["events"]] == ["key.create", "broker.load"]
    second = admin_key_client.get(f"/api/audit?limit=2&before_id={first['next_before_id']}").json()
    assert [e["action"] for e in second["events"]] == ["lock.acquire", "swap.cancel"]
    third = admin_key_client.get(f"/api/audit?limit=2&before_id={second['next_before_id']}").json()
    assert [e["action"] for e in third["events"]] == ["swap.start"]
    assert third["next_before_id"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?since=yesterday", "since"),
        ("?until=2026-13-01T00:00:00Z", "until"),
        ("?limit=0", "limit"),
        ("?limit=501", "limit"),
        ("?before_id=x", "before_id"),
    ],
)
def test_it_names_a_bad_audit_api_filter_in_a_422(admin_key_client, query, field):
    response = admin_key_client.get(f"/api/audit{query}")
    assert response.status_code == 422, response.content
    assert response.json()["error"]["field"] == field


def test_it_refuses_the_audit_api_to_anyone_but_an_admin(key_client, client, bob):
    assert key_client.get("/api/audit").status_code == 403  # an operator key
    grant(bob, "operator")
    client.force_login(bob)
    assert client.get("/api/audit").status_code == 403


# -- the dashboard page ----------------------------------------------------------------
def test_it_shows_the_filtered_trail_on_the_audit_page_to_an_admin(alice_client, rows):
    page = alice_client.get("/audit/?action=swap.")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('class="audit-event"') == 2
    assert "swap.cancel" in html and "lock.acquire" not in html
    assert 'value="swap."' in html and 'id="nav-audit"' in html


def test_it_pages_on_the_audit_page_and_reports_a_bad_filter_there(alice_client, rows, monkeypatch):
    from arbiter.api import audit as audit_api

    monkeypatch.setattr(audit_api, "DEFAULT_LIMIT", 2)
    page = alice_client.get("/audit/?actor=app1").content.decode()
    assert page.count('class="audit-event"') == 2
    assert 'id="audit-older"' in page and f"before_id={rows[1].pk}" in page
    older = alice_client.get(f"/audit/?actor=app1&before_id={rows[1].pk}").content.decode()
    assert older.count('class="audit-event"') == 1 and 'id="audit-newest"' in older
    bad = alice_client.get("/audit/?since=soon")
    assert bad.status_code == 422 and "since:" in bad.content.decode()


def test_it_refuses_the_audit_page_to_an_operator(operator_bob):
    client = Client()
    client.force_login(operator_bob)
    assert client.get("/audit/").status_code == 403
    assert 'id="nav-audit"' not in client.get("/").content.decode()

"""Leases, cell by cell like the lock's table: acquire / extend / release / expire /
force-release over {held by the caller, held by another, released, expired} x {no
token, the lease's token, another lease's token, garbage}, and bad input naming its
field with nothing written.

"held by the caller": the lease under test, its token "valid"; "held by another": the
lease under test belongs to someone else (the caller's "valid" token is the caller's
own lease on the same model); "released" and "expired": the lease under test ended.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from arbiter.errors import InvalidInput, Locked
from arbiter.models import AuditEvent, Host, Service, Swap
from catalog.models import CatalogModel
from coordination import leases
from coordination.locks import hash_token, iso
from coordination.models import Lease, WebhookEvent

pytestmark = pytest.mark.django_db

STATES = ["held by caller", "held by another", "released", "expired"]
TOKENS = ["none", "valid", "other", "garbage"]
TTL = 60
TOKEN_HEADER = "X-Arbiter-Lease-Token"
GRANT_KEYS = {
    "id",
    "token",
    "model",
    "host",
    "holder",
    "purpose",
    "system",
    "created_at",
    "expires_at",
}
LEASE_KEYS = {
    "id",
    "model",
    "host",
    "holder",
    "purpose",
    "system",
    "created_at",
    "expires_at",
    "seconds_left",
    "held",
    "released_at",
    "released_by",
    "release_reason",
}


@pytest.fixture
def gpu(db):
    """Host gpu-a serving catalog model `llama` (its probe says so); `qwen` served nowhere."""
    host = Host.objects.create(name="gpu-a", address="127.0.0.1")
    Host.objects.create(name="gpu-b", address="127.0.0.2")
    for key in ("llama", "qwen"):
        CatalogModel.objects.create(key=key, hub_repo=f"org/{key}", served_name=key)
    Service.objects.create(
        name="vllm-a", host=host, base_url="http://127.0.0.1:1", loaded_model="llama"
    )
    return host


def build_state(state: str) -> tuple[int, dict[str, str | None]]:
    """The lease under test in `state`; its id and the caller's tokens by kind."""
    mine = leases.acquire("llama", "gpu-a", "caller", TTL, "tonight's eval")
    theirs = leases.acquire("llama", "gpu-a", "someone", TTL, "their job")
    target = mine if state != "held by another" else theirs
    if state == "released":
        leases.release(mine.id, mine.token)
    elif state == "expired":
        Lease.objects.filter(pk=mine.id).update(expires_at=timezone.now() - timedelta(seconds=5))
    tokens = {
        "none": None,
        "valid": mine.token,
        "other": theirs.token if target is mine else mine.token,
        "garbage": "not-a-token-anybody-was-given",
    }
    if state == "held by another":
        tokens["other"] = leases.acquire("qwen", "gpu-a", "caller", TTL).token
    return target.id, tokens


def row(lease_id: int) -> dict:
    return Lease.objects.filter(pk=lease_id).values().get()


def _headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {TOKEN_HEADER: token}


# --- acquire --------------------------------------------------------------------------


def test_it_grants_a_lease_with_a_token_shown_once_and_stored_hashed(gpu, key_client):
    response = key_client.post(
        "/api/leases",
        {
            "model": "llama",
            "host": "gpu-a",
            "holder": "eval",
            "ttl_seconds": 120,
            "purpose": "nightly eval",
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == GRANT_KEYS
    assert (body["model"], body["host"], body["holder"]) == ("llama", "gpu-a", "eval")
    stored = row(body["id"])
    assert stored["token_hash"] == hash_token(body["token"]) != body["token"]
    assert stored["released_at"] is None and stored["system"] is False
    listed = key_client.get("/api/leases").json()
    assert [lease["id"] for lease in listed] == [body["id"]]
    assert set(listed[0]) == LEASE_KEYS
    assert body["token"] not in key_client.get("/api/leases").content.decode()
    assert AuditEvent.objects.filter(action="lease.acquire", object_id=str(body["id"])).exists()


def test_it_leases_on_the_host_serving_the_model_when_no_host_is_named(gpu, key_client):
    response = key_client.post(
        "/api/leases",
        {"model": "llama", "holder": "eval", "ttl_seconds": 120},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["host"] == "gpu-a"


def test_it_counts_the_last_complete_swap_as_what_a_host_serves(gpu, key_client):
    service = Service.objects.get(name="vllm-a")
    Service.objects.filter(pk=service.pk).update(loaded_model="")
    Swap.objects.create(
        model=CatalogModel.objects.get(key="qwen"),
        model_key="qwen",
        host=gpu,
        service=service,
        state=Swap.COMPLETE,
        finished_at=timezone.now(),
    )
    assert leases.hosts_serving(CatalogModel.objects.get(key="qwen")) == [gpu]


@pytest.mark.parametrize("where", ["nowhere", "on two hosts"])
def test_it_answers_409_naming_host_when_the_serving_host_is_not_one(gpu, key_client, where):
    model = "qwen"
    if where == "on two hosts":
        model = "llama"
        Service.objects.create(
            name="vllm-b",
            host=Host.objects.get(name="gpu-b"),
            base_url="http://127.0.0.1:2",
            loaded_model="llama",
        )
    response = key_client.post(
        "/api/leases",
        {"model": model, "holder": "eval", "ttl_seconds": 120},
        content_type="application/json",
    )
    assert response.status_code == 409, response.content
    assert response.json()["error"]["field"] == "host"
    assert not Lease.objects.exists()


BAD_INPUT = [
    ({"ttl_seconds": 0}, 422, "ttl_seconds"),
    ({"ttl_seconds": -5}, 422, "ttl_seconds"),
    ({"ttl_seconds": 10**9}, 422, "ttl_seconds"),
    ({"ttl_seconds": "60"}, 422, "ttl_seconds"),
    ({"model": "no-such-model"}, 404, "model"),
    ({"host": "no-such-host"}, 404, "host"),
    ({"holder": ""}, 422, "holder"),
    ({"purpose": "x" * 501}, 422, "purpose"),
    ({"model": ""}, 422, "model"),
]


@pytest.mark.parametrize(("change", "status", "field"), BAD_INPUT)
def test_it_refuses_bad_input_naming_the_field_and_writes_nothing(
    gpu, key_client, change, status, field
):
    body = {"model": "llama", "host": "gpu-a", "holder": "eval", "ttl_seconds": 60, **change}
    audit_rows = AuditEvent.objects.count()
    response = key_client.post("/api/leases", body, content_type="application/json")
    assert response.status_code == status, response.content
    assert response.json()["error"]["field"] == field
    assert not Lease.objects.exists()
    assert AuditEvent.objects.count() == audit_rows


def test_it_uses_the_locks_ttl_limit(gpu, settings):
    settings.ARBITER_LOCK_MAX_TTL = 100
    with pytest.raises(InvalidInput):
        leases.acquire("llama", "gpu-a", "eval", 101)
    assert leases.acquire("llama", "gpu-a", "eval", 100).expires_at is not None


# --- extend: PATCH /api/leases/{id} ---------------------------------------------------

EXTEND_EXPECTED = (
    {(state, kind): 409 for state in STATES for kind in TOKENS}
    | {(state, "none"): 428 for state in STATES}
    | {
        ("held by caller", "valid"): 200,
        ("held by another", "other"): 409,
        ("released", "valid"): 412,
        ("expired", "valid"): 412,
    }
)


@pytest.mark.parametrize("token_kind", TOKENS)
@pytest.mark.parametrize("state", STATES)
def test_it_answers_extend_per_the_table(gpu, key_client, state, token_kind):
    lease_id, tokens = build_state(state)
    before = row(lease_id)
    response = key_client.patch(
        f"/api/leases/{lease_id}",
        {"ttl_seconds": 300},
        content_type="application/json",
        headers=_headers(tokens[token_kind]),
    )
    expected = EXTEND_EXPECTED[(state, token_kind)]
    assert response.status_code == expected, response.content
    after = row(lease_id)
    body = response.json()
    for token in tokens.values():
        if token:
            assert token not in response.content.decode()
    if expected == 200:
        assert set(body) == LEASE_KEYS
        assert after["expires_at"] > before["expires_at"]
        assert body["expires_at"] == iso(after["expires_at"])
        assert after["token_hash"] == before["token_hash"]
    else:
        assert body["error"]["field"] == TOKEN_HEADER
        assert after == before


# --- release: DELETE /api/leases/{id} -------------------------------------------------

RELEASE_EXPECTED = {
    (state, kind): 428 if kind == "none" else 409 for state in STATES for kind in TOKENS
} | {("held by caller", "valid"): 204}


@pytest.mark.parametrize("token_kind", TOKENS)
@pytest.mark.parametrize("state", STATES)
def test_it_answers_release_per_the_table(gpu, key_client, state, token_kind):
    lease_id, tokens = build_state(state)
    before = row(lease_id)
    response = key_client.delete(f"/api/leases/{lease_id}", headers=_headers(tokens[token_kind]))
    expected = RELEASE_EXPECTED[(state, token_kind)]
    assert response.status_code == expected, response.content
    after = row(lease_id)
    if expected == 204:
        assert after["released_at"] is not None
        assert after["released_by"] == "caller"
        assert after["release_reason"] == "released by the holder"
        assert lease_id not in [lease.pk for lease in leases.active_leases()]
    else:
        body = response.json()
        assert body["error"]["field"] == TOKEN_HEADER
        assert after == before


def test_it_answers_404_naming_lease_id_for_an_unknown_lease(gpu, key_client):
    response = key_client.delete("/api/leases/999", headers=_headers("x"))
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "lease_id"


# --- expire: only the TTL -------------------------------------------------------------


def test_it_expires_a_lease_by_its_ttl_only(gpu):
    grant = leases.acquire("llama", "gpu-a", "eval", TTL)
    assert leases.blocking_lease("llama", "gpu-a") is not None
    later = timezone.now() + timedelta(seconds=TTL + 1)
    assert not leases.active_leases(later).exists()
    Lease.objects.filter(pk=grant.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert leases.blocking_lease("llama", "gpu-a") is None
    assert row(grant.id)["released_at"] is None  # nothing swept it: the clock ended it


# --- the gate -------------------------------------------------------------------------

GATE_EXPECTED = (
    {(state, kind): "free" for state in ("released", "expired") for kind in TOKENS}
    | {("held by caller", kind): "locked" for kind in TOKENS}
    | {("held by caller", "valid"): "free"}
    | {("held by another", kind): "locked" for kind in TOKENS}
)


@pytest.mark.parametrize("token_kind", TOKENS)
@pytest.mark.parametrize("state", STATES)
def test_it_gates_per_the_table(gpu, state, token_kind):
    lease_id, tokens = build_state(state)
    if state != "held by another":
        # only the lease under test holds llama
        Lease.objects.filter(model_key="llama").exclude(pk=lease_id).update(
            released_at=timezone.now()
        )
    else:
        Lease.objects.filter(model_key="llama", holder="caller").update(released_at=timezone.now())
    expected = GATE_EXPECTED[(state, token_kind)]
    if expected == "free":
        leases.assert_not_leased("llama", "gpu-a", tokens[token_kind])
        assert leases.blocking_lease("llama", "gpu-a", tokens[token_kind]) is None
        return
    with pytest.raises(Locked) as raised:
        leases.assert_not_leased("llama", "gpu-a", tokens[token_kind])
    error = raised.value
    assert error.status == 423
    blocked = error.extra["blocked_by"]
    lease = Lease.objects.get(pk=lease_id)
    assert blocked == {
        "lease_id": lease.pk,
        "holder": lease.holder,
        "purpose": lease.purpose,
        "expires_at": iso(lease.expires_at),
        "model": "llama",
        "host": "gpu-a",
        "system": False,
    }
    assert 1 <= int(error.headers["Retry-After"]) <= TTL


# --- force release --------------------------------------------------------------------


def test_it_lets_an_admin_person_force_release_a_lease_audited(gpu, admin_person):
    grant = leases.acquire("llama", "gpu-a", "eval", TTL, "nightly")
    response = admin_person.post(
        f"/api/leases/{grant.id}/force-release",
        {"reason": "stuck job"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["held"] is False and body["release_reason"] == "stuck job"
    assert leases.blocking_lease("llama", "gpu-a") is None
    audit = AuditEvent.objects.get(action="lease.force_release")
    assert audit.before["holder"] == "eval" and audit.after["reason"] == "stuck job"
    # The holder's webhook receivers hear of it, as for the lock's force release.
    event = WebhookEvent.objects.get(event_type="lease.force_released")
    assert event.payload == {
        "lease_id": grant.id,
        "model": "llama",
        "host": "gpu-a",
        "old_holder": "eval",
        "purpose": "nightly",
        "actor": event.payload["actor"],
        "reason": "stuck job",
        "at": event.payload["at"],
    }
    assert event.payload["actor"] and event.payload["at"]
    again = admin_person.post(
        f"/api/leases/{grant.id}/force-release", {}, content_type="application/json"
    )
    assert again.status_code == 409


def test_it_refuses_force_release_to_a_key(gpu, admin_key_client):
    grant = leases.acquire("llama", "gpu-a", "eval", TTL)
    before = row(grant.id)
    response = admin_key_client.post(
        f"/api/leases/{grant.id}/force-release", {}, content_type="application/json"
    )
    assert response.status_code == 403
    assert row(grant.id) == before
    assert not AuditEvent.objects.filter(action="lease.force_release").exists()


def test_it_lists_held_leases_in_status_never_tokens(gpu, key_client):
    grant = leases.acquire("llama", "gpu-a", "eval", TTL, "nightly")
    response = key_client.get("/api/status")
    assert response.status_code == 200
    listed = response.json()["leases"]
    assert [(lease["id"], lease["holder"], lease["purpose"]) for lease in listed] == [
        (grant.id, "eval", "nightly")
    ]
    assert grant.token not in response.content.decode()
    assert hash_token(grant.token) not in response.content.decode()

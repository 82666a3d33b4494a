"""Key quotas where keys are made and shown: `create_api_key`, `POST /api/keys` (422 naming
the field), `GET /api/keys` and `/api/status` with usage, the keys screen, the clients panel."""

from datetime import datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from arbiter.broker import quotas
from arbiter.models import ApiKey, KeyUsage

pytestmark = pytest.mark.django_db


def test_it_sets_both_quotas_from_the_command():
    out = StringIO()
    err = StringIO()
    call_command(
        "create_api_key",
        "app1",
        "--role",
        "inference",
        "--requests-per-minute",
        "5",
        "--tokens-per-day",
        "100000",
        stdout=out,
        stderr=err,
    )
    key = ApiKey.objects.verify(out.getvalue().strip())
    assert (key.requests_per_minute, key.tokens_per_day) == (5, 100_000)
    assert "5 requests per minute, 100000 tokens per day" in err.getvalue()
    out = StringIO()
    call_command("create_api_key", "plain", stdout=out, stderr=StringIO())
    plain = ApiKey.objects.verify(out.getvalue().strip())
    assert (plain.requests_per_minute, plain.tokens_per_day) == (None, None)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--requests-per-minute", "0"], "--requests-per-minute"),
        (["--requests-per-minute", str(2**31)], "--requests-per-minute"),
        (["--tokens-per-day", "-3"], "--tokens-per-day"),
    ],
)
def test_it_refuses_bad_quotas_in_the_command(args, words):
    with pytest.raises(CommandError, match=words):
        call_command("create_api_key", "x", *args, stdout=StringIO(), stderr=StringIO())
    assert not ApiKey.objects.exists()


def use(key: ApiKey, requests: int, tokens: int, now: datetime | None = None) -> None:
    """Usage as the broker records it."""
    for _ in range(requests):
        assert quotas.take_request(key.pk, key.requests_per_minute or 10**6, now)
    quotas.add_tokens(key.pk, tokens, now)


def test_it_takes_quotas_in_post_keys_and_shows_usage_in_get_keys(admin_person):
    response = admin_person.post(
        "/api/keys",
        {"name": "app1", "role": "inference", "requests_per_minute": 5, "tokens_per_day": 1000},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["requests_per_minute"], body["tokens_per_day"]) == (5, 1000)
    assert body["usage"] == {"requests_this_minute": 0, "tokens_today": 0}
    key = ApiKey.objects.get(pk=body["id"])
    assert (key.requests_per_minute, key.tokens_per_day) == (5, 1000)
    use(key, requests=2, tokens=321)
    # Yesterday's tokens and an earlier minute's requests are not today's usage.
    use(key, requests=4, tokens=999, now=timezone.now() - timedelta(days=1))
    plain = admin_person.post("/api/keys", {"name": "ci"}, content_type="application/json")
    listed = {k["name"]: k for k in admin_person.get("/api/keys").json()}
    assert listed["app1"]["usage"] == {"requests_this_minute": 2, "tokens_today": 321}
    assert listed["app1"]["requests_per_minute"] == 5
    assert plain.json()["usage"] is None and listed["ci"]["usage"] is None
    assert listed["ci"]["requests_per_minute"] is None


@pytest.mark.parametrize(
    "data, field",
    [
        ({"name": "x", "requests_per_minute": 0}, "requests_per_minute"),
        ({"name": "x", "requests_per_minute": -1}, "requests_per_minute"),
        ({"name": "x", "requests_per_minute": "5"}, "requests_per_minute"),
        ({"name": "x", "requests_per_minute": 1.5}, "requests_per_minute"),
        ({"name": "x", "requests_per_minute": 2**31}, "requests_per_minute"),
        ({"name": "x", "tokens_per_day": 0}, "tokens_per_day"),
        ({"name": "x", "tokens_per_day": True}, "tokens_per_day"),
        ({"name": "x", "tokens_per_day": 2**63}, "tokens_per_day"),
    ],
)
def test_it_names_a_bad_quota_in_post_keys(admin_person, data, field):
    response = admin_person.post("/api/keys", data, content_type="application/json")
    assert response.status_code == 422, response.content
    assert response.json()["error"]["field"] == field
    assert not ApiKey.objects.exists()


def test_it_puts_the_quota_fields_and_the_usage_on_the_keys_screen(admin_person):
    key, _raw = ApiKey.objects.create_key(
        name="app1", role="inference", requests_per_minute=5, tokens_per_day=1000
    )
    ApiKey.objects.create_key(name="plain")
    use(key, requests=3, tokens=250)
    page = admin_person.get("/keys/").content.decode()
    assert 'name="requests_per_minute"' in page and 'name="tokens_per_day"' in page
    table = admin_person.get("/fragments/keys").content.decode()
    assert "3 / 5 requests this minute" in table and "250 / 1000 tokens today" in table
    assert '<span class="muted">none</span>' in table  # the key without quotas


def test_it_shows_usage_against_limits_in_the_clients_panel_and_status(bob):
    key, _raw = ApiKey.objects.create_key(name="app1", role="inference", requests_per_minute=5)
    ApiKey.objects.create_key(name="plain")
    revoked, _raw = ApiKey.objects.create_key(name="gone", tokens_per_day=9)
    ApiKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    use(key, requests=4, tokens=0)
    client = Client()
    client.force_login(bob)
    html = client.get("/fragments/clients").content.decode()
    assert f'id="quota-key-{key.pk}"' in html and "4 / 5" in html
    assert "plain" not in html and "gone" not in html
    status = client.get("/api/status").json()["key_quotas"]
    assert status == [
        {
            "key_id": key.pk,
            "name": "app1",
            "requests_per_minute": 5,
            "tokens_per_day": None,
            "requests_this_minute": 4,
            "tokens_today": 0,
        }
    ]


def test_it_drops_old_minute_rows_when_a_new_minute_starts():
    key, _raw = ApiKey.objects.create_key(name="app1", requests_per_minute=5)
    long_ago = timezone.now() - timedelta(hours=3)
    assert quotas.take_request(key.pk, 5, long_ago)
    assert quotas.take_request(key.pk, 5)
    assert list(KeyUsage.objects.filter(key=key).values_list("requests", flat=True)) == [1]

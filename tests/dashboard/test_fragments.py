"""Fragment views for the polling fallback."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from arbiter.models import Host, Service

pytestmark = pytest.mark.django_db


def test_it_serves_the_hosts_fragment_to_a_logged_in_user(bob):
    client = Client()
    client.force_login(bob)
    response = client.get("/fragments/hosts", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b'id="hosts-panel"' in response.content


@pytest.mark.parametrize("path", ["/fragments/hosts", "/fragments/services"])
def test_it_sends_a_logged_out_poll_to_the_login_page(path):
    response = Client().get(path, headers={"HX-Request": "true"})
    # Not a 302 that htmx would follow and swap the login form into the panel.
    assert response.status_code == 204
    assert response["HX-Redirect"] == "/login/?next=/"


def test_it_redirects_a_plain_request_to_login():
    response = Client().get("/fragments/hosts")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_it_shows_broker_clients(bob):
    from arbiter.broker.accounting import accounting

    accounting.reset()
    client_id = accounting.started("eval-runner")
    accounting.finished(client_id, 200, 10, model="qwen3-600m")
    client = Client()
    client.force_login(bob)
    html = client.get("/fragments/clients").content.decode()
    assert "eval-runner" in html and "qwen3-600m (1)" in html
    status_client = client.get("/api/status").json()["clients"]
    assert status_client[0]["client"] == "eval-runner"
    assert status_client[0]["requests"] == 1
    accounting.reset()


def two_tiles(client: Client, health: str, first: dict, second: dict) -> tuple[str, str]:
    """Two services on one host, `first` and `second` their own fields (a name each):
    the HTML of each one's tile on the services fragment."""
    host = Host.objects.create(name="gpu-1", address="127.0.0.1")
    common = {"host": host, "base_url": "http://127.0.0.1:9", "health": health}
    Service.objects.create(**first, **common)
    Service.objects.create(**second, **common)
    html = client.get("/fragments/services").content.decode()
    one, two = f'id="service-{first["name"]}"', f'id="service-{second["name"]}"'
    return html[html.index(one) : html.index(two)], html[html.index(two) :]


def test_it_says_on_its_tile_that_the_broker_unloaded_a_service(bob):
    client = Client()
    client.force_login(bob)
    asleep, awake = two_tiles(
        client,
        "up",
        {
            "name": "asleep",
            "loaded_model": "chat-a",
            "unloaded_at": timezone.now() - timedelta(minutes=3),
        },
        {"name": "awake", "loaded_model": "chat-b"},
    )
    assert 'class="badge badge-unloaded"' in asleep and "unloaded 3 min" in asleep
    assert "badge-unloaded" not in awake


def test_it_says_on_its_tile_that_the_restart_policy_gave_up_and_why(bob):
    client = Client()
    client.force_login(bob)
    crashed, fine = two_tiles(
        client,
        "down",
        {
            "name": "crashed",
            "failed_reason": "chat-a crashed after it was ready and 3 restart(s) within 600 s ...",
            "failed_at": timezone.now(),
        },
        {"name": "fine"},
    )
    assert "restart gave up" in crashed and "3 restart(s) within 600 s" in crashed
    assert "restart gave up" not in fine
    status = {s["name"]: s for s in client.get("/api/status").json()["services"]}
    assert status["crashed"]["failed_reason"].startswith("chat-a crashed")
    assert status["crashed"]["failed_at"] is not None and status["fine"]["failed_at"] is None


@pytest.mark.parametrize("path", ["/", "/catalog/"])
def test_it_prints_no_template_comment_as_text(bob, path):
    # Django's `{# #}` ends at the line's end: a multi-line one is printed verbatim.
    client = Client()
    client.force_login(bob)
    html = client.get(path).content.decode()
    assert "{#" not in html and "#}" not in html

"""Fragment views for the polling fallback."""

import pytest
from django.test import Client

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

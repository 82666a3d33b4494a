"""Leases on the dashboard, next to the lock banner: `#lease-panel` in the page, its poll
view, the socket's full state and a push when a lease changes; the force-release button
for admins only (a pushed render carries it in an admin block each socket cuts), as an
htmx action doing what the API's force release does."""

import pytest
from asgiref.sync import sync_to_async

from arbiter.models import AuditEvent
from arbiter.roles import ADMIN, OPERATOR, READ
from coordination import leases
from dashboard.consumers import full_state
from dashboard.panels.leases import lease_panel
from dashboard.roles import for_level
from tests.conftest import grant
from tests.coordination.test_lease_matrix import gpu  # noqa: F401 - the fixture
from tests.dashboard.test_coordination_panels import (
    _connected_dashboard,
    logged_in,
    opening_tag,
    section,
)

FORCE = 'hx-post="/actions/leases/'


def person(django_user_model, role: str):
    return grant(django_user_model.objects.create_user(f"{role}-p", password="pw"), role)


@pytest.mark.django_db
def test_it_is_hidden_while_no_lease_is_held(gpu):  # noqa: F811
    assert " hidden" in opening_tag(lease_panel(), "lease-panel")


@pytest.mark.django_db
def test_it_shows_the_leases_next_to_the_lock_banner(gpu, django_user_model):  # noqa: F811
    lease = leases.acquire("llama", "gpu-a", "nightly-eval", 600, "eval <b>42</b>")
    html = logged_in(person(django_user_model, "viewer")).get("/").content.decode()
    assert html.index('id="lock-banner"') < html.index('id="lease-panel"')
    panel = section(html, "lease-panel")
    assert "llama" in panel and "gpu-a" in panel and "nightly-eval" in panel
    assert "eval &lt;b&gt;42&lt;/b&gt;" in panel  # escaped
    assert f'id="lease-{lease.id}"' in panel and "data-seconds-left" in panel
    assert FORCE not in panel  # a viewer gets no button
    assert lease.token not in html


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("role", "button"), [("viewer", False), ("operator", False), ("admin", True)]
)
def test_it_offers_force_release_to_admins_only(gpu, django_user_model, role, button):  # noqa: F811
    leases.acquire("llama", "gpu-a", "nightly-eval", 600)
    client = logged_in(person(django_user_model, role))
    polled = client.get("/fragments/leases", headers={"HX-Request": "true"}).content.decode()
    assert (FORCE in polled) is button
    pushed = full_state()
    assert 'hx-swap-oob="true"' in opening_tag(pushed, "lease-panel")
    level = {"viewer": READ, "operator": OPERATOR, "admin": ADMIN}[role]
    assert (FORCE in for_level(pushed, level)) is button


@pytest.mark.django_db
def test_it_force_releases_from_the_panel_audited(gpu, django_user_model):  # noqa: F811
    lease = leases.acquire("llama", "gpu-a", "nightly-eval", 600)
    client = logged_in(person(django_user_model, "admin"))
    response = client.post(f"/actions/leases/{lease.id}/force-release", {"reason": "stuck"})
    assert response.status_code == 200, response.content
    assert " hidden" in opening_tag(response.content.decode(), "lease-panel")
    assert leases.blocking_lease("llama", "gpu-a") is None
    assert AuditEvent.objects.get(action="lease.force_release").after["reason"] == "stuck"
    again = client.post(f"/actions/leases/{lease.id}/force-release", {"reason": ""})
    assert again.status_code == 409
    assert again["HX-Retarget"] == "#lease-error"


@pytest.mark.django_db
def test_it_refuses_force_release_to_an_operator(gpu, django_user_model):  # noqa: F811
    lease = leases.acquire("llama", "gpu-a", "nightly-eval", 600)
    client = logged_in(person(django_user_model, "operator"))
    response = client.post(f"/actions/leases/{lease.id}/force-release", {"reason": "mine"})
    assert response.status_code == 403
    assert leases.blocking_lease("llama", "gpu-a") is not None


@pytest.mark.django_db(transaction=True)
async def test_it_pushes_a_lease_change_once_it_commits(gpu):  # noqa: F811
    communicator = await _connected_dashboard()
    try:
        await sync_to_async(leases.acquire)("llama", "gpu-a", "nightly-eval", 600, "eval")
        pushed = await communicator.receive_from(timeout=5)
        panel = section(pushed, "lease-panel")
        assert 'hx-swap-oob="true"' in panel and "nightly-eval" in panel
    finally:
        await communicator.disconnect()

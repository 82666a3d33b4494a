"""The dashboard and the catalog show each person only the actions their role allows
(dashboard/roles.py): operator actions to operators and admins, admin actions to admins,
none to viewers - in pages, in poll views, and in fragments pushed over the socket."""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.template import Context, Template
from django.template.loader import render_to_string
from django.test import Client

from arbiter.asgi import application
from arbiter.models import ApiKey, Host, Service
from catalog.models import CatalogModel
from coordination.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from dashboard.live import publish_fragment
from dashboard.panels import coordination
from dashboard.roles import for_level

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
PEOPLE = ["viewer", "operator", "admin"]
SERVICE_TOGGLE = 'class="service-toggle"'


def person(django_user_model, role: str):
    """A person in the group of that name (the roles migration creates the groups)."""
    user = django_user_model.objects.create_user(f"{role}-person", password="pw-123456")
    group, _ = Group.objects.get_or_create(name=role)
    user.groups.add(group)
    return user


def client_for(django_user_model, role: str) -> Client:
    client = Client()
    client.force_login(person(django_user_model, role))
    return client


def sees(role: str, needed: str) -> bool:
    return PEOPLE.index(role) >= PEOPLE.index(needed)


@pytest.fixture
def cluster(db):
    host = Host.objects.create(name="gpu-a", address="10.0.0.1")
    Service.objects.create(name="svc-on", host=host, base_url="http://10.0.0.1:8000")
    Service.objects.create(
        name="svc-off", host=host, base_url="http://10.0.0.1:8001", disabled=True
    )
    return host


@pytest.fixture
def webhook(db):
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example/a", secret_encrypted="x")
    event = WebhookEvent.objects.create(event_id="evt_1", event_type="swap_complete", payload={})
    WebhookDelivery.objects.create(endpoint=endpoint, event=event, status=WebhookDelivery.FAILED)
    return endpoint


# -- the marker mechanism ----------------------------------------------------------------


def test_it_keeps_every_block_between_markers_in_a_render_without_a_person():
    html = Template('{% load dashboard_tags %}a{% needs "admin" %}B{% endneeds %}c').render(
        Context({})
    )
    assert html == "a<!--needs:admin-->B<!--/needs:admin-->c"
    assert for_level(html, "admin") == "aBc"
    assert for_level(html, "operator") == "ac"
    assert for_level(html, None) == "ac"


def test_it_decides_at_once_in_a_render_for_a_person():
    template = Template('{% load dashboard_tags %}{% needs "operator" %}X{% endneeds %}')
    assert template.render(Context({"viewer_level": "operator"})) == "X"
    assert template.render(Context({"viewer_level": "read"})) == ""
    assert template.render(Context({"viewer_level": None})) == ""


def test_it_does_not_let_user_text_forge_a_marker():
    html = Template(
        '{% load dashboard_tags %}{{ name }}{% needs "admin" %}B{% endneeds %}{{ name }}'
    ).render(Context({"name": "<!--/needs:admin-->"}))
    assert for_level(html, "read").count("&lt;!--/needs:admin--&gt;") == 2
    assert "B" not in for_level(html, "read")


# -- each action, by role, through the poll views and pages --------------------------------


@pytest.mark.parametrize("role", PEOPLE)
def test_it_shows_service_disable_and_enable_to_admins_only(django_user_model, cluster, role):
    html = client_for(django_user_model, role).get("/fragments/services").content.decode()
    assert 'id="service-svc-on"' in html and 'id="service-disabled-svc-off"' in html
    assert (html.count(SERVICE_TOGGLE) == 2) is sees(role, "admin")
    assert (SERVICE_TOGGLE in html) is sees(role, "admin")


@pytest.mark.parametrize("role", PEOPLE)
def test_it_shows_swap_cancel_to_operators(role):
    swap = {"id": 7, "state": "pulling", "active": True, "model": "m", "host": "h", "steps": []}
    html = render_to_string(
        "dashboard/partials/swap_card.html", {"swap": swap, "viewer_level": level(role)}
    )
    assert 'id="swap-7"' in html
    assert ("swap-cancel" in html) is sees(role, "operator")


@pytest.mark.parametrize("role", PEOPLE)
def test_it_lets_operators_read_webhooks_and_admins_change_them(django_user_model, webhook, role):
    html = client_for(django_user_model, role).get("/fragments/webhooks").content.decode()
    assert ('id="webhook-panel"' in html) is sees(role, "operator")
    assert ("https://hooks.example/a" in html) is sees(role, "operator")
    assert ("Redeliver" in html) is sees(role, "admin")
    assert ("webhook-delete" in html) is sees(role, "admin")


@pytest.mark.parametrize("role", PEOPLE)
def test_it_offers_force_release_to_admins(django_user_model, role):
    user = person(django_user_model, role)
    assert coordination.page_context(user)["can_force_release"] is sees(role, "admin")


@pytest.mark.parametrize("role", PEOPLE)
def test_it_shows_the_catalog_swap_and_add_forms_to_operators(django_user_model, cluster, role):
    CatalogModel.objects.create(
        key="tiny", display_name="Tiny", hub_repo="org/tiny", served_name="tiny"
    )
    html = client_for(django_user_model, role).get("/catalog/").content.decode()
    assert 'id="model-tiny"' in html
    assert ("swap-form" in html) is sees(role, "operator")
    assert ('id="catalog-add"' in html) is sees(role, "operator")


@pytest.mark.parametrize("role", PEOPLE)
def test_it_shows_disk_download_and_delete_to_operators(role):
    entries = [
        {"host": "a", "present": True, "size_bytes": 10, "detail": "", "error": ""},
        {"host": "b", "present": False, "size_bytes": 0, "detail": "", "error": ""},
    ]
    html = for_level(
        render_to_string(
            "catalog/partials/model_disk.html",
            {"model_key": "tiny", "entries": entries, "hub": True, "delete_url": "/d"},
        ),
        level(role),
    )
    assert 'data-host="a"' in html
    assert ("disk-delete" in html) is sees(role, "operator")
    assert ("disk-download" in html) is sees(role, "operator")


def test_it_does_not_let_a_viewer_post_the_catalog_add_form(django_user_model, db):
    response = client_for(django_user_model, "viewer").post("/catalog/add/hub", {})
    assert response.status_code == 403
    assert not CatalogModel.objects.exists()


@pytest.mark.parametrize("role", PEOPLE)
def test_it_links_the_admin_screens_on_the_page_by_role(django_user_model, cluster, role):
    html = client_for(django_user_model, role).get("/").content.decode()
    assert ('id="nav-webhooks"' in html) is sees(role, "operator")
    assert ('id="nav-keys"' in html) is sees(role, "admin")
    assert (SERVICE_TOGGLE in html) is sees(role, "admin")


def test_it_treats_a_staff_user_without_groups_as_an_admin(alice, cluster):
    client = Client()
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert 'id="nav-keys"' in html and SERVICE_TOGGLE in html


# -- the admin screens -----------------------------------------------------------------


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), ("operator", 403), ("admin", 200)])
def test_it_keeps_the_keys_page_for_admins(django_user_model, role, status):
    ApiKey.objects.create_key(name="cron")
    response = client_for(django_user_model, role).get("/keys/")
    assert response.status_code == status
    if status == 200:
        html = response.content.decode()
        assert 'id="key-form"' in html and "cron" in html and "key-revoke" in html
    assert client_for_again(django_user_model, role).get("/fragments/keys").status_code == status


def client_for_again(django_user_model, role: str) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.get(username=f"{role}-person"))
    return client


def test_it_shows_role_models_expiry_and_revocation_in_the_keys_table(django_user_model):
    key, _raw = ApiKey.objects.create_key(name="chat-app")
    ApiKey.objects.filter(pk=key.pk).update(role="inference", allowed_models=["tiny", "big"])
    html = client_for(django_user_model, "admin").get("/fragments/keys").content.decode()
    assert 'id="keys-table"' in html
    assert ">inference<" in html and "<code>tiny</code>, <code>big</code>" in html
    assert key.visible_prefix in html and "never" in html


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), ("operator", 200), ("admin", 200)])
def test_it_shows_the_webhooks_page_read_only_to_operators_and_editable_to_admins(
    django_user_model, webhook, role, status
):
    response = client_for(django_user_model, role).get("/webhooks/")
    assert response.status_code == status
    if status == 200:
        html = response.content.decode()
        assert "https://hooks.example/a" in html
        assert ('id="webhook-form"' in html) is sees(role, "admin")
        assert ("Redeliver" in html) is sees(role, "admin")


# -- pushes: one render for everyone, cut per socket ---------------------------------------


def level(role: str) -> str:
    return {"viewer": "read", "operator": "operator", "admin": "admin"}[role]


async def _socket_for(role: str) -> WebsocketCommunicator:
    @sync_to_async
    def login() -> str:
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user(f"{role}-socket", password="pw-123456")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        client = Client()
        client.login(username=f"{role}-socket", password="pw-123456")
        return client.cookies["sessionid"].value

    cookie = f"sessionid={await login()}".encode()
    communicator = WebsocketCommunicator(
        application, "/ws/dashboard/", headers=[ORIGIN, (b"cookie", cookie)]
    )
    connected, _ = await communicator.connect()
    assert connected
    return communicator


@pytest.mark.django_db(transaction=True)
async def test_it_cuts_the_pushed_panels_for_the_person_on_each_socket():
    @sync_to_async
    def setup() -> str:
        host = Host.objects.create(name="gpu-a", address="10.0.0.1")
        Service.objects.create(name="svc-on", host=host, base_url="http://10.0.0.1:8000")
        from dashboard.panels.cluster import services_panel

        return services_panel(oob=True)

    pushed = await setup()
    assert "<!--needs:admin-->" in pushed  # the engine renders for nobody in particular
    sockets = {role: await _socket_for(role) for role in PEOPLE}
    for role, socket in sockets.items():
        first = await socket.receive_from(timeout=5)
        assert 'id="services-panel"' in first
        assert (SERVICE_TOGGLE in first) is sees(role, "admin")
        assert "needs:" not in first

    await publish_fragment(pushed)
    for role, socket in sockets.items():
        html = await socket.receive_from(timeout=5)
        assert 'id="service-svc-on"' in html
        assert (SERVICE_TOGGLE in html) is sees(role, "admin")
        assert "needs:" not in html
        await socket.disconnect()

"""The dashboard socket: authenticated, origin-checked, full state first, then pushes."""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from arbiter.asgi import application
from arbiter.models import Host
from dashboard.live import publish_fragment

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1:8000")


async def _session_cookie(username: str) -> bytes:
    from django.test import Client

    @sync_to_async
    def login() -> str:
        get_user_model().objects.create_user(username, password="pw-123456")
        client = Client()
        client.login(username=username, password="pw-123456")
        return client.cookies["sessionid"].value

    return f"sessionid={await login()}".encode()


async def _connect(headers):
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)
    connected, _ = await communicator.connect()
    return communicator, connected


async def test_it_refuses_anonymous_sockets():
    communicator, connected = await _connect([ORIGIN])
    assert not connected
    await communicator.disconnect()


async def test_it_refuses_a_foreign_origin():
    cookie = await _session_cookie("carol")
    communicator, connected = await _connect(
        [(b"origin", b"http://evil.example"), (b"cookie", cookie)]
    )
    assert not connected
    await communicator.disconnect()


async def test_it_sends_the_full_state_on_connect_then_pushes():
    await sync_to_async(Host.objects.create)(name="spark-1", address="10.0.0.1")
    cookie = await _session_cookie("carol")
    communicator, connected = await _connect([ORIGIN, (b"cookie", cookie)])
    assert connected

    first = await communicator.receive_from(timeout=5)
    assert 'id="hosts-panel"' in first
    assert 'hx-swap-oob="true"' in first
    assert 'id="host-spark-1"' in first

    await publish_fragment('<div id="probe" hx-swap-oob="true">x</div>')
    assert await communicator.receive_from(timeout=5) == (
        '<div id="probe" hx-swap-oob="true">x</div>'
    )
    await communicator.disconnect()


async def test_it_closes_the_socket_when_its_session_logs_out():
    from django.test import Client

    @sync_to_async
    def login() -> Client:
        get_user_model().objects.create_user("dave", password="pw-123456")
        client = Client()
        client.login(username="dave", password="pw-123456")
        return client

    client = await login()
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    communicator, connected = await _connect([ORIGIN, (b"cookie", cookie)])
    assert connected
    await communicator.receive_from(timeout=5)  # the full state

    await sync_to_async(client.post)("/logout/")
    assert (await communicator.receive_output(timeout=5))["type"] == "websocket.close"

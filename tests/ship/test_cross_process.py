"""Production's process model on PostgreSQL + Redis: a swap log line published in one
process reaches browsers connected to other daphne processes.

Three processes share the database and Redis, as docs/DEPLOY.md sets them up:
`manage.py serve --no-huey` (daphne + engine, like arbiter-web.service), a plain
`daphne arbiter.asgi:application` (like arbiter-web@.service), and this test process,
which plays an engine running a swap: it writes a log line through the engine's own
journal (`SwapJournal`), which stores it and pushes the re-rendered swap panel to the
`dashboard` group over channels_redis. A logged-in WebSocket client on each daphne
process must receive the line.

Runs when DATABASE_URL (PostgreSQL) and REDIS_URL are set: `make test-postgres`, and
CI's run of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from arbiter.engine.swaps.journal import SwapJournal
from arbiter.models import Host, Swap
from tests.helpers import free_port
from tests.live_arbiter import healthy, inherited_env
from tests.ship.sources import ROOT
from tests.ship.ws_client import WebSocket

pytestmark = [
    pytest.mark.skipif(
        not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")),
        reason="needs PostgreSQL and Redis: set DATABASE_URL and REDIS_URL "
        "(`make test-postgres` does; CI runs it)",
    ),
    pytest.mark.django_db(transaction=True),
]

INVENTORY = """\
hosts:
  - name: ship-gpu
    address: 127.0.0.1
    ssh_port: {ssh_port}
    sampling: ssh
"""


def database_url() -> str:
    """The test database (pytest-django's), as the served processes must reach it."""
    db = connection.settings_dict
    credentials = quote(db["USER"] or "")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"])
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{credentials}@{host}/{db['NAME']}"


def served_env(data_dir: Path, inventory: Path) -> dict[str, str]:
    env = inherited_env()
    env.update(
        ARBITER_DATA_DIR=str(data_dir),
        ARBITER_CONFIG=str(inventory),
        ARBITER_PROCESS_COUNT="3",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        # Sessions are signed with it: the test logs in, the servers check the cookie.
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        DJANGO_SETTINGS_MODULE="arbiter.settings",
    )
    return env


@pytest.fixture
def daphne_processes(tmp_path) -> Iterator[dict[str, str]]:
    """{role: base URL} of the two served processes; both stopped afterwards."""
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(INVENTORY.format(ssh_port=free_port()))  # nobody listens there
    ports = {"engine": free_port(), "worker": free_port()}
    commands = {
        "engine": [
            sys.executable,
            "manage.py",
            "serve",
            "--no-huey",
            "--port",
            str(ports["engine"]),
        ],
        "worker": [
            str(Path(sys.executable).with_name("daphne")),
            "--bind",
            "127.0.0.1",
            "--port",
            str(ports["worker"]),
            "arbiter.asgi:application",
        ],
    }
    processes: dict[str, subprocess.Popen] = {}
    logs = {role: tmp_path / f"{role}.log" for role in commands}
    try:
        for role, command in commands.items():
            processes[role] = subprocess.Popen(
                command,
                cwd=ROOT,
                env=served_env(tmp_path / role, inventory),
                stdout=logs[role].open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        urls = {role: f"http://127.0.0.1:{port}" for role, port in ports.items()}
        deadline = time.monotonic() + 60
        while not all(healthy(url) for url in urls.values()):
            exited = [role for role, process in processes.items() if process.poll() is not None]
            assert not exited and time.monotonic() < deadline, "\n".join(
                f"--- {role}:\n{logs[role].read_text()}" for role in commands
            )
            time.sleep(0.2)
        yield urls
    finally:
        for process in processes.values():
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def read_until(socket: WebSocket, text: str, timeout: float) -> str:
    async def scan() -> str:
        while True:
            message = await socket.receive()
            if text in message:
                return message

    return await asyncio.wait_for(scan(), timeout)


async def test_it_delivers_a_swap_log_line_to_browsers_on_other_daphne_processes(
    daphne_processes, django_user_model
):
    assert connection.vendor == "postgresql"
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"].endswith("RedisChannelLayer")

    user = await django_user_model.objects.acreate(username="watcher", is_staff=True)
    client = Client()
    await sync_to_async(client.force_login)(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    host = await Host.objects.aget(name="ship-gpu")  # loaded by the engine process
    now = timezone.now()
    swap = await Swap.objects.acreate(
        model_key="ship-model",
        host=host,
        state=Swap.COMPLETE,
        started_at=now,
        finished_at=now,
        heartbeat_at=now,
    )

    sockets = {}
    for role, url in daphne_processes.items():
        sockets[role] = await WebSocket.connect(
            url.replace("http://", "ws://") + "/ws/dashboard/",
            {"Origin": url, "Cookie": f"{settings.SESSION_COOKIE_NAME}={session}"},
        )
        # Connecting renders the full state, our (finished) swap included.
        await read_until(sockets[role], "ship-model", timeout=15)
    try:
        line = f"shipped across processes {uuid.uuid4().hex}"
        journal = SwapJournal(swap.pk)
        await journal.load()
        await journal.say(line)  # stored, then pushed to the dashboard group via Redis

        for role, socket in sockets.items():
            message = await read_until(socket, line, timeout=15)
            assert 'id="swap-current"' in message, f"{role}: the swap panel was pushed"
    finally:
        for socket in sockets.values():
            await socket.close()

"""A broker process of its own, driven over stdin/stdout (tests/broker/test_shared_sleep_state.py).

It sets Django up against the test database it is given (BROKER_WORKER_DB, JSON), keeps
one event loop (so one BrokerState: its own routing-table cache, counters and loads, as a
web worker has) and answers one JSON command per line:

    {"op": "chat", "model": M, "key": K}   a chat completion through the broker's views
    {"op": "idle_unload"}                  the idle unloader's sweeps, its TTL later

Each answer is one JSON line. Nothing is shared with the test process but the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


def setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.settings")
    from django.conf import settings

    settings.DATABASES["default"].update(json.loads(os.environ["BROKER_WORKER_DB"]))
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    import django

    django.setup()


async def chat(client, model: str, key: str) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = await client.post(
        "/v1/chat/completions",
        json.dumps(body),
        "application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    return {"status": response.status_code, "body": response.content.decode(errors="replace")}


async def idle_unload() -> dict:
    from arbiter.broker.idle import IdleUnloader
    from arbiter.broker.state import get_state
    from tests.helpers import Clock

    state = get_state()
    clock = Clock()
    unloader = IdleUnloader(clock)
    table = await state.table.get(newer_than=time.monotonic())
    await unloader.sweep(table, state.residency)  # first seen now
    ttl = max(e.idle_unload_seconds or 0 for e in table.catalog)
    clock.now += ttl
    return {"unloaded": await unloader.sweep(table, state.residency)}


async def main() -> None:
    from django.test import AsyncClient

    client = AsyncClient()
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        if command["op"] == "chat":
            answer = await chat(client, command["model"], command["key"])
        elif command["op"] == "idle_unload":
            answer = await idle_unload()
        else:
            answer = {"error": f"unknown op {command['op']!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    setup()
    asyncio.run(main())

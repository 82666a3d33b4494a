"""The soak's load (tests/benchmarks/test_soak.py), all from the test's process: broker
clients, the swapper, logged-in dashboard viewers and a webhook receiver, each counting
what it did in one Tally.
"""

import asyncio
import hashlib
import hmac
import json
import os
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from tests.ship.ws_client import WebSocket

MINUTES = int(os.environ.get("ARBITER_SOAK_MINUTES", "30"))
# "A swap every few minutes": 2.5 min in a full soak; a short trial still gets several.
SWAP_EVERY_S = min(150.0, max(30.0, MINUTES * 60 / 6))
CLIENTS = 4
REQUESTS_PER_S = 2.0  # all clients together; the machine is shared, keep it moderate
STREAM_EVERY = 3  # every third request of a client is streamed
VIEWERS = 3
SWAP_HOST = "sim-b"
SWAP_MODELS = ("smollm2-instruct", "support-finetune")
# Loaded once before the clock starts and never swapped: the broker clients' models.
SERVED = {"sim-a": "qwen3-600m", "sim-gb10": "qwen3-600m-ngc"}
SWAP_TIMEOUT = 120.0


# -- the load ---------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the load did, counted as it ran."""

    broker_status: Counter = field(default_factory=Counter)
    broker_errors: Counter = field(default_factory=Counter)
    broker_streamed_ok: int = 0
    broker_latency_s: list[float] = field(default_factory=list)
    swaps: list[dict[str, Any]] = field(default_factory=list)
    swap_conflicts: int = 0
    pushes: Counter = field(default_factory=Counter)  # per viewer
    push_bytes: Counter = field(default_factory=Counter)
    viewer_reconnects: int = 0
    webhooks: list[dict[str, Any]] = field(default_factory=list)

    def broker_total(self) -> int:
        return sum(self.broker_status.values()) + sum(self.broker_errors.values())


class WebhookReceiver:
    """A loopback HTTP endpoint that checks each delivery's X-Spark-Signature."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.secret = ""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                expected = (
                    "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                )
                signed = hmac.compare_digest(expected, self.headers.get("X-Spark-Signature", ""))
                event = json.loads(body)
                receiver.tally.webhooks.append(
                    {
                        "type": event["type"],
                        "swap_id": event.get("data", {}).get("swap_id"),
                        "signed": signed,
                        "at": time.time(),
                    }
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/arbiter"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def run_swap(http: httpx.AsyncClient, model: str, host: str, tally: Tally) -> dict:
    """POST /api/swap and follow it until it ends; 409 (host busy) is retried."""
    started = time.monotonic()
    while True:
        response = await http.post("/api/swap", json={"model": model, "host": host})
        if response.status_code != 409:
            break
        tally.swap_conflicts += 1
        await asyncio.sleep(2)
    assert response.status_code == 202, response.text
    swap_id = response.json()["id"]
    deadline = time.monotonic() + SWAP_TIMEOUT
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        detail = (await http.get(f"/api/swap/{swap_id}")).json()
        if detail["state"] in ("complete", "failed", "cancelled"):
            break
    record = {
        "id": swap_id,
        "model": model,
        "host": host,
        "state": detail["state"],
        "error": detail.get("error", ""),
        "seconds": round(time.monotonic() - started, 1),
    }
    tally.swaps.append(record)
    return record


async def broker_client(
    url: str, key: str, client_id: str, models: list[str], stop: asyncio.Event, tally: Tally
) -> None:
    """Steady requests at REQUESTS_PER_S / CLIENTS, every STREAM_EVERY-th streamed."""
    rng = random.Random(client_id)
    headers = {"Authorization": f"Bearer {key}", "X-Client-Id": client_id}
    period = CLIENTS / REQUESTS_PER_S
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        await asyncio.sleep(rng.uniform(0, period))  # spread the clients' phases
        n = 0
        while not stop.is_set():
            n += 1
            stream = n % STREAM_EVERY == 0
            body = {
                "model": models[n % len(models)],
                "messages": [{"role": "user", "content": f"soak {client_id} #{n}"}],
                "max_tokens": 16,
                "stream": stream,
            }
            began = time.monotonic()
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    text = (await response.aread()).decode(errors="replace")
                tally.broker_status[response.status_code] += 1
                if response.status_code == 200 and stream and "[DONE]" in text:
                    tally.broker_streamed_ok += 1
                tally.broker_latency_s.append(time.monotonic() - began)
            except httpx.HTTPError as exc:
                tally.broker_errors[type(exc).__name__] += 1
            spent = time.monotonic() - began
            try:
                await asyncio.wait_for(
                    stop.wait(), max(0.0, period * rng.uniform(0.8, 1.2) - spent)
                )
            except TimeoutError:
                pass


def login_cookie(url: str, password: str) -> str:
    """A session id for `admin`, logged in through the login form like a browser."""
    with httpx.Client(base_url=url, timeout=30) as http:
        page = http.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token, page.text
        response = http.post(
            "/login/",
            data={
                "csrfmiddlewaretoken": token.group(1),
                "username": "admin",
                "password": password,
                "next": "/",
            },
        )
        assert response.status_code == 302, response.text
        return http.cookies["sessionid"]


async def viewer(url: str, session: str, name: str, stop: asyncio.Event, tally: Tally) -> None:
    """One open dashboard socket reading every push; reconnects if it is closed."""
    ws_url = url.replace("http://", "ws://") + "/ws/dashboard/"
    headers = {"Origin": url, "Cookie": f"sessionid={session}"}
    while not stop.is_set():
        socket = await WebSocket.connect(ws_url, headers)
        try:
            while not stop.is_set():
                receive = asyncio.ensure_future(socket.receive())
                halt = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({receive, halt}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    break
                halt.cancel()
                message = receive.result()
                tally.pushes[name] += 1
                tally.push_bytes[name] += len(message)
        except (ConnectionError, asyncio.IncompleteReadError):
            tally.viewer_reconnects += 1
            await asyncio.sleep(1)
        finally:
            await socket.close()


async def swapper(http: httpx.AsyncClient, stop: asyncio.Event, tally: Tally) -> None:
    """A swap on SWAP_HOST every SWAP_EVERY_S, alternating SWAP_MODELS (one already in)."""
    n = 0
    while True:
        try:
            await asyncio.wait_for(stop.wait(), SWAP_EVERY_S)
            return
        except TimeoutError:
            pass
        n += 1
        await run_swap(http, SWAP_MODELS[n % 2], SWAP_HOST, tally)

"""Priorities and fair share in the broker's wait queue (`arbiter.broker.queue`).

A real simulated backend behind a service being swapped (a swap row in `launching`):
requests wait for the swap, then the queue lets them through by class, round-robin by
client within a class, as the per-model concurrency limit leaves room.
"""

import asyncio
import json
import statistics
import time

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from arbiter.broker import queue as broker_queue
from arbiter.broker.accounting import accounting
from arbiter.broker.state import get_state
from arbiter.models import ApiKey, Service, Swap
from tests.broker.conftest import catalog_model, chat, register
from tests.helpers import KeyAsyncClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


@pytest.fixture
def backend(start_backend, transactional_db):
    backend = start_backend("chat-model")
    register("vllm-a", backend.url, loaded_model="chat-model")
    return backend


@sync_to_async
def swap_on(service_name: str) -> int:
    service = Service.objects.select_related("host").get(name=service_name)
    model = catalog_model("chat", "chat-model")
    swap = Swap.objects.create(
        model=model,
        model_key=model.key,
        host=service.host,
        service=service,
        state=Swap.LAUNCHING,
        phase=Swap.PULL,
        phase_started_at=timezone.now(),
    )
    return swap.pk


async def finish(swap_id: int) -> None:
    await Swap.objects.filter(pk=swap_id).aupdate(state=Swap.COMPLETE, finished_at=timezone.now())


@sync_to_async
def key_client(name: str, priority: str, **headers: str) -> KeyAsyncClient:
    _, raw = ApiKey.objects.create_key(name, role="inference", priority=priority)
    return KeyAsyncClient(raw, **headers)


@pytest.fixture
def granted(monkeypatch):
    """The order in which the queue lets tickets through: (priority, client)."""
    order: list[tuple[str, str]] = []
    original = broker_queue.ModelQueue._grant

    def spy(self, ticket):
        order.append((ticket.priority, ticket.client))
        original(self, ticket)

    monkeypatch.setattr(broker_queue.ModelQueue, "_grant", spy)
    return order


async def test_it_serves_interactive_before_a_batch_flood_and_alternates_clients(
    aclient, backend, settings, granted
):
    settings.ARBITER_BROKER_MAX_CONCURRENCY = 2
    settings.ARBITER_BROKER_QUEUE_SIZE = 300
    settings.ARBITER_BROKER_QUEUE_TIMEOUT = 120
    batch = await key_client("flood", "default", **{"X-Arbiter-Priority": "batch"})
    other_batch = await key_client("other", "batch")
    interactive = await key_client("human", "interactive")
    swap_id = await swap_on("vllm-a")
    settings.ARBITER_BROKER_TABLE_TTL = 0.0  # every request sees the swap row
    get_state().table.invalidate()
    waits: dict[str, list[float]] = {"interactive": [], "batch": []}

    async def send(client, cls: str, **headers):
        started = time.perf_counter()
        response = await client.post(
            "/v1/chat/completions", chat("chat-model"), "application/json", headers=headers
        )
        waits[cls].append(time.perf_counter() - started)
        return response

    async def waiting(count: int) -> None:
        """Until `count` requests hold a ticket (each waits for the swap)."""
        deadline = time.monotonic() + 60
        while get_state().queue.total < count:
            assert time.monotonic() < deadline, f"{get_state().queue.total} of {count} wait"
            await asyncio.sleep(0.02)

    flood = [asyncio.ensure_future(send(batch, "batch")) for _ in range(200)]
    await waiting(200)
    humans = [asyncio.ensure_future(send(interactive, "interactive")) for _ in range(5)]
    others = [asyncio.ensure_future(send(other_batch, "batch")) for _ in range(5)]
    await waiting(210)
    loaded_at = time.perf_counter()
    await finish(swap_id)
    responses = await asyncio.gather(*flood, *humans, *others)

    refused = [r.content for r in responses if r.status_code != 200]
    assert not refused, (len(refused), refused[0], granted[:12])
    # Every interactive request went before the batch backlog.
    assert [p for p, _ in granted[:5]] == ["interactive"] * 5, granted[:8]
    assert {p for p, _ in granted[5:]} == {"batch"}
    # Within the batch class the two clients alternate while both wait.
    assert [c for _, c in granted[5:15]] == ["key:flood", "key:other"] * 5, granted[5:15]
    # Responses that waited say where they stood (0-based: requests ahead when it joined).
    positions = [int(r["X-Arbiter-Queue-Position"]) for r in responses]
    assert positions[0] == 0 and max(positions) >= 150
    figures = {cls: (statistics.median(w), max(w)) for cls, w in waits.items() if w}
    print(
        f"\nqueue wait by class (load finished {time.perf_counter() - loaded_at:.2f} s ago), "
        + ", ".join(f"{cls}: median {m:.2f} s, max {x:.2f} s" for cls, (m, x) in figures.items())
    )
    assert max(waits["interactive"]) < statistics.median(waits["batch"])


async def test_it_lets_a_waiting_batch_request_move_up_with_aging(settings):
    settings.ARBITER_BROKER_PRIORITY_AGING_SECONDS = 10
    queues = broker_queue.WaitQueues()
    old = queues.join("m", "a", "batch")
    new = queues.join("m", "b", "default")
    queue = queues.get("m")
    now = old.enqueued_at
    assert queue.order(now) == [new, old]
    # 10 s later the batch ticket ranks as default and is older: it goes first.
    assert queue.order(now + 10) == [old, new]


async def test_it_refuses_an_unknown_priority_header_naming_it_and_counts_nothing(aclient, backend):
    accounting.reset()
    response = await aclient.post(
        "/v1/chat/completions",
        chat("chat-model"),
        "application/json",
        headers={"X-Arbiter-Priority": "urgent"},
    )
    assert response.status_code == 400
    error = json.loads(response.content)["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_priority",
        "X-Arbiter-Priority",
    )
    assert backend.requests() == 0
    assert accounting.usage() == []


def test_it_lowers_but_never_raises_the_keys_class():
    assert broker_queue.request_priority("default", "batch") == "batch"
    assert broker_queue.request_priority("default", "interactive") == "default"
    assert broker_queue.request_priority("batch", None) == "batch"
    assert broker_queue.request_priority("interactive", "DEFAULT") == "default"


async def test_it_sends_queue_and_load_progress_as_comments_before_the_first_chunk(
    aclient, backend
):
    swap_id = await swap_on("vllm-a")
    response_task = asyncio.ensure_future(
        aclient.post(
            "/v1/chat/completions",
            chat("chat-model", stream=True, max_tokens=3),
            "application/json",
        )
    )
    response = await asyncio.wait_for(response_task, 5)  # the 200 starts while it waits
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["X-Arbiter-Queue-Position"] == "0"
    chunks = response.streaming_content
    first = await chunks.__anext__()
    second = await chunks.__anext__()
    text = (first + second).decode()
    assert ": queue position 0, estimated wait" in text
    assert ": loading model chat on host" in text and "phase pulling the image" in text
    assert backend.requests() == 0
    await finish(swap_id)
    rest = b"".join([chunk async for chunk in chunks]).decode()
    data = [line for line in rest.splitlines() if line.startswith("data: ")]
    assert data and data[-1] == "data: [DONE]", rest


async def test_it_ends_a_stream_that_waited_with_an_error_event_when_the_wait_fails(
    aclient, backend, settings
):
    settings.ARBITER_BROKER_QUEUE_TIMEOUT = 1.0
    await swap_on("vllm-a")
    response = await aclient.post(
        "/v1/chat/completions", chat("chat-model", stream=True), "application/json"
    )
    assert response.status_code == 200
    chunks = response.streaming_content
    assert (await chunks.__anext__()).startswith(b": ")
    rest = b"".join([chunk async for chunk in chunks]).decode()
    events = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("data: ")]
    assert events and events[-1]["error"]["code"] == "swap_timeout", rest
    assert backend.requests() == 0

"""GET /api/swap/{id}/stream: stored lines, then live ones, then a final state event."""

import asyncio
import json
import time

import pytest

from tests.swaps.conftest import log_lines, start_swap, wait_for_state

pytestmark = pytest.mark.django_db(transaction=True)


def parse_events(buffer: str) -> tuple[list[tuple[str, dict]], str]:
    """Complete SSE events in `buffer` as (event, data), and the incomplete rest."""
    events = []
    while "\n\n" in buffer:
        block, buffer = buffer.split("\n\n", 1)
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events, buffer


async def read_stream(response, deadline: float = 30.0) -> list[tuple[float, str, dict]]:
    """Every event with the moment it arrived, until the final state event."""
    received, buffer = [], ""
    iterator = aiter(response.streaming_content)
    while True:
        chunk = await asyncio.wait_for(anext(iterator), deadline)
        arrived = time.monotonic()
        events, buffer = parse_events(buffer + chunk.decode())
        for name, data in events:
            received.append((arrived, name, data))
            if name == "state" and data["final"]:
                return received


class LogFileTail:
    """When each line of the container's stdout log file appeared (polled every 10 ms)."""

    def __init__(self, cluster, host: str) -> None:
        self.cluster, self.host = cluster, host
        self.seen: list[tuple[float, str]] = []
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        daemon = self.cluster.hosts[self.host].daemon
        path = None
        while True:
            if path is None:
                found = [c for c in list(daemon.containers.values()) if c.name == "arbiter-vllm"]
                path = daemon.log_paths(found[0])[0] if found else None
            if path is not None and path.exists():
                text = path.read_text(errors="replace")
                complete = text.split("\n")[:-1]
                now = time.monotonic()
                for line in complete[len(self.seen) :]:
                    self.seen.append((now, line))
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_it_delivers_each_container_log_line_to_an_sse_client_within_a_second(
    cluster, dispatcher, aclient
):
    cluster.inject("sim-b", slow_start=4)  # lines spread over 4 s: they arrive live
    tail = LogFileTail(cluster, "sim-b")
    swap_id = (await start_swap(aclient, "qwen3-small")).json()["id"]
    response = await aclient.get(f"/api/swap/{swap_id}/stream")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache"
    try:
        received = await read_stream(response)
    finally:
        await tail.stop()

    lines = [(at, data) for at, name, data in received if name == "line"]
    stdout = [(at, data["text"]) for at, data in lines if data["stream"] == "stdout"]
    assert len(stdout) >= 20
    printed = tail.seen[: len(stdout)]
    assert [text for _, text in stdout] == [text for _, text in printed]
    delays = [got - appeared for (got, _), (appeared, _) in zip(stdout, printed, strict=True)]
    assert max(delays) < 1.0, delays
    # Every line, in order, then the final state as the very last event.
    assert [data["seq"] for _, data in lines] == list(range(1, len(lines) + 1))
    assert len(lines) == len(await log_lines(swap_id))
    states = [data["state"] for _, name, data in received if name == "state"]
    assert states[-1] == "complete"
    assert received[-1][1] == "state" and received[-1][2]["final"] is True
    order = ["pending", "preflight", "stopping", "launching", "waiting_healthy", "complete"]
    assert states == sorted(states, key=order.index)


async def test_it_streams_a_finished_swaps_stored_log_then_the_final_state(
    cluster, dispatcher, aclient
):
    cluster.inject("sim-b", fail_start=True)
    swap_id = (await start_swap(aclient, "qwen3-small")).json()["id"]
    await wait_for_state(swap_id, "failed")
    response = await aclient.get(f"/api/swap/{swap_id}/stream")
    received = await read_stream(response, deadline=5)
    lines = [data for _, name, data in received if name == "line"]
    assert [line["text"] for line in lines] == await log_lines(swap_id)
    (_, name, state) = received[-1]
    assert name == "state"
    assert state["state"] == "failed" and state["error"] == "container exited with status 1"

    # An EventSource reconnecting with Last-Event-ID gets only what it missed.
    again = await aclient.get(
        f"/api/swap/{swap_id}/stream", headers={"Last-Event-ID": str(lines[-3]["seq"])}
    )
    resumed = await read_stream(again, deadline=5)
    assert [data["seq"] for _, name, data in resumed if name == "line"] == [
        line["seq"] for line in lines[-2:]
    ]


async def test_it_answers_404_for_an_unknown_swap(cluster_rows, aclient):
    response = await aclient.get("/api/swap/999/stream")
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "swap_id"

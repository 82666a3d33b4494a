"""The simulated container: a real process that answers like a vLLM server.

Every test talks to a real `python -m arbiter.simulator.container` process over
loopback HTTP; nothing here needs Django or a database.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from arbiter.simulator.container import CRASH_EXIT_CODE
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
MODEL = "sim-model"
TOKEN_DELAY = 0.03


@dataclass
class Container:
    """A running simulated container, with its output lines stamped on arrival."""

    proc: subprocess.Popen[str]
    port: int
    started: float
    stdout: list[tuple[float, str]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return "\n".join(line for _, line in self.stdout)

    def health(self) -> int | None:
        """The /health status, or None while nothing listens on the port yet."""
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 10) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health() == 200:
                return time.monotonic()
            assert self.proc.poll() is None, f"exited early:\n{self.output()}"
            time.sleep(0.02)
        raise AssertionError(f"not ready after {timeout}s:\n{self.output()}")

    def wait_for_line(self, needle: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            assert time.monotonic() < deadline, f"{needle!r} never logged:\n{self.output()}"
            time.sleep(0.02)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=2).text
        match = re.search(rf'^{re.escape(name)}\{{model_name="{MODEL}"\}} (\S+)$', text, re.M)
        assert match, f"{name} missing from:\n{text}"
        return float(match.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


def launch(*args: str) -> Container:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONUNBUFFERED", None)  # the container must flush by itself
    command = [sys.executable, "-m", "arbiter.simulator.container"]
    port = free_port()
    proc = subprocess.Popen(
        [*command, "--served-model-name", MODEL, "--port", str(port), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    container = Container(proc=proc, port=port, started=time.monotonic())

    def pump_stdout() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            container.stdout.append((time.monotonic(), line.rstrip("\n")))

    def pump_stderr() -> None:
        container.stderr.extend(line.rstrip("\n") for line in proc.stderr)  # type: ignore[union-attr]

    threading.Thread(target=pump_stdout, daemon=True).start()
    threading.Thread(target=pump_stderr, daemon=True).start()
    return container


@pytest.fixture
def start_container() -> Iterator[Callable[..., Container]]:
    """Start containers for one test; every one of them is killed afterwards."""
    started: list[Container] = []

    def start(*args: str) -> Container:
        started.append(launch(*args))
        return started[-1]

    yield start
    for container in started:
        container.stop()


@pytest.fixture(scope="module")
def ready() -> Iterator[Container]:
    """One ready container shared by the route tests (start-up costs time)."""
    container = launch(
        "--startup-delay", "0.2", "--token-delay", str(TOKEN_DELAY), "--vram-mib", "4096"
    )
    try:
        container.wait_ready()
        yield container
    finally:
        container.stop()


def chat(max_tokens: int, stream: bool = False, **extra: object) -> dict[str, object]:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there friend"},
    ]
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": stream}
    return body | extra


def read_events(response: httpx.Response) -> list[tuple[float, str]]:
    """The `data:` payloads of a server-sent event stream, stamped on arrival."""
    return [(time.monotonic(), line[6:]) for line in response.iter_lines() if line]


def test_it_answers_503_until_ready_then_200(start_container: Callable[..., Container]) -> None:
    container = start_container("--startup-delay", "1.0")
    statuses = []
    while (status := container.health()) != 200:
        if status is not None:
            statuses.append(status)
        time.sleep(0.02)
    ready_at = time.monotonic()

    assert statuses and set(statuses) == {503}
    assert ready_at - container.started >= 0.9
    assert httpx.get(f"{container.url}/health").content == b""


def test_it_refuses_api_calls_while_starting(start_container: Callable[..., Container]) -> None:
    container = start_container("--startup-delay", "1.0")
    while container.health() is None:
        time.sleep(0.02)

    response = httpx.get(f"{container.url}/v1/models")

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "ServiceUnavailableError"
    assert response.json()["error"]["code"] == 503


def test_it_prints_startup_logs_progressively(start_container: Callable[..., Container]) -> None:
    container = start_container(
        "--startup-delay",
        "0.8",
        "--vram-mib",
        "2048",
        "--gpu-memory-utilization",
        "0.9",
        "--enforce-eager",
    )
    container.wait_ready()
    container.wait_for_line("Application startup complete.")

    times = [stamp for stamp, _ in container.stdout]
    text = container.output()
    first = next(t for t, line in container.stdout if "vLLM API server version" in line)
    last = next(t for t, line in container.stdout if "Application startup complete." in line)
    assert last - first >= 0.6
    assert (
        sum(later - earlier > 0.03 for earlier, later in zip(times, times[1:], strict=False)) >= 5
    )
    assert re.search(r"^INFO \d\d-\d\d \d\d:\d\d:\d\d \[api_server\.py:\d+\] vLLM API", text, re.M)
    assert "'gpu_memory_utilization': '0.9'" in text and "'enforce_eager': True" in text
    for percent in (0, 25, 50, 75, 100):
        assert f"checkpoint shards: {percent:3d}% Completed" in text
    assert "Model loading took 2.00 GiB" in text
    assert f"Starting vLLM API server 0 on http://0.0.0.0:{container.port}" in text


def test_it_lists_the_served_model(ready: Container) -> None:
    response = httpx.get(f"{ready.url}/v1/models")

    assert response.status_code == 200
    [model] = response.json()["data"]
    assert response.json()["object"] == "list"
    assert model["id"] == model["root"] == MODEL
    assert model["object"] == "model" and model["owned_by"] == "vllm"
    assert isinstance(model["created"], int) and isinstance(model["max_model_len"], int)


def test_it_logs_each_request_like_uvicorn(ready: Container) -> None:
    httpx.get(f"{ready.url}/v1/models")

    ready.wait_for_line('"GET /v1/models HTTP/1.1" 200 OK')
    assert re.search(
        r'^INFO: {5}127\.0\.0\.1:\d+ - "GET /v1/models HTTP/1\.1" 200 OK$', ready.output(), re.M
    )


def test_it_answers_a_chat_completion(ready: Container) -> None:
    response = httpx.post(f"{ready.url}/v1/chat/completions", json=chat(6))

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": f"Simulated reply from {MODEL}: hello there",
    }
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}


def test_it_streams_one_chunk_per_token(ready: Container) -> None:
    with httpx.stream("POST", f"{ready.url}/v1/chat/completions", json=chat(12, True)) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["transfer-encoding"] == "chunked"
        events = read_events(resp)

    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) == 12
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
    non_streamed = httpx.post(f"{ready.url}/v1/chat/completions", json=chat(12)).json()
    assert text == non_streamed["choices"][0]["message"]["content"]
    gaps = [
        later - earlier for (earlier, _), (later, _) in zip(events[:-2], events[1:-1], strict=True)
    ]
    assert statistics.median(gaps) >= TOKEN_DELAY * 0.7
    assert sum(gaps) >= TOKEN_DELAY * 10 * 0.8


def test_it_streams_text_completions(ready: Container) -> None:
    plain = httpx.post(f"{ready.url}/v1/completions", json={"prompt": "once upon", "max_tokens": 4})
    body = {"model": MODEL, "prompt": "once upon", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{ready.url}/v1/completions", json=body) as resp:
        events = [data for _, data in read_events(resp)]

    assert plain.json()["object"] == "text_completion"
    assert plain.json()["choices"][0]["text"] == f"Simulated reply from {MODEL}:"
    assert len(events) == 5 and events[-1] == "[DONE]"
    streamed = "".join(json.loads(data)["choices"][0]["text"] for data in events[:-1])
    assert streamed == plain.json()["choices"][0]["text"]


def test_it_rejects_an_unknown_model(ready: Container) -> None:
    response = httpx.post(f"{ready.url}/v1/chat/completions", json=chat(4, model="nope"))

    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


def test_it_rejects_invalid_json(ready: Container) -> None:
    response = httpx.post(
        f"{ready.url}/v1/chat/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400 and error["message"]


def test_it_answers_unknown_paths_with_404_json(ready: Container) -> None:
    assert httpx.get(f"{ready.url}/nope").json() == {"detail": "Not Found"}
    assert httpx.get(f"{ready.url}/nope").status_code == 404
    assert httpx.get(f"{ready.url}/v1/chat/completions").status_code == 405


def test_it_embeds_deterministically(ready: Container) -> None:
    url = f"{ready.url}/v1/embeddings"
    first = httpx.post(url, json={"model": MODEL, "input": ["alpha", "beta"]}).json()
    again = httpx.post(url, json={"model": MODEL, "input": "alpha"}).json()

    assert first["object"] == "list" and first["model"] == MODEL
    assert [item["index"] for item in first["data"]] == [0, 1]
    alpha, beta = (item["embedding"] for item in first["data"])
    assert len(alpha) == len(beta) == 16
    assert alpha != beta
    assert again["data"][0]["embedding"] == alpha
    assert abs(sum(v * v for v in alpha) - 1) < 1e-3
    assert first["usage"]["prompt_tokens"] == 2


def test_it_speaks_a_real_wav(ready: Container) -> None:
    url = f"{ready.url}/v1/audio/speech"
    short = httpx.post(url, json={"model": MODEL, "input": "hi", "voice": "alloy"})
    long = httpx.post(url, json={"model": MODEL, "input": "a much longer sentence to say"})

    assert short.status_code == 200 and short.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(short.content)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16_000)
        short_frames = wav.getnframes()
    with wave.open(io.BytesIO(long.content)) as wav:
        assert wav.getnframes() > short_frames > 0


def test_it_keeps_the_connection_alive(ready: Container) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", ready.port, timeout=5)
    conn.request("GET", "/v1/models")
    assert conn.getresponse().read()
    sock = conn.sock
    conn.request("POST", "/v1/chat/completions", body=json.dumps(chat(3, True)))
    assert conn.getresponse().read().endswith(b"data: [DONE]\n\n")
    conn.request("GET", "/health")

    assert conn.getresponse().status == 200
    assert conn.sock is sock
    conn.close()


def test_it_counts_a_stream_the_client_abandoned(ready: Container) -> None:
    cancelled = ready.metric("sim_cancelled_requests_total")
    total = ready.metric("sim_requests_total")
    with httpx.Client(timeout=5) as client:
        with client.stream("POST", f"{ready.url}/v1/chat/completions", json=chat(1000, True)) as r:
            lines = r.iter_lines()
            assert [next(lines) for _ in range(5)]
            assert ready.metric("sim_in_flight") == 1
            assert ready.metric("vllm:num_requests_running") == 1
    # Leaving the block closed the connection mid-stream.

    deadline = time.monotonic() + 3
    while ready.metric("sim_cancelled_requests_total") < cancelled + 1:
        assert time.monotonic() < deadline, "the container never noticed the hang-up"
        time.sleep(0.05)
    assert ready.metric("sim_cancelled_requests_total") == cancelled + 1
    assert ready.metric("sim_requests_total") == total + 1
    assert ready.metric("sim_in_flight") == 0
    assert ready.metric("sim_vram_mib") == 4096


def test_it_counts_a_non_streamed_request_the_client_abandoned(ready: Container) -> None:
    cancelled = ready.metric("sim_cancelled_requests_total")
    conn = http.client.HTTPConnection("127.0.0.1", ready.port, timeout=5)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(chat(1000)))
    time.sleep(0.2)
    conn.close()

    deadline = time.monotonic() + 3
    while ready.metric("sim_cancelled_requests_total") < cancelled + 1:
        assert time.monotonic() < deadline, "the container never noticed the hang-up"
        time.sleep(0.05)
    assert ready.metric("sim_in_flight") == 0


def test_it_fails_to_start_on_request(start_container: Callable[..., Container]) -> None:
    container = start_container("--startup-delay", "0.4", "--fail-start")
    statuses = set()
    while container.proc.poll() is None:
        statuses.add(container.health())
        assert time.monotonic() - container.started < 5, "still running"
        time.sleep(0.02)

    assert container.proc.returncode == 1
    assert 200 not in statuses
    container.wait_for_line("EngineCore failed to start.")
    assert re.search(
        r"^ERROR \d\d-\d\d [\d:]+ \[core\.py:\d+\] torch\.OutOfMemoryError",
        container.output(),
        re.M,
    )
    container.proc.wait()
    time.sleep(0.1)  # let the stderr pump drain
    assert any(
        line.startswith("RuntimeError: Engine core initialization failed")
        for line in container.stderr
    )


def test_it_crashes_after_being_ready(start_container: Callable[..., Container]) -> None:
    container = start_container("--startup-delay", "0.2", "--crash-after-ready", "0.5")
    ready_at = container.wait_ready()

    returncode = container.proc.wait(timeout=5)
    exited_at = time.monotonic()

    assert returncode == CRASH_EXIT_CODE != 0
    assert 0.3 <= exited_at - ready_at <= 2
    container.wait_for_line("EngineCore encountered a fatal error")
    assert container.health() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_it_stops_promptly_on_a_signal(
    start_container: Callable[..., Container], signum: signal.Signals
) -> None:
    container = start_container("--startup-delay", "0.2")
    container.wait_ready()

    sent_at = time.monotonic()
    container.proc.send_signal(signum)
    returncode = container.proc.wait(timeout=2)

    assert returncode == 0
    assert time.monotonic() - sent_at < 1
    container.wait_for_line("Finished server process")
    assert "INFO:     Shutting down" in container.output()


def blocked_signals(pid: int, tid: int) -> set[int] | None:
    """The signals a thread blocks (`SigBlk` in its /proc status, a hex bit mask); None
    for a thread that ended meanwhile (a finished request's)."""
    try:
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    except FileNotFoundError:
        return None
    mask = int(re.search(r"^SigBlk:\s+([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return {signum for signum in range(1, 65) if mask >> (signum - 1) & 1}


def test_it_takes_the_stop_signal_on_the_main_thread_only(
    start_container: Callable[..., Container],
) -> None:
    # A SIGTERM the kernel hands to a helper thread never wakes a main thread waiting on
    # a lock: the container then ran until `docker stop` killed it 30 s later (1 stop in
    # 20 in the swap benchmark). Every helper thread blocks it; the main thread does not.
    container = start_container("--startup-delay", "0.2")
    container.wait_ready()
    pid = container.proc.pid
    threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    helpers = [tid for tid in threads if tid != pid]

    assert helpers, "the HTTP server runs in a thread of its own"
    main_thread = blocked_signals(pid, pid)
    assert main_thread is not None and signal.SIGTERM not in main_thread
    masks = {tid: blocked_signals(pid, tid) for tid in helpers}
    assert any(mask is not None for mask in masks.values())
    for tid, mask in masks.items():
        assert mask is None or {signal.SIGTERM, signal.SIGINT} <= mask, tid


def test_it_stops_promptly_while_starting(start_container: Callable[..., Container]) -> None:
    container = start_container("--startup-delay", "5")
    container.wait_for_line("vLLM API server version")

    sent_at = time.monotonic()
    container.proc.send_signal(signal.SIGTERM)

    assert container.proc.wait(timeout=2) == 0
    assert time.monotonic() - sent_at < 1

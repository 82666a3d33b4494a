"""The broker's ASGI handler (`arbiter.broker.asgi`), called in-process as daphne calls it.

It queues Django's request_started / request_finished work on the broker's request
thread instead of waiting for it; these tests pin what that must keep: the receivers run
on that thread, before the request's own database work and after its response, and the
thread's connection is closed at the end as Django would (SQLite: CONN_MAX_AGE 0).
"""

from __future__ import annotations

import json
import logging
import threading

import pytest
from django.core import signals
from django.db import connection
from django.db.backends.signals import connection_created

from arbiter.broker.asgi import on_request_thread, send_on_request_thread
from arbiter.broker.background import REQUEST_EXECUTOR
from tests.broker.conftest import call, chat, register

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backend(start_backend, transactional_db):
    started = start_backend("lean-model")
    register("vllm-lean", started.url, loaded_model="lean-model")
    return started


def drain_request_thread() -> None:
    """Wait until the request thread has run everything queued on it so far."""
    REQUEST_EXECUTOR.submit(lambda: None).result(timeout=10)


def json_headers(raw_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"}


async def test_it_proxies_to_the_backend(handler, backend, raw_key):
    body = json.dumps(chat("lean-model")).encode()

    status, headers, content = await call(
        handler, "POST", "/v1/chat/completions", body, json_headers(raw_key)
    )

    assert status == 200, content
    assert headers[b"X-Arbiter-Service"] == b"vllm-lean"
    assert json.loads(content)["model"] == "lean-model"


async def test_it_runs_request_signals_on_the_request_thread_around_its_database_work(
    handler, backend, raw_key
):
    events: list[tuple[str, str]] = []

    def record(name):
        def receiver(**kwargs) -> None:
            events.append((name, threading.current_thread().name))

        return receiver

    started, finished, connected = record("started"), record("finished"), record("connected")
    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    connection_created.connect(connected)
    try:
        body = json.dumps(chat("lean-model")).encode()
        # A new event loop, so the key is not cached yet: verifying it reads the database
        # on the request thread.
        status, _headers, content = await call(
            handler, "POST", "/v1/chat/completions", body, json_headers(raw_key)
        )
        drain_request_thread()
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
        connection_created.disconnect(connected)

    assert status == 200, content
    # (The route table is read on the broker's background thread: not this one's business.)
    request_thread_events = [name for name, thread in events if thread == "broker-requests_0"]
    assert request_thread_events == ["started", "connected", "finished"]
    assert [name for name, _thread in events].count("started") == 1
    assert [name for name, _thread in events].count("finished") == 1
    # request_finished closed the thread's connection if it may not outlive the request
    # (CONN_MAX_AGE 0, the SQLite default), and kept it otherwise (PostgreSQL: 60 s).
    closed = REQUEST_EXECUTOR.submit(lambda: connection.connection is None).result(timeout=10)
    assert closed == (connection.settings_dict["CONN_MAX_AGE"] == 0)


@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"messages": []}', 400, None),
        ("GET", "/v1/chat/completions", b"", 405, None),
        ("POST", "/v1/no/such/route", b"{}", 404, "unknown_url"),
    ],
)
async def test_it_answers_openai_shaped_errors(handler, raw_key, method, path, body, status, code):
    answer, headers, content = await call(handler, method, path, body, json_headers(raw_key))

    assert answer == status
    assert headers[b"Content-Type"] == b"application/json"
    error = json.loads(content)["error"]
    assert error["message"]
    if code:
        assert error["code"] == code


async def test_it_refuses_a_missing_key(handler, raw_key):
    status, _headers, content = await call(handler, "POST", "/v1/chat/completions", b"{}")

    assert status == 401
    assert json.loads(content)["error"]["type"]


async def test_it_refuses_a_host_outside_allowed_hosts_like_on_every_other_path(
    handler, backend, raw_key
):
    headers = {**json_headers(raw_key), "Host": "evil.example"}
    body = json.dumps(chat("lean-model")).encode()
    status, _headers, content = await call(handler, "POST", "/v1/chat/completions", body, headers)

    assert status == 400
    error = json.loads(content)["error"]
    assert (error["code"], error["param"]) == ("disallowed_host", "Host")
    assert backend.requests() == 0


def test_it_does_not_queue_again_a_signal_still_queued_for_an_earlier_request():
    sent: list[str] = []
    signal = signals.Signal()

    def receiver(**kwargs) -> None:
        sent.append(threading.current_thread().name)

    signal.connect(receiver)
    busy = threading.Event()
    REQUEST_EXECUTOR.submit(busy.wait, 10)  # the thread is busy: the sends wait in line
    for _ in range(3):
        send_on_request_thread(signal, sender=None)
    busy.set()
    drain_request_thread()
    assert sent == ["broker-requests_0"]  # one send, before any work queued after it

    send_on_request_thread(signal, sender=None)  # the queued one has run: a new send
    drain_request_thread()
    assert sent == ["broker-requests_0", "broker-requests_0"]


def test_it_logs_a_failure_on_the_request_thread(caplog):
    def broken() -> None:
        raise RuntimeError("receiver failed")

    with caplog.at_level(logging.ERROR, logger="arbiter.broker.asgi"):
        on_request_thread(broken)
        drain_request_thread()

    assert "receiver failed" in caplog.text

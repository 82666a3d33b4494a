"""A lean ASGI path for the broker: Django's handler without the browser middleware.

In async mode every classic middleware hook is a hop to a sync thread; the project's
stack (security, sessions, common, CSRF, auth, messages, clickjacking, htmx) costs
about 2.7 ms per request on the reference machine, more than the broker itself. The
broker needs none of it: it authenticates by API key, its views are CSRF-exempt, it
sets no cookies and renders no pages. `with_broker(app)` sends the broker's paths to a
handler with no middleware and everything else to `app`, unchanged:

    application = ProtocolTypeRouter({"http": with_broker(django_asgi_app), ...})

`arbiter.asgi` (what serve and every daphne run) applies it behind the body limit.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core import signals
from django.core.exceptions import DisallowedHost, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.dispatch import Signal
from django.http import HttpRequest, JsonResponse
from django.urls import set_script_prefix

from arbiter.broker.background import REQUEST_EXECUTOR
from arbiter.broker.errors import InvalidRequest

log = logging.getLogger(__name__)

BROKER_PATH_PREFIXES = ("/v1/", "/audio/")


def on_request_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
    """Run `func` on the broker's request thread, without waiting for it.

    The thread runs one call at a time in submission order, so work queued here runs
    after the sync work submitted before it and before any submitted after it: a
    request's `request_started` receivers still run before its own ORM calls, and its
    `request_finished` ones before the next request's. Like `sync_to_async`, it runs in
    a copy of the caller's context.
    """
    context = contextvars.copy_context()
    REQUEST_EXECUTOR.submit(context.run, func, *args, **kwargs).add_done_callback(_log_failure)


def _log_failure(future: Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("broker request-thread call failed", exc_info=future.exception())


# Signals queued on the request thread and not yet sent.
_queued_signals: set[Signal] = set()


def send_on_request_thread(signal: Signal, **kwargs: Any) -> None:
    """Send `signal` on the request thread, unless a send of it is already queued there.

    The receivers (Django's: close_old_connections, reset_queries, close_caches) tidy
    the thread's connections and do not depend on which request sent them, so the send
    queued for an earlier request serves this one too: it still runs after the sync
    work queued before it and before any queued after it (`on_request_thread`). Under
    load this saves most of the two hand-offs per request, each a future, a lock and a
    wake-up of a thread that then contends with the event loop for the GIL.
    """
    if signal in _queued_signals:
        return
    _queued_signals.add(signal)

    def send() -> None:
        # Before sending: a request arriving from now on queues its own send.
        _queued_signals.discard(signal)
        signal.send(**kwargs)

    try:
        on_request_thread(send)
    except BaseException:
        _queued_signals.discard(signal)  # not queued after all: the next request queues it
        raise


def close_response(response: Any, handler_class: type) -> None:
    """`response.close()`, with its request_finished signal sent by
    `send_on_request_thread`. `HttpResponseBase.close` (Django 5.2) runs the resource
    closers and then sends the signal; the broker's closers only close the request's
    uploaded files (Django's `request.close`), which it never parses, so they run here."""
    for closer in response._resource_closers:
        try:
            closer()
        except Exception:
            log.exception("closing a broker response failed")
    response._resource_closers.clear()
    response.closed = True
    send_on_request_thread(signals.request_finished, sender=handler_class)


def host_checked(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """ALLOWED_HOSTS, which CommonMiddleware enforces on every other path: a request
    naming a host this deployment does not serve gets an OpenAI-shaped 400."""

    async def checked(request: HttpRequest) -> Any:
        try:
            request.get_host()
        except DisallowedHost:
            error = InvalidRequest(
                "The Host header names a host this Arbiter does not serve (ALLOWED_HOSTS).",
                code="disallowed_host",
                param="Host",
            )
            return JsonResponse(error.as_body(), status=error.status)
        return await get_response(request)

    return checked


class BrokerASGIHandler(ASGIHandler):
    """Django's ASGI handler with an empty middleware chain (URLs, views, signals as usual).

    Django gives every request its own thread-sensitive context, i.e. a fresh thread for
    the request's sync work (the request_started / finished receivers, any ORM call):
    a thread start per request. Broker requests share one long-lived thread instead
    (`background.REQUEST_EXECUTOR`), so they neither start threads nor queue behind the
    engine's ORM work or the broker's own background work.

    Django also waits for that thread twice per request, for the request_started
    receivers and for `response.close()` (request_finished). Each wait is a round trip
    through the thread and the event loop, about 0.2 ms, for receivers that only
    close database connections the request thread holds. `handle` queues both on that
    thread instead of waiting, and skips a send while the same signal is still queued
    there for an earlier request (`send_on_request_thread`; see `on_request_thread`
    for why the order still holds): a connection that went stale or outlived
    CONN_MAX_AGE is closed before the thread's next query, as with Django's handler.
    """

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"the broker handler serves HTTP only, not {scope['type']!r}")
        async with ThreadSensitiveContext(executor=REQUEST_EXECUTOR):
            await self.handle(scope, receive, send)

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        get_response = self._get_response_async if is_async else self._get_response
        self._middleware_chain = convert_exception_to_response(host_checked(get_response))

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        """`ASGIHandler.handle` (Django 5.2), with the two waits for the request thread
        replaced by `on_request_thread`; keep in step with Django's on upgrades."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        send_on_request_thread(signals.request_started, sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            close_response(error_response, self.__class__)
            return

        async def process_request() -> Any:
            response = await self.run_get_response(request)
            if not response.streaming and not response.has_header("Content-Length"):
                # As CommonMiddleware does on every other path: a whole answer goes out
                # with its length, not chunked.
                response["Content-Length"] = str(len(response.content))
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client left while the response was being sent
            return response

        # As in Django: a client that disconnects cancels the view (for the broker, this
        # is what closes the upstream request so the backend stops generating).
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            send_on_request_thread(signals.request_finished, sender=self.__class__)
        else:
            close_response(response, self.__class__)  # sends request_finished
        body_file.close()


def with_broker(app: Any, broker: Any | None = None) -> Any:
    """An ASGI app: broker paths to the lean handler, all other HTTP to `app`."""
    broker_app = broker or BrokerASGIHandler()

    async def route(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(BROKER_PATH_PREFIXES):
            await broker_app(scope, receive, send)
        else:
            await app(scope, receive, send)

    return route

"""A lean ASGI path for the broker: Django's handler without the browser middleware.

In async mode every classic middleware hook is a hop to a sync thread; the project's
stack (security, sessions, common, CSRF, auth, messages, clickjacking, htmx) costs
about 2.7 ms per request on the reference machine, more than the broker itself. The
broker needs none of it: it authenticates by API key, its views are CSRF-exempt, it
sets no cookies and renders no pages. `with_broker(app)` sends the broker's paths to a
handler with no middleware and everything else to `app`, unchanged:

    application = ProtocolTypeRouter({"http": with_broker(django_asgi_app), ...})

`application` here is the project's ASGI application with that split, for running
`daphne arbiter.broker.asgi:application` side by side (the benchmark does).
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

from arbiter.broker.background import REQUEST_EXECUTOR

BROKER_PATH_PREFIXES = ("/v1/", "/audio/")


class BrokerASGIHandler(ASGIHandler):
    """Django's ASGI handler with an empty middleware chain (URLs, views, signals as usual).

    Django gives every request its own thread-sensitive context, i.e. a fresh thread for
    the request's sync work (the request_started / finished receivers, any ORM call):
    a thread start per request. Broker requests share one long-lived thread instead
    (`background.REQUEST_EXECUTOR`), so they neither start threads nor queue behind the
    engine's ORM work or the broker's own background work.
    """

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"the broker handler serves HTTP only, not {scope['type']!r}")
        async with ThreadSensitiveContext(executor=REQUEST_EXECUTOR):
            await self.handle(scope, receive, send)

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response_async if is_async else self._get_response
        self._middleware_chain = convert_exception_to_response(get_response)


def with_broker(app: Any, broker: Any | None = None) -> Any:
    """An ASGI app: broker paths to the lean handler, all other HTTP to `app`."""
    broker_app = broker or BrokerASGIHandler()

    async def route(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(BROKER_PATH_PREFIXES):
            await broker_app(scope, receive, send)
        else:
            await app(scope, receive, send)

    return route


def __getattr__(name: str) -> Any:
    # Built on first use: importing this module must not set up the whole project.
    if name == "application":
        from channels.routing import ProtocolTypeRouter

        from arbiter import asgi

        return ProtocolTypeRouter(
            {
                "http": with_broker(asgi.django_asgi_app),
                "websocket": asgi.application.application_mapping["websocket"],
            }
        )
    raise AttributeError(name)

"""The broker's async views: `/v1/...` by model or capability, and `/audio/...`.

Each request: authenticate (API key) → read the body (413) → find the model (400/415)
→ count it against its key's quota, if it has one (429, `quotas`) → route (`routing`)
→ wait for a swap or a load when routing says so (bounded queue, bounded time)
→ forward (`proxy`), counting it against the per-model limit (429).
Every error the broker answers itself is OpenAI-shaped (`errors.BrokerError`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from arbiter import audit
from arbiter.broker import metrics, permissions, quotas
from arbiter.broker.accounting import accounting, client_name
from arbiter.broker.background import spawn
from arbiter.broker.bodies import WithModel, json_model, multipart_model, read_body
from arbiter.broker.errors import (
    BrokerError,
    Busy,
    MethodNotAllowed,
    RouteNotFound,
    Unauthorized,
    UpstreamError,
)
from arbiter.broker.keys import Caller
from arbiter.broker.limits import QUEUE_RETRY_AFTER, queue_timeout
from arbiter.broker.proxy import (
    Relay,
    RelayOutcome,
    buffered,
    forwarded_headers,
    open_upstream,
    read_timeout,
    returned_headers,
)
from arbiter.broker.routing import (
    AUDIO_CAPABILITIES,
    Decision,
    Forward,
    Load,
    WaitForSwap,
    list_models,
    route_capability,
    route_model,
)
from arbiter.broker.state import BrokerState, get_state
from arbiter.broker.swapwait import SwapEnd
from arbiter.broker.table import RouteTable

log = logging.getLogger(__name__)

# What `prepare(body)` returns: queue key, routing function, and for a body that names
# its model, how to name another (`bodies.WithModel`).
Prepared = tuple[str, Callable[[RouteTable], Decision], WithModel | None]
MULTIPART_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")
MAX_LOADS_PER_REQUEST = 2  # a model swapped away again right after loading: try once more


def probe_retry_after() -> float:
    from django.conf import settings

    return float(getattr(settings, "ARBITER_PROBE_INTERVAL", 5.0))


def error_response(error: BrokerError) -> JsonResponse:
    response = JsonResponse(error.as_body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


class Exchange:
    """One request's bookkeeping: metrics and accounting, recorded exactly once."""

    def __init__(self, route: str, caller: Caller | None, client_header: str | None) -> None:
        self.route = route
        self.model = ""
        self.started = time.perf_counter()
        self.done = False
        self.client = accounting.started(
            client_name(client_header, caller.name if caller else "anonymous")
        )
        metrics.count_client(self.client)

    def finish(self, status: int, bytes_out: int = 0) -> None:
        if self.done:
            return
        self.done = True
        metrics.REQUESTS.labels(self.route, self.model or "-", str(status)).inc()
        metrics.DURATION.labels(self.route).observe(time.perf_counter() - self.started)
        accounting.finished(self.client, status, bytes_out, self.model)


async def authenticate(request: HttpRequest, state: BrokerState) -> Caller:
    caller = await state.keys.authenticate(request.headers.get("Authorization", ""))
    if caller is None:
        raise Unauthorized(
            "Send a valid Arbiter API key as `Authorization: Bearer arb_...`."
            if request.headers.get("Authorization")
            else "Missing API key: send `Authorization: Bearer arb_...`."
        )
    return caller


async def serve(
    request: HttpRequest,
    route: str,
    prepare: Callable[[bytes], Prepared],
    methods: tuple[str, ...] = ("POST",),
    names_model: bool = False,
) -> HttpResponse:
    """The common path of every proxied route (see the module docstring).

    `prepare(body)` checks the body and returns the queue key (the model), the
    routing function to apply to the table, and how to rename the body's model.
    `names_model`: the queue key is the model the request names (checked against the
    key's model list before anything loads); otherwise the service routed to is checked.
    """
    state = get_state()
    exchange: Exchange | None = None
    try:
        caller = await authenticate(request, state)
        exchange = Exchange(route, caller, request.headers.get("X-Client-Id"))
        if request.method not in methods:
            raise MethodNotAllowed(request.method or "", ", ".join(methods))
        body = read_body(request)
        key, decide, with_model = prepare(body)
        if caller.allowed_models and names_model:
            permissions.check_model(caller, key, await state.table.get())
        if caller.requests_per_minute is not None or caller.tokens_per_day is not None:
            # Before routing: a request past its key's quota loads nothing (429).
            await quotas.check_async(caller)
        on_behalf = audit.for_key(caller.name, caller.role, request.META.get("REMOTE_ADDR"))
        decision = await settle(state, key, decide, on_behalf)
        if caller.allowed_models and not names_model:
            permissions.check_forward(caller, decision, await state.table.get())
        exchange.model = decision.limit_key
        if decision.served_model and with_model is not None:
            # The request named the catalog key; the backend only knows the served name.
            body = with_model(decision.served_model)
        return await forward(request, state, decision, body, exchange, caller)
    except BrokerError as error:
        if error.status >= 500:
            log.info("broker %s %s: %s %s", route, request.path, error.status, error.message)
        response = error_response(error)
        if exchange is not None:
            exchange.finish(error.status, len(response.content))
        return response


async def settle(
    state: BrokerState,
    key: str,
    decide: Callable[[RouteTable], Decision],
    on_behalf: audit.Actor | None = None,
) -> Forward:
    """Route; while routing says wait (a swap) or load, do so and route again, bounded."""
    deadline = time.monotonic() + queue_timeout()
    newer_than: float | None = None
    loads = 0
    while True:
        decision = decide(await state.table.get(newer_than))
        if isinstance(decision, Forward):
            return decision
        if isinstance(decision, Load):
            loads += 1
            if loads > MAX_LOADS_PER_REQUEST:
                raise Busy(
                    f"{key} was swapped away again right after loading.",
                    code="load_contended",
                    retry_after=QUEUE_RETRY_AFTER,
                )
        end = await wait_in_queue(state, key, decision, deadline, on_behalf)
        newer_than = end.seen_at


async def wait_in_queue(
    state: BrokerState,
    key: str,
    decision: WaitForSwap | Load,
    deadline: float,
    on_behalf: audit.Actor | None = None,
) -> SwapEnd:
    with state.queue.slot(key):
        metrics.WAITING.inc()
        try:
            remaining = deadline - time.monotonic()
            if isinstance(decision, Load):
                # The engine loads on behalf of this request's key (the audit trail).
                return await state.loads.load(decision.entry.key, remaining, on_behalf)
            try:
                return await state.watcher.wait(decision.swap_id, remaining)
            except TimeoutError:
                raise Busy(
                    f"{key} waits for swap {decision.swap_id}, which has not finished in time.",
                    code="swap_timeout",
                    retry_after=QUEUE_RETRY_AFTER,
                    swap_id=decision.swap_id,
                ) from None
        finally:
            metrics.WAITING.dec()


async def forward(
    request: HttpRequest,
    state: BrokerState,
    decision: Forward,
    body: bytes,
    exchange: Exchange,
    caller: Caller | None = None,
) -> HttpResponse:
    service, model = decision.service, decision.limit_key
    # A key with a token quota: read the answer's tokens as it goes out (`quotas`).
    tokens = (
        quotas.TokenCounter() if caller is not None and caller.tokens_per_day is not None else None
    )
    shared = state.shared_limits
    if shared is None:
        state.limits.acquire(model)  # 429 past the per-model limit of this process
        slot = ""
    else:
        # 429 past the limit of all processes together; the request counts as in flight
        # at its service and for its client in every process (eviction, /api/status).
        slot = await shared.acquire(model, service=service.name, client=exchange.client)
    state.activity.started(service.name)
    metrics.IN_FLIGHT.labels(model).inc()

    def release(outcome: RelayOutcome | None, status: int) -> None:
        if shared is None:
            state.limits.release(model)
        else:
            shared.release(model, slot)
        state.activity.finished(service.name)
        metrics.IN_FLIGHT.labels(model).dec()
        exchange.finish(status, outcome.bytes if outcome else 0)
        if tokens is not None and caller is not None and outcome is not None:
            spawn(quotas.add_tokens_async(caller.key_id, tokens.total()))

    url = service.url(decision.path)
    if request.META.get("QUERY_STRING"):
        url += "?" + request.META["QUERY_STRING"]
    headers = forwarded_headers(request.headers.items(), request.META.get("REMOTE_ADDR", ""))
    if service.backend_api_key:
        headers.append(("Authorization", f"Bearer {service.backend_api_key}"))
    if tokens is not None:
        # A compressed answer could not be read for its tokens.
        headers = [(n, v) for n, v in headers if n.lower() != "accept-encoding"]
    try:
        await state.residency.ensure_loaded(service)  # the broker may have unloaded it
        sent = time.perf_counter()
        upstream = await open_upstream(
            state.transport,
            request.method or "POST",
            url,
            headers,
            body,
            service=service.name,
            read_timeout_s=read_timeout(decision.path),
        )
    except BaseException as exc:
        release(None, exc.status if isinstance(exc, BrokerError) else 499)
        raise
    metrics.FIRST_BYTE.labels(exchange.route).observe(time.perf_counter() - sent)
    status = upstream.status_code
    relay = Relay(upstream, lambda outcome: release(outcome, status))
    if tokens is not None:
        relay.on_chunk = tokens.feed
    response: HttpResponse | StreamingHttpResponse
    if buffered(upstream):
        try:
            content = await relay.read_all()
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"The backend {service.name} broke off its answer: {type(exc).__name__}.",
                code="upstream_error",
                service=service.name,
            ) from exc
        response = HttpResponse(content, status=status)
    else:
        response = StreamingHttpResponse(relay.stream(), status=status)
        response["X-Accel-Buffering"] = "no"
    if "content-type" not in upstream.headers:
        del response["Content-Type"]
    for name, value in returned_headers(upstream.headers):
        response[name] = value
    response["X-Arbiter-Service"] = service.name
    return response


# -- the routes -------------------------------------------------------------------------
@csrf_exempt
async def by_model(request: HttpRequest) -> HttpResponse:
    """`POST /v1/chat/completions` and friends, routed by the body's `model`."""
    path = request.path

    def prepare(body: bytes) -> Prepared:
        read_model = multipart_model if path in MULTIPART_ROUTES else json_model
        model, with_model = read_model(request, body)
        return model, lambda table: route_model(table, model, path, probe_retry_after()), with_model

    return await serve(request, path, prepare, names_model=True)


@csrf_exempt
async def by_capability(request: HttpRequest, capability: str, rest: str) -> HttpResponse:
    """`/v1/{llm,tts,stt,image}/<rest>`: the first healthy service with the capability."""
    path = "/" + rest

    def prepare(body: bytes) -> Prepared:
        return (
            capability,
            lambda table: route_capability(table, (capability,), path, probe_retry_after()),
            None,
        )

    methods = ("GET", "POST", "PUT", "PATCH", "DELETE")
    return await serve(request, f"/v1/{capability}/", prepare, methods)


@csrf_exempt
async def audio(request: HttpRequest, rest: str) -> HttpResponse:
    """`/audio/<rest>`: forwarded as is to the audio (or else tts) service."""
    path = request.path

    def prepare(body: bytes) -> Prepared:
        return (
            "audio",
            lambda table: route_capability(table, AUDIO_CAPABILITIES, path, probe_retry_after()),
            None,
        )

    return await serve(request, "/audio/", prepare, ("GET", "POST"))


async def models(request: HttpRequest) -> HttpResponse:
    """`GET /v1/models`: what is loaded where, what is loading, what can be loaded."""
    state = get_state()
    try:
        caller = await authenticate(request, state)
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(request.method or "", "GET")
    except BrokerError as error:
        return error_response(error)
    table = await state.table.get()
    listed = list_models(table)
    if caller.allowed_models:
        # A key limited to models sees only those (matched as requests are: `permissions`).
        listed["data"] = permissions.visible_models(caller, listed["data"], table)
    return JsonResponse(listed)


@csrf_exempt
async def unknown(request: HttpRequest, rest: str = "") -> HttpResponse:
    return error_response(
        RouteNotFound(f"The broker has no route {request.path}.", code="unknown_url")
    )

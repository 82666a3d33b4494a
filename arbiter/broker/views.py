"""The broker's async views: `/v1/...` by model or capability, and `/audio/...`.

Each request: authenticate (API key) → read the body (413) → find the model (400/415)
→ count it against its key's quota, if it has one (429, `quotas`) → route (`routing`)
→ wait for a swap or a load when routing says so (bounded queue, bounded time)
→ forward (`proxy`), counting it against the per-model limit (429).
Every error the broker answers itself is OpenAI-shaped (`errors.BrokerError`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from asgiref.sync import sync_to_async
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
    TooManyRequests,
    Unauthorized,
    UpstreamError,
)
from arbiter.broker.keys import Caller
from arbiter.broker.limits import QUEUE_RETRY_AFTER, max_concurrency, queue_timeout
from arbiter.broker.proxy import (
    Relay,
    RelayOutcome,
    buffered,
    forwarded_headers,
    open_upstream,
    read_timeout,
    returned_headers,
)
from arbiter.broker.queue import PRIORITY_HEADER, Ticket, WaitQueues, request_priority
from arbiter.broker.routing import (
    AUDIO_CAPABILITIES,
    Decision,
    Forward,
    Load,
    WaitForSwap,
    least_busy,
    list_models,
    route_capability,
    route_model,
)
from arbiter.broker.shared_limits import LOCAL as LOCAL_SLOT
from arbiter.broker.state import BrokerState, get_state
from arbiter.broker.swapwait import SwapEnd
from arbiter.broker.table import RouteTable, ServiceRoute
from arbiter.models import Swap

log = logging.getLogger(__name__)

# What `prepare(body)` returns: queue key, routing function, and for a body that names
# its model, how to name another (`bodies.WithModel`).
Prepared = tuple[str, Callable[[RouteTable], Decision], WithModel | None]
MULTIPART_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")
MAX_LOADS_PER_REQUEST = 2  # a model swapped away again right after loading: try once more
PROGRESS_EVERY = 2.0  # seconds between progress comments to a streamed request that waits
QUEUE_POSITION_HEADER = "X-Arbiter-Queue-Position"


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
        self.on_finish: Callable[[], None] | None = None  # the wait queue's room back

    def finish(self, status: int, bytes_out: int = 0) -> None:
        if self.done:
            return
        self.done = True
        if self.on_finish is not None:
            self.on_finish()
        metrics.REQUESTS.labels(self.route, self.model or "-", str(status)).inc()
        metrics.DURATION.labels(self.route).observe(time.perf_counter() - self.started)
        accounting.finished(self.client, status, bytes_out, self.model)


class Waiting:
    """One request's place in its model's wait queue (`queue`), and what it is told.

    A request that never has to wait takes no ticket; it only counts as in flight, so
    the queue knows how much room the concurrency limit leaves. `progress`, set for a
    streamed request, receives the comment lines to send while it waits."""

    def __init__(self, queues: WaitQueues, key: str, client: str, priority: str) -> None:
        self.queues = queues
        self.key = key
        self.client = client
        self.priority = priority
        self.ticket: Ticket | None = None
        self.admitted_at: float | None = None
        self.progress: Callable[[str], None] | None = None

    @property
    def waited(self) -> bool:
        return self.ticket is not None

    def hold(self, waiting_on: tuple[str, object] | None = None) -> Ticket:
        """Take (or keep) a ticket while the model loads or a swap runs (`waiting_on`); a
        request let through that must wait again gives its room back."""
        if self.admitted_at is not None:
            self.done()
        if self.ticket is None:
            self.ticket = self.queues.join(self.key, self.client, self.priority)
        self.queues.unready(self.ticket, waiting_on)
        return self.ticket

    async def admit(self, deadline: float) -> None:
        """Go on at once when nobody waits for this name; else wait for the queue's turn."""
        if self.ticket is None and not self.queues.busy(self.key):
            self.queues.started(self.key)
            self.admitted_at = time.monotonic()
            return
        ticket = self.ticket or self.hold()

        def tell(position: int, wait: float) -> None:
            self.say(f"queue position {position}, estimated wait {wait:.0f} s")

        try:
            await self.queues.turn(ticket, deadline - time.monotonic(), tell, PROGRESS_EVERY)
        except TimeoutError:
            raise Busy(
                f"{self.key}: this request waited in the queue and was not let through in time.",
                code="queue_timeout",
                retry_after=QUEUE_RETRY_AFTER,
            ) from None
        self.admitted_at = time.monotonic()

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def done(self) -> None:
        """The request let through is over (or gives its room back): the next may go."""
        if self.admitted_at is None:
            return
        seconds = time.monotonic() - self.admitted_at
        self.admitted_at = None
        self.queues.finished(self.key, seconds)

    def abandon(self) -> None:
        """The request ends before it was forwarded (an error, the client gone)."""
        if self.ticket is not None and self.admitted_at is None:
            self.queues.leave(self.ticket)
        self.done()


def wants_stream(body: bytes) -> bool:
    """Whether a JSON body asks for a stream (`"stream": true`), cheaply."""
    if b'"stream"' not in body:
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


@sync_to_async
def load_progress(swap_id: int | None, model_key: str) -> tuple[str, float] | None:
    """`loading model X on host Y: phase ..., ETA N s` from the swap row, if one runs,
    and the ETA in seconds (0 when the swap has none yet)."""
    swaps = Swap.objects.select_related("host")
    if swap_id is not None:
        swap = swaps.filter(pk=swap_id).first()
    else:
        swap = (
            swaps.filter(model_key=model_key, state__in=Swap.ACTIVE_STATES).order_by("-pk").first()
        )
    if swap is None or not swap.is_active:
        return None
    launch = swap.launch_progress()
    line = f"loading model {swap.model_key} on host {swap.host.name}: "
    line += f"phase {launch.phase_label}" if launch.phase_label else f"state {swap.state}"
    if launch.eta_seconds is not None:
        line += f", ETA {launch.eta_seconds:.0f} s"
    return line, float(launch.eta_seconds or 0.0)


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
        # Before anything is counted: an unknown class is the client's mistake (400).
        priority = request_priority(caller.priority, request.headers.get(PRIORITY_HEADER))
        exchange = Exchange(route, caller, request.headers.get("X-Client-Id"))
        if request.method not in methods:
            raise MethodNotAllowed(request.method or "", ", ".join(methods))
        body = read_body(request)
        key, decide, with_model = prepare(body)
        if caller.allowed_models and names_model:
            permissions.check_model(caller, key, await state.table.get())
            decide = narrowed_decide(caller, decide)
        if caller.requests_per_minute is not None or caller.tokens_per_day is not None:
            # Before routing: a request past its key's quota loads nothing (429).
            await quotas.check_async(caller)
        on_behalf = audit.for_key(caller.name, caller.role, request.META.get("REMOTE_ADDR"))
        waiting = Waiting(state.queue, key, exchange.client, priority)
        exchange.on_finish = waiting.done
        current = exchange

        async def proceed() -> HttpResponse:
            nonlocal body
            try:
                decision = await settle(state, key, decide, on_behalf, waiting)
            except BaseException:
                waiting.abandon()
                raise
            if caller.allowed_models and not names_model:
                permissions.check_forward(caller, decision, await state.table.get())
            current.model = decision.limit_key
            if decision.served_model and with_model is not None:
                # The request named the catalog key; the backend only knows the served name.
                body = with_model(decision.served_model)
            response = await forward(request, state, decision, body, current, caller)
            if waiting.ticket is not None:
                response[QUEUE_POSITION_HEADER] = str(waiting.ticket.position)
            return response

        if names_model and wants_stream(body):
            return await serve_stream(proceed, waiting, exchange)
        return await proceed()
    except BrokerError as error:
        if error.status >= 500:
            log.info("broker %s %s: %s %s", route, request.path, error.status, error.message)
        response = error_response(error)
        if exchange is not None:
            exchange.finish(error.status, len(response.content))
        return response


def narrowed_decide(
    caller: Caller, decide: Callable[[RouteTable], Decision]
) -> Callable[[RouteTable], Decision]:
    """Routing for a key limited to models: aliases list only the models it may use."""
    return lambda table: decide(permissions.narrowed(caller, table))


async def serve_stream(
    proceed: Callable[[], Awaitable[HttpResponse]], waiting: Waiting, exchange: Exchange
) -> HttpResponse:
    """A streamed request: as any other unless it must wait; then the 200 SSE answer
    starts at once with comment lines (position, ETA, the load's phase), and the
    backend's stream follows. An error met after that ends the stream with an
    OpenAI-style error event (`data: {"error": ...}`), as the status line is out."""
    events: asyncio.Queue[str] = asyncio.Queue()
    waiting.progress = events.put_nowait
    task = asyncio.ensure_future(proceed())
    first = asyncio.ensure_future(events.get())
    await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        first.cancel()
        waiting.progress = None
        return task.result()  # a BrokerError is answered as usual by `serve`

    async def relay() -> AsyncIterator[bytes]:
        try:
            yield comment(first.result())
            while not task.done():
                line = asyncio.ensure_future(events.get())
                await asyncio.wait({task, line}, return_when=asyncio.FIRST_COMPLETED)
                if line.done():
                    yield comment(line.result())
                else:
                    line.cancel()
            waiting.progress = None
            try:
                response = task.result()
            except BrokerError as error:
                body = json.dumps(error.as_body()).encode()
                exchange.finish(error.status, len(body))
                yield b"data: " + body + b"\n\n"
                return
            if isinstance(response, StreamingHttpResponse):
                content = response.streaming_content
                if response.status_code == 200:
                    async for chunk in content:  # type: ignore[union-attr]
                        yield chunk
                    return
                raw = b"".join([chunk async for chunk in content])  # type: ignore[union-attr]
            else:
                raw = response.content
            yield b"data: " + backend_error_event(response.status_code, raw) + b"\n\n"
        finally:
            if not task.done():
                task.cancel()  # the client left while waiting: give the ticket back

    response = StreamingHttpResponse(relay(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    if waiting.ticket is not None:
        response[QUEUE_POSITION_HEADER] = str(waiting.ticket.position)
    return response


def comment(line: str) -> bytes:
    """An SSE comment line: clients (OpenAI's SDKs included) skip it."""
    return f": {line}\n\n".encode()


def backend_error_event(status: int, raw: bytes) -> bytes:
    """A backend's non-200 answer after the stream began, as an OpenAI-style error."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        parsed["error"].setdefault("status", status)
        return json.dumps(parsed).encode()
    message = raw.decode("utf-8", "replace")[:500] or f"the backend answered {status}"
    body = {"error": {"type": "upstream_error", "message": message, "status": status}}
    return json.dumps(body).encode()


async def settle(
    state: BrokerState,
    key: str,
    decide: Callable[[RouteTable], Decision],
    on_behalf: audit.Actor | None = None,
    waiting: Waiting | None = None,
) -> Forward:
    """Route; while routing says wait (a swap) or load, do so and route again, bounded;
    then wait for the queue's turn (`Waiting.admit`) if others wait for the same name."""
    if waiting is None:
        waiting = Waiting(state.queue, key, "-", "default")
    deadline = time.monotonic() + queue_timeout()
    newer_than: float | None = None
    loads = 0
    while True:
        decision = decide(await state.table.get(newer_than))
        if isinstance(decision, Forward):
            if waiting.admitted_at is not None:
                return decision
            await waiting.admit(deadline)
            if not waiting.waited:
                return decision
            newer_than = None  # it may have waited a while: route again before going on
            continue
        if isinstance(decision, Load):
            loads += 1
            if loads > MAX_LOADS_PER_REQUEST:
                raise Busy(
                    f"{key} was swapped away again right after loading.",
                    code="load_contended",
                    retry_after=QUEUE_RETRY_AFTER,
                )
        end = await wait_in_queue(state, key, decision, deadline, on_behalf, waiting)
        newer_than = end.seen_at


async def wait_in_queue(
    state: BrokerState,
    key: str,
    decision: WaitForSwap | Load,
    deadline: float,
    on_behalf: audit.Actor | None = None,
    waiting: Waiting | None = None,
) -> SwapEnd:
    """Wait for the swap or the load with a ticket in the name's queue (503 when full)."""
    if waiting is None:
        waiting = Waiting(state.queue, key, "-", "default")
    waiting_on: tuple[str, object] = (
        ("load", decision.entry.key) if isinstance(decision, Load) else ("swap", decision.swap_id)
    )
    ticket = waiting.hold(waiting_on)
    metrics.WAITING.inc()
    try:
        remaining = deadline - time.monotonic()
        if isinstance(decision, Load):
            # The engine loads on behalf of this request's key (the audit trail).
            wait = state.loads.load(decision.entry.key, remaining, on_behalf)
            swap_id, model_key = None, decision.entry.key
        else:
            wait = state.watcher.wait(decision.swap_id, remaining)
            swap_id, model_key = decision.swap_id, ""
        if waiting.progress is None:
            ending = wait
        else:
            ending = tell_progress(wait, waiting, ticket, swap_id, model_key)
        try:
            end = await ending
        except TimeoutError:
            if isinstance(decision, Load):
                raise
            raise Busy(
                f"{key} waits for swap {decision.swap_id}, which has not finished in time.",
                code="swap_timeout",
                retry_after=QUEUE_RETRY_AFTER,
                swap_id=decision.swap_id,
            ) from None
        # Everyone who waited on it is ready now, so the queue's order decides who goes.
        waiting.queues.wait_ended(key, waiting_on)
        return end
    finally:
        metrics.WAITING.dec()


async def tell_progress(
    wait: Awaitable[SwapEnd], waiting: Waiting, ticket: Ticket, swap_id: int | None, model_key: str
) -> SwapEnd:
    """Await `wait`, telling the client its position and the load's phase and ETA."""
    task = asyncio.ensure_future(wait)
    try:
        while True:
            queue = waiting.queues.get(ticket.key)
            position = queue.position(ticket)
            load = await load_progress(swap_id, model_key)
            wait_s = (load[1] if load else 0.0) + queue.estimated_wait(position)
            waiting.say(f"queue position {position}, estimated wait {wait_s:.0f} s")
            if load is not None:
                waiting.say(load[0])
            done, _ = await asyncio.wait({task}, timeout=PROGRESS_EVERY)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()


async def in_flight_now(state: BrokerState) -> dict[str, int]:
    """Requests in flight per service, every process's where they are shared: the other
    processes' first (one Redis round trip), then this process's own, read last so that
    no await falls between reading them and counting the request a pick sends."""
    activity = state.activity
    theirs = None if activity.others is None else await activity.others()
    mine = activity.snapshot()
    return (mine if theirs is None else mine.plus(theirs)).in_flight


def may_fail_over(exc: BrokerError) -> bool:
    """The backend failed before answering in a way another replica may not: it refused
    the connection or did not accept it in time (`connect_failed`), or reset or closed
    it before a response head (`upstream_error`). Not a read timeout: the request may
    be running there; and never a 4xx, which another replica would answer alike."""
    return exc.code in ("connect_failed", "upstream_error")


async def forward(
    request: HttpRequest,
    state: BrokerState,
    decision: Forward,
    body: bytes,
    exchange: Exchange,
    caller: Caller | None = None,
) -> HttpResponse:
    model = decision.limit_key
    # A key with a token quota: read the answer's tokens as it goes out (`quotas`).
    tokens = (
        quotas.TokenCounter() if caller is not None and caller.tokens_per_day is not None else None
    )
    if decision.replicas:
        decision = least_busy(decision, await in_flight_now(state))
    service = decision.service
    # Counted before any await: concurrent requests of this process see it when they pick.
    state.activity.started(service.name)
    shared = state.shared_limits
    try:
        if shared is None:
            state.limits.acquire(model)  # 429 past the per-model limit of this process
            slot = ""
        else:
            # 429 past the limit of all processes together; the request counts as in
            # flight at its service and for its client in every process (eviction,
            # /api/status, the replicas' balance).
            slot = await shared.acquire(model, service=service.name, client=exchange.client)
    except BaseException:
        state.activity.withdraw(service.name)
        raise
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

    async def move_to(replica: ServiceRoute) -> None:
        """The request's counts go with it to the replica it is retried on."""
        nonlocal service, slot
        state.activity.finished(service.name)
        state.activity.started(replica.name)
        if shared is not None and slot != LOCAL_SLOT:
            try:
                # One over the limit: this request still holds its first slot.
                moved = await shared.acquire(
                    model, max_concurrency() + 1, service=replica.name, client=exchange.client
                )
            except TooManyRequests:
                moved = ""  # others filled it meanwhile: keep the first slot
            if moved:
                shared.release(model, slot)
                slot = moved
        service = replica

    query = request.META.get("QUERY_STRING")
    headers = forwarded_headers(request.headers.items(), request.META.get("REMOTE_ADDR", ""))
    if tokens is not None:
        # A compressed answer could not be read for its tokens.
        headers = [(n, v) for n, v in headers if n.lower() != "accept-encoding"]

    sent = 0.0

    async def send(to: ServiceRoute) -> httpx.Response:
        nonlocal sent
        url = to.url(decision.path) + (f"?{query}" if query else "")
        sent_headers = headers
        if to.backend_api_key:
            sent_headers = [*headers, ("Authorization", f"Bearer {to.backend_api_key}")]
        await state.residency.ensure_loaded(to)  # the broker may have unloaded it
        sent = time.perf_counter()
        return await open_upstream(
            state.transport,
            request.method or "POST",
            url,
            sent_headers,
            body,  # bytes in memory: the same body can be sent again to a replica
            service=to.name,
            read_timeout_s=read_timeout(decision.path),
        )

    upstream: httpx.Response | None
    try:
        try:
            upstream = await send(service)
            failed = f"answered {upstream.status_code}" if upstream.status_code >= 500 else ""
        except BrokerError as exc:
            if not (decision.replicas and may_fail_over(exc)):
                raise
            failed, upstream = f"failed ({exc.code}: {exc.message})", None
        retry = decision.failover() if failed else None
        if retry is not None:
            # Nothing of this answer has reached the client: the status line is sent
            # only when `forward` returns. So the request goes once to another replica.
            # A 5xx here is what vLLM answers when its engine died or a generation failed
            # (an empty 500: vllm/entrypoints/launcher.py `_add_shutdown_handlers`); once
            # a stream has begun vLLM sends the error as a chunk instead, past retrying.
            log.warning(
                "broker failover: %s %s on %s %s before any byte reached the client; "
                "retrying once on %s",
                request.method,
                decision.path,
                service.name,
                failed,
                retry.service.name,
            )
            if upstream is not None:
                await upstream.aclose()
            metrics.FAILOVERS.labels(model or "-", service.name).inc()
            await move_to(retry.service)
            upstream = await send(service)
    except BaseException as exc:
        release(None, exc.status if isinstance(exc, BrokerError) else 499)
        raise
    assert upstream is not None
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
    if caller.allowed_models:
        table = permissions.narrowed(caller, table)  # an alias points where the key goes
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

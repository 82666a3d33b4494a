"""The broker's wait queue: priority classes with aging, round-robin by client within one.

A request that must wait for its model (a load, a swap of its backend) takes a ticket in
the queue of the name it asked for. When the model can serve, waiting tickets are let
through in order, as many as the per-model concurrency limit leaves room for:

1. by effective class: `interactive`, then `default`, then `batch`; a ticket's class
   improves by one every `ARBITER_BROKER_PRIORITY_AGING_SECONDS` (30) it has waited, so a
   batch request is never starved for good;
2. within a class, round-robin by client (`X-Client-Id`, else the key): the client served
   longest ago goes first, each client's tickets in arrival order.

Everything lives in one process and is touched only from its event loop (as `limits`).
A full queue answers 503 `queue_full`; the bound is `ARBITER_BROKER_QUEUE_SIZE`.

Tickets become *ready* when the thing they waited for is over. Every ticket waiting on
the same swap or load is made ready at once, by the first of its waiters to see the end
(`wait_ended`), so the queue's order decides who goes first, never the order in which the
waiters happen to wake (on a busy machine hundreds of them take a while). A ready ticket
passes a better-placed one that waits for something else only after `SETTLE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings

from arbiter.broker.errors import Busy, InvalidRequest
from arbiter.broker.limits import QUEUE_RETRY_AFTER, max_concurrency, queue_size
from arbiter.models import ApiKey

PRIORITIES = ApiKey.PRIORITIES  # best first
PRIORITY_HEADER = "X-Arbiter-Priority"
DEFAULT_AGING_SECONDS = 30.0
SETTLE_SECONDS = 0.25
# Until a model has served a request, the guess of how long one takes (estimated waits).
DEFAULT_SERVICE_SECONDS = 1.0


def aging_seconds() -> float:
    return float(getattr(settings, "ARBITER_BROKER_PRIORITY_AGING_SECONDS", DEFAULT_AGING_SECONDS))


def request_priority(key_priority: str, header: str | None) -> str:
    """The request's class: the key's, lowered (never raised) by `X-Arbiter-Priority`.

    An unknown value is refused (400 naming the header); a class above the key's is
    lowered to the key's, never refused: a client may send one header to every key."""
    if header is None:
        return key_priority
    wanted = header.strip().lower()
    if wanted not in PRIORITIES:
        raise InvalidRequest(
            f"{PRIORITY_HEADER} must be one of {', '.join(PRIORITIES)}, not {header[:40]!r}.",
            code="invalid_priority",
            param=PRIORITY_HEADER,
        )
    own = PRIORITIES.index(key_priority) if key_priority in PRIORITIES else 1
    return PRIORITIES[max(own, PRIORITIES.index(wanted))]


@dataclass(eq=False)
class Ticket:
    """One waiting request."""

    key: str
    client: str
    priority: str
    seq: int
    enqueued_at: float = field(default_factory=time.monotonic)
    ready_since: float | None = None
    waiting_on: tuple[str, object] | None = None  # ("swap", id) or ("load", model key)
    granted: asyncio.Future[None] | None = None
    position: int = 0  # how many tickets were ahead of it when it joined

    def rank(self, now: float, aging: float) -> int:
        """0 is best; every `aging` seconds waited moves the ticket up one class."""
        steps = int(max(0.0, now - self.enqueued_at) // aging) if aging > 0 else 0
        return max(0, PRIORITIES.index(self.priority) - steps)


class ModelQueue:
    """The tickets waiting for one requested name, and its requests in flight."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.tickets: list[Ticket] = []
        self.in_flight = 0
        self.last_served: dict[str, int] = {}  # client -> serve counter at its last turn
        self.served = 0
        self.service_seconds = DEFAULT_SERVICE_SECONDS  # moving average, for estimates
        self.timer: asyncio.TimerHandle | None = None

    def order(self, now: float | None = None) -> list[Ticket]:
        """The tickets in the order they will be let through."""
        now = time.monotonic() if now is None else now
        aging = aging_seconds()
        by_rank: dict[int, dict[str, list[Ticket]]] = {}
        for ticket in sorted(self.tickets, key=lambda t: t.seq):
            clients = by_rank.setdefault(ticket.rank(now, aging), {})
            clients.setdefault(ticket.client, []).append(ticket)
        ordered: list[Ticket] = []
        for rank in sorted(by_rank):
            clients = by_rank[rank]
            turns = sorted(clients, key=lambda c: (self.last_served.get(c, -1), clients[c][0].seq))
            for row in itertools.zip_longest(*(clients[c] for c in turns)):
                ordered.extend(t for t in row if t is not None)
        return ordered

    def position(self, ticket: Ticket) -> int:
        try:
            return self.order().index(ticket)
        except ValueError:
            return 0

    def estimated_wait(self, position: int) -> float:
        """Seconds until a ticket at `position` is let through, once the model serves."""
        limit = max(1, max_concurrency())
        return round(
            (position // limit + (1 if self.in_flight >= limit else 0)) * self.service_seconds, 1
        )

    def dispatch(self) -> None:
        """Let through the best ready tickets the concurrency limit has room for."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        room = max_concurrency() - self.in_flight
        if room <= 0:
            return
        now = time.monotonic()
        ready = [t.ready_since for t in self.tickets if t.ready_since is not None]
        if not ready:
            return
        settled = now - min(ready) >= SETTLE_SECONDS
        for ticket in self.order(now):
            if room <= 0:
                break
            if ticket.ready_since is None:
                if settled:
                    continue  # still waiting for something else: others may pass it
                delay = SETTLE_SECONDS - (now - min(ready))
                self.timer = asyncio.get_running_loop().call_later(delay, self.dispatch)
                return
            self._grant(ticket)
            room -= 1

    def _grant(self, ticket: Ticket) -> None:
        self.tickets.remove(ticket)
        self.in_flight += 1
        self.served += 1
        self.last_served[ticket.client] = self.served
        if ticket.granted is not None and not ticket.granted.done():
            ticket.granted.set_result(None)


class WaitQueues:
    """Every requested name's `ModelQueue` in this event loop."""

    def __init__(self) -> None:
        self.queues: dict[str, ModelQueue] = {}
        self.counter = itertools.count()

    def get(self, key: str) -> ModelQueue:
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = ModelQueue(key)
        return queue

    def busy(self, key: str) -> bool:
        """Whether a request for `key` must queue behind others rather than go on."""
        queue = self.queues.get(key)
        return queue is not None and bool(queue.tickets)

    def join(self, key: str, client: str, priority: str, size: int | None = None) -> Ticket:
        """A ticket at the queue's end for its class; 503 `queue_full` past the bound."""
        size = queue_size() if size is None else size
        queue = self.get(key)
        if len(queue.tickets) >= size:
            raise Busy(
                f"{len(queue.tickets)} requests for {key} are already waiting; the queue "
                f"holds {size}.",
                code="queue_full",
                retry_after=QUEUE_RETRY_AFTER,
            )
        ticket = Ticket(key, client, priority, next(self.counter))
        ticket.granted = asyncio.get_running_loop().create_future()
        queue.tickets.append(ticket)
        ticket.position = queue.position(ticket)
        return ticket

    def unready(self, ticket: Ticket, waiting_on: tuple[str, object] | None = None) -> None:
        """The ticket waits (again) for `waiting_on`. One let through that must wait again
        gives its room back and takes its place in the queue again."""
        queue = self.get(ticket.key)
        if ticket.granted is None or ticket.granted.done():
            if ticket.granted is not None and not ticket.granted.cancelled():
                self.finished(ticket.key)
                queue = self.get(ticket.key)
            ticket.granted = asyncio.get_running_loop().create_future()
        if ticket not in queue.tickets:
            queue.tickets.append(ticket)
        ticket.ready_since = None
        ticket.waiting_on = waiting_on

    def wait_ended(self, key: str, waiting_on: tuple[str, object] | None) -> None:
        """What `waiting_on` stood for is over: every ticket waiting on it is ready now,
        and the queue lets through the best of them (see the module's docstring)."""
        if waiting_on is None:
            return
        queue = self.queues.get(key)
        if queue is None:
            return
        now = time.monotonic()
        for ticket in queue.tickets:
            if ticket.waiting_on == waiting_on and ticket.ready_since is None:
                ticket.ready_since = now
        queue.dispatch()

    async def turn(
        self,
        ticket: Ticket,
        timeout: float,
        progress: Callable[[int, float], None] | None = None,
        every: float = 2.0,
    ) -> None:
        """Wait until the queue lets `ticket` through (it then counts as in flight);
        TimeoutError past `timeout`. `progress(position, estimated_wait)` every `every` s."""
        queue = self.get(ticket.key)
        if ticket.granted is None or ticket.granted.cancelled():
            ticket.granted = asyncio.get_running_loop().create_future()
        if not ticket.granted.done():
            if ticket not in queue.tickets:  # given its slot back after a re-route
                queue.tickets.append(ticket)
            if ticket.ready_since is None:
                ticket.ready_since = time.monotonic()
            queue.dispatch()
        deadline = time.monotonic() + timeout
        while not ticket.granted.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if progress is not None:
                position = queue.position(ticket)
                progress(position, queue.estimated_wait(position))
            try:
                await asyncio.wait_for(asyncio.shield(ticket.granted), min(left, every))
            except TimeoutError:
                continue

    def leave(self, ticket: Ticket) -> None:
        """A ticket given up (an error, a timeout, a client gone): the next may go."""
        queue = self.queues.get(ticket.key)
        if queue is None:
            return
        if ticket in queue.tickets:
            queue.tickets.remove(ticket)
        if ticket.granted is not None and not ticket.granted.done():
            ticket.granted.cancel()
        queue.dispatch()

    def started(self, key: str) -> None:
        """A request for `key` that did not wait goes on: it counts as in flight."""
        self.get(key).in_flight += 1

    def finished(self, key: str, seconds: float | None = None) -> None:
        """A request let through (or started) is over: its room goes to the next ticket."""
        queue = self.queues.get(key)
        if queue is None:
            return
        queue.in_flight = max(0, queue.in_flight - 1)
        if seconds is not None:
            queue.service_seconds = 0.8 * queue.service_seconds + 0.2 * seconds
        if queue.tickets:
            queue.dispatch()
        elif not queue.in_flight:
            self.queues.pop(key, None)

    @property
    def total(self) -> int:
        return sum(len(q.tickets) for q in self.queues.values())

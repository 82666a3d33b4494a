"""Huey tasks: drain the webhook outbox.

`deliver_pending` runs when an event's transaction commits (and when a retry falls due);
`drain_webhook_outbox` runs every minute (huey's periodic tasks are minute-grained) and
catches whatever a restart or a lost wake-up left behind; `prune_webhook_deliveries`
applies the delivery retention hourly.

Neither task sends anything itself: each due delivery goes to a small pool of sender
threads in the worker process and the task returns at once. A receiver that hangs so
costs one sender thread for its own timeout; it never holds a huey worker, never
delays another endpoint's delivery, and never touches the swap that emitted the event.
Claims (`webhooks.claim_delivery`) make a duplicate submission harmless.
"""

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from django.db import connections
from django.utils import timezone
from huey import crontab
from huey.contrib.djhuey import db_periodic_task, db_task

from coordination import webhooks

logger = logging.getLogger(__name__)

SENDER_THREADS = 8


class SenderPool:
    """Threads that make delivery attempts; each delivery is queued at most once."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._queued: dict[int, Future] = {}

    def submit(self, delivery_id: int) -> bool:
        with self._lock:
            if delivery_id in self._queued:
                return False
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._threads, thread_name_prefix="webhook-sender"
                )
            future = self._executor.submit(self._send, delivery_id)
            self._queued[delivery_id] = future
        return True

    def _send(self, delivery_id: int) -> None:
        try:
            self._attempt(delivery_id)
        finally:
            connections.close_all()  # this thread's connections only

    def _attempt(self, delivery_id: int) -> None:
        result = None
        try:
            result = webhooks.attempt_delivery(delivery_id)
        except Exception:
            # Messages from our code never carry secrets; tracebacks carry no locals.
            logger.exception("webhook delivery %s: attempt crashed", delivery_id)
        finally:
            with self._lock:
                self._queued.pop(delivery_id, None)
        if result is not None and result.next_attempt_at is not None:
            # Wake up when the retry falls due; the periodic drain is the safety net.
            delay = (result.next_attempt_at - timezone.now()).total_seconds()
            try:
                webhooks.wake_workers(delay=max(delay, 0.0))
            except Exception:
                logger.exception("webhook delivery %s: could not schedule the retry", delivery_id)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no attempt is queued or running (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queued:
                    return True
            time.sleep(0.01)
        return False


senders = SenderPool(SENDER_THREADS)


def send_due_deliveries() -> int:
    """Hand every due, unclaimed delivery to the sender threads; how many were queued."""
    return sum(senders.submit(pk) for pk in webhooks.due_delivery_ids())


@db_task()
def deliver_pending() -> None:
    send_due_deliveries()


def wake(delay: float) -> None:
    """The outbox's waker: a delivery round now, or after `delay` seconds."""
    if delay > 0:
        deliver_pending.schedule(delay=delay)
    else:
        deliver_pending()


webhooks.set_waker(wake)


@db_periodic_task(crontab(minute="*"))
def drain_webhook_outbox() -> None:
    queued = send_due_deliveries()
    if queued:
        logger.info("webhook outbox: %s due deliveries queued", queued)


@db_periodic_task(crontab(minute="17"))
def prune_webhook_deliveries() -> None:
    """Hourly: finished deliveries past ARBITER_WEBHOOK_DELIVERY_RETENTION_DAYS go."""
    deleted = webhooks.prune_finished()
    if deleted:
        logger.info("webhook retention: %s finished deliveries deleted", deleted)

"""The domain's events: Django signals the core sends when something changed.

A leaf: this module imports nothing of ours, so every layer may send these and none of
them learns who listens. The domain never renders HTML or touches a channel group; the
dashboard's `dashboard/live.py` is the one set of receivers that renders the fragments
and publishes them to the sockets (paperless-ngx does the same with one receiver and one
publish helper). The webhooks' outbox listens to `swap_finished`
(`coordination/webhooks/swap_events.py`) and the three alert signals below (`alerts.py`).

How to send:
- `swap_finished`, `service_health_changed`, `host_online_changed` and
  `restart_gave_up` inside the transaction of the change they report (their receivers
  write webhook rows that must commit or roll back with it, and may raise to roll it
  back);
- every other signal once the change is visible: after the transaction committed
  (`send_on_commit`), or right away where nothing is open. Their receivers never raise
  into the sender and never wait on a socket.
Senders on an event loop call `send` right there (the receivers only schedule work) or,
where they are in a database thread anyway, send from that thread (`dashboard/live.py`'s
`publish` works from either).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.dispatch import Signal

# A swap reached a final state (complete / failed / cancelled); kwargs: swap_id, state,
# dry_run. Sent inside that state's transaction (coordination writes the webhook event).
swap_finished = Signal()

# A service's probed health flipped between up and down; kwargs: service_id, previous,
# health, detail (why it is down). Sent inside the transaction that records the flip
# (coordination writes service_down / service_recovered webhook events).
service_health_changed = Signal()

# A host went offline (missed samples reached ARBITER_OFFLINE_AFTER_MISSES) or came back
# online (a sample after being offline); kwargs: host_id, online, error. Sent inside the
# transaction that records it (coordination writes host_offline / host_online events).
host_online_changed = Signal()

# The restart policy gave up on a crashed model; kwargs: service_id, swap_id (the last
# restart, or None), model_key, host_id, reason. Sent inside the transaction that marks
# the service failed (coordination writes the restart_gave_up event).
restart_gave_up = Signal()

# A swap moved: a state change or log lines stored; kwargs: swap_id, ended (its final
# state was just recorded).
swap_progressed = Signal()

# A host's sampling tick is recorded; kwargs: host_id, latest (the GpuSample rows just
# written, or None when the tick missed and only the miss count changed).
host_sampled = Signal()

# The services' state changed: a probe round ended, or an edit (enable, disable, VRAM).
services_changed = Signal()

# The swap lock was acquired, extended, released or expired; kwargs: forced (a staff
# force release, which also queued a webhook event).
lock_changed = Signal()

# A lease was acquired, extended, released or force-released; kwargs: forced (a staff
# force release). Sent on commit (coordination.leases.operations).
leases_changed = Signal()

# A scheduled job was registered, updated or deleted.
schedules_changed = Signal()

# A webhook endpoint was edited or a delivery attempt (or test send) was logged.
webhooks_changed = Signal()


def send_on_commit(signal: Signal, **kwargs: Any) -> None:
    """Send `signal` once the current transaction commits (at once outside one); a
    rolled-back change sends nothing."""
    transaction.on_commit(lambda: signal.send(sender=None, **kwargs), robust=True)

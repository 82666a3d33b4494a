"""The lock's gate: what every change to a GPU asks before it happens.

Reads and row locks only; no grant changes hands here (that is `operations`). The
engine creates swaps and fences them through this module, below the rest of the
coordination layer: it needs nothing but the lock's row (coordination.models).
"""

from __future__ import annotations

import secrets

from django.db import transaction
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from coordination.locks.state import LockState, lock_state, locked_error
from coordination.locks.values import GLOBAL, hash_token
from coordination.models import SwapLock


def row_for_update(scope: str) -> SwapLock | None:
    # FOR UPDATE on PostgreSQL: the row as last committed, locked until our commit.
    # A no-op on SQLite, where the IMMEDIATE transaction already excludes writers.
    return SwapLock.objects.select_for_update().filter(scope=scope).first()


def current_lock(scope: str = GLOBAL) -> LockState:
    """The lock's state now. Never the token or its hash. Writes nothing."""
    return lock_state(SwapLock.objects.filter(scope=scope).first(), scope, timezone.now())


def assert_may_swap(token: str | None, *, scope: str = GLOBAL) -> int | None:
    """The gate a swap passes, called INSIDE the transaction that creates the swap.

    Lock free (or expired): returns None. Held and `token` is the holder's: returns the
    generation, which the swap records. Held otherwise: raises Locked (423).
    """
    if not transaction.get_connection().in_atomic_block:
        raise TransactionManagementError(
            "assert_may_swap() must run inside the transaction that creates the swap"
        )
    now = timezone.now()
    row = row_for_update(scope)
    if row is None or not row.is_held(now):
        return None
    if token and secrets.compare_digest(hash_token(token), row.token_hash):
        return row.generation
    raise locked_error(row, now)


def assert_may_change_gpu(token: str | None, *, scope: str = GLOBAL) -> int | None:
    """The gate of every other change to what runs on a GPU, with the swap's answers.

    Cancelling a swap, disabling or enabling a service, editing or deleting a catalog
    model that is loaded or being swapped, downloading to or deleting from a host's
    disk, and the broker's evictions and idle unloads: while someone holds the lock,
    only a caller presenting the holder's token may do them (anyone else: Locked, 423,
    with the holder, expires_at and Retry-After). Lock free: None; the holder: the
    generation. Run it inside the transaction that makes the change when there is one
    (the check and the change then commit together); otherwise it opens its own.
    """
    with transaction.atomic():
        return assert_may_swap(token, scope=scope)

"""The swap lock: acquire, extend, release, force release, and the gate every swap passes.

Each change of hands is ONE conditional UPDATE on the scope's row, judged by its row
count: the database decides who wins, never a read-then-write in Python. That holds on
SQLite (IMMEDIATE transactions serialise writers) and on PostgreSQL (an UPDATE waits for
a concurrent one on the same row, then re-checks its WHERE clause against the new row).

Only the server clock counts: a lock is held while `token_hash` is set and `expires_at`
is in the future. An expired lock is free; its token is stale for ever (a later extend
gets 412, never a resurrection). The token is returned once, by the grant; only its
sha256 is stored, and neither is ever logged.

Modules: `values` (limits, cleaners, token hashing), `state` (what the API answers),
`gate` (the lock's state, the swap gate and the gate of every other GPU change: what the
engine and the broker ask), `operations` (acquire, extend, release, force release), `api`
and `schemas` (the lock endpoints).
"""

from __future__ import annotations

from coordination.locks.gate import assert_may_change_gpu, assert_may_swap, current_lock
from coordination.locks.operations import acquire, extend, force_release, release
from coordination.locks.state import LockGrant, LockState
from coordination.locks.values import (
    GLOBAL,
    PURPOSE_MAX,
    TOKEN_HEADER,
    clean_holder,
    clean_text,
    clean_ttl,
    hash_token,
    iso,
)

__all__ = [
    "GLOBAL",
    "PURPOSE_MAX",
    "TOKEN_HEADER",
    "LockGrant",
    "LockState",
    "acquire",
    "assert_may_change_gpu",
    "assert_may_swap",
    "clean_holder",
    "clean_text",
    "clean_ttl",
    "current_lock",
    "extend",
    "force_release",
    "hash_token",
    "iso",
    "release",
]

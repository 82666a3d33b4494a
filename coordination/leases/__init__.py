"""Leases: a hold on one model on one host, so nobody but its holder swaps it out,
evicts it or unloads it (refuse, never break: the blocked party gets 423 with
`blocked_by` naming the lease and Retry-After).

Modules: `values` (the token header, the 423, the lease as plain data), `serving` (what
a host serves now, as catalog keys), `gate` (what swaps, the broker and service edits
ask), `operations` (acquire, extend, release, force release), `api` and `schemas` (the
`/api/leases` endpoints). The lock and leases compose: each is checked on its own.
"""

from __future__ import annotations

from coordination.leases.gate import (
    active_leases,
    assert_none_leased,
    assert_not_leased,
    blocking_lease,
    blocking_lease_among,
    leased_on,
)
from coordination.leases.operations import acquire, extend, force_release, held_leases, release
from coordination.leases.serving import host_served_keys, hosts_serving, served_keys
from coordination.leases.values import TOKEN_HEADER, LeaseGrant, LeaseState, blocked_by

__all__ = [
    "TOKEN_HEADER",
    "LeaseGrant",
    "LeaseState",
    "acquire",
    "active_leases",
    "assert_none_leased",
    "assert_not_leased",
    "blocked_by",
    "blocking_lease",
    "blocking_lease_among",
    "extend",
    "force_release",
    "held_leases",
    "host_served_keys",
    "hosts_serving",
    "leased_on",
    "release",
    "served_keys",
]

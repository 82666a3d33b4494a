"""The leases' operations: acquire, extend, release, force release.

A lease is a row: it survives restarts and ends by its holder's release, a staff force
release or its TTL (only the server clock counts; nothing sweeps it). Its token is
returned once by the grant and only its sha256 is stored. Each extend and release is
one conditional UPDATE on the lease's row, judged by its row count.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from arbiter import events
from arbiter.errors import Conflict, NotFound, PreconditionFailed, PreconditionRequired
from arbiter.models import Host, Swap, SwapHost
from catalog.models import CatalogModel
from coordination import webhooks
from coordination.leases.serving import hosts_serving
from coordination.leases.values import (
    FORCE_RELEASED_EVENT,
    TOKEN_HEADER,
    LeaseGrant,
    LeaseState,
    lease_state,
)
from coordination.locks.values import (
    PURPOSE_MAX,
    REASON_MAX,
    checked,
    clean_holder,
    clean_text,
    clean_ttl,
    hash_token,
    iso,
)
from coordination.models import Lease

logger = logging.getLogger(__name__)


def _announce(*, forced: bool = False) -> None:
    events.send_on_commit(events.leases_changed, forced=forced)


def _host(host_name: str | None, model: CatalogModel) -> Host:
    if host_name:
        host = Host.objects.filter(name=host_name).first()
        if host is None:
            raise NotFound(f"no host named {host_name!r}", field="host")
        return host
    serving = hosts_serving(model)
    if len(serving) != 1:
        where = "no host" if not serving else ", ".join(h.name for h in serving)
        raise Conflict(
            f"host: {model.key!r} is served on {where} now; name the host to lease it on",
            field="host",
            hosts=[h.name for h in serving],
        )
    return serving[0]


def _replacing_swap(host: Host, model_key: str) -> Swap | None:
    """A swap under way on the host that loads another model (it would replace the one
    the lease is to keep): leasing now would protect a model on its way out."""
    claim = (
        SwapHost.objects.select_related("swap")
        .filter(host=host, active=True, swap__state__in=Swap.ACTIVE_STATES, swap__dry_run=False)
        .exclude(swap__model_key=model_key)
        .first()
    )
    return claim.swap if claim is not None else None


def _lease(lease_id: int) -> Lease:
    lease = Lease.objects.select_related("host").filter(pk=lease_id).first()
    if lease is None:
        raise NotFound(f"no lease with id {lease_id}", field="lease_id")
    return lease


def _require_token(token: str | None) -> str:
    if not token:
        raise PreconditionRequired(
            f"send the lease token in the {TOKEN_HEADER} header", field=TOKEN_HEADER
        )
    return token


def acquire(
    model_key: str,
    host_name: str | None,
    holder: str,
    ttl_seconds: int,
    purpose: str = "",
    *,
    system: bool = False,
) -> LeaseGrant:
    """Lease the model on the host (None: the one host serving it now) for ttl seconds.

    Raises InvalidInput (422) naming holder / ttl_seconds / purpose, NotFound (404)
    naming model or host, Conflict (409) naming host when none or several serve it, or
    while a swap of another model is under way there.
    Several leases may hold one model on one host (each holder keeps it there).
    """
    holder = checked("holder", clean_holder, holder)
    ttl_seconds = checked("ttl_seconds", clean_ttl, ttl_seconds)
    purpose = checked("purpose", clean_text, purpose, PURPOSE_MAX)
    model = CatalogModel.objects.by_key(model_key, field="model")
    host = _host(host_name, model)
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        # The host's row, locked until commit: a swap being created on it waits (its
        # `create_swap` locks the row too), so it either sees this lease or is seen here.
        Host.objects.select_for_update().filter(pk=host.pk).first()
        replacing = _replacing_swap(host, model.key)
        if replacing is not None:
            raise Conflict(
                f"host: swap {replacing.pk} is loading {replacing.model_key!r} on {host.name}; "
                "lease once it has ended",
                field="host",
                swap_id=replacing.pk,
            )
        now = timezone.now()
        lease = Lease.objects.create(
            model_key=model.key,
            host=host,
            holder=holder,
            purpose=purpose,
            token_hash=hash_token(token),
            system=system,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
        _announce()
    logger.info("lease %d of %s on %s granted to %r", lease.pk, model.key, host.name, holder)
    return LeaseGrant(
        id=lease.pk,
        token=token,
        model=model.key,
        host=host.name,
        holder=holder,
        purpose=purpose,
        system=system,
        created_at=lease.created_at,
        expires_at=lease.expires_at,
    )


def extend(lease_id: int, token: str | None, ttl_seconds: int) -> LeaseState:
    """Move the lease's expiry to now + ttl. One UPDATE.

    Raises NotFound (404, lease_id), PreconditionRequired (428) without a token,
    Conflict (409) for a token that is not this lease's, PreconditionFailed (412) when
    the lease has ended (released or expired: never brought back).
    """
    ttl_seconds = checked("ttl_seconds", clean_ttl, ttl_seconds)
    lease = _lease(lease_id)
    token = _require_token(token)
    if not secrets.compare_digest(hash_token(token), lease.token_hash):
        raise Conflict(
            "this token is not the lease's; the lease was left as it is", field=TOKEN_HEADER
        )
    with transaction.atomic():
        now = timezone.now()
        changed = Lease.objects.held(now).filter(pk=lease_id, token_hash=lease.token_hash)
        if not changed.update(expires_at=now + timedelta(seconds=ttl_seconds)):
            raise PreconditionFailed(
                f"lease {lease_id} has ended (released, force-released or expired); "
                "acquire a new one",
                field=TOKEN_HEADER,
            )
        _announce()
        return lease_state(_lease(lease_id), now)


def release(lease_id: int, token: str | None, *, reason: str = "") -> LeaseState:
    """End the lease by its token: one UPDATE. Returns the ended lease (its holder,
    purpose, model and host stay on the row).

    Raises NotFound (404), PreconditionRequired (428), Conflict (409) for a wrong token
    or a lease that has already ended - and then nothing is changed.
    """
    reason = checked("reason", clean_text, reason, REASON_MAX)
    _lease(lease_id)  # 404 before 428
    token = _require_token(token)
    now = timezone.now()
    released = (
        Lease.objects.held(now)
        .filter(pk=lease_id, token_hash=hash_token(token))
        .update(
            released_at=now,
            released_by=F("holder"),
            release_reason=reason or "released by the holder",
        )
    )
    if not released:
        raise Conflict(
            f"this token does not hold lease {lease_id} (wrong token, or the lease has "
            "ended); the lease was left as it is",
            field=TOKEN_HEADER,
        )
    _announce()
    logger.info("lease %d released by its holder", lease_id)
    return lease_state(_lease(lease_id), now)


def force_release(lease_id: int, *, reason: str = "", actor: Any = None) -> LeaseState:
    """Staff end someone's lease (the caller checks who may, and writes the audit row in
    the same transaction). Returns the ended lease. Raises NotFound (404), Conflict
    (409) when it is not held."""
    reason = checked("reason", clean_text, reason, REASON_MAX)
    actor_name = actor.get_username() if hasattr(actor, "get_username") else str(actor or "")
    with transaction.atomic():
        lease = _lease(lease_id)
        now = timezone.now()
        changed = (
            Lease.objects.held(now)
            .filter(pk=lease_id)
            .update(
                released_at=now,
                released_by=actor_name[:200] or "staff",
                release_reason=reason or "force-released",
            )
        )
        if not changed:
            raise Conflict(
                f"lease {lease_id} is not held: there is nothing to force-release", field="lease_id"
            )
        # The holder's job may rely on the model staying: tell its receivers, in this
        # transaction, as the lock's force release does.
        webhooks.emit_event(
            FORCE_RELEASED_EVENT,
            {
                "lease_id": lease_id,
                "model": lease.model_key,
                "host": lease.host.name,
                "old_holder": lease.holder,
                "purpose": lease.purpose,
                "actor": actor_name,
                "reason": reason,
                "at": iso(now) or "",
            },
        )
        _announce(forced=True)
    logger.warning("lease %d force-released by %s from %r", lease_id, actor_name, lease.holder)
    return lease_state(_lease(lease_id), now)


def held_leases() -> list[LeaseState]:
    """The held leases, as readers see them (never a token or its hash)."""
    now = timezone.now()
    rows = Lease.objects.held(now).select_related("host").order_by("expires_at", "pk")
    return [lease_state(lease, now) for lease in rows]

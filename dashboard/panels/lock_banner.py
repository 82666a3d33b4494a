"""The lock banner (`#lock-banner`): holder, countdown, lock-delay, the last force release."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict

from django.template.loader import render_to_string
from django.utils import timezone

from coordination import locks
from coordination.models import LockAudit
from dashboard.panels.labels import format_countdown, utc_label

# The last force release stays on the banner this long (then the ticker hides it).
FORCE_RELEASE_SHOWN_FOR = timedelta(minutes=2)


class ForceReleaseView(TypedDict):
    """The last force release, shown on the banner for FORCE_RELEASE_SHOWN_FOR."""

    actor: str
    at: datetime
    at_label: str
    reason: str
    old_holder: str
    old_generation: int
    new_generation: int
    lock_delay_seconds: int
    shown_until: datetime
    shown_seconds_left: float


class LockBannerView(TypedDict):
    """The swap lock as the banner shows it."""

    state: str  # held / blocked / free
    visible: bool
    holder: str
    purpose: str
    generation: int
    acquired_at: datetime | None
    expires_at: datetime | None
    expires_label: str
    seconds_left: float
    countdown: str
    blocked_until: datetime | None
    blocked_label: str
    blocked_seconds_left: float
    blocked_countdown: str
    last_force_release: ForceReleaseView | None


def _last_force_release(now: datetime) -> ForceReleaseView | None:
    audit = LockAudit.objects.filter(scope=locks.GLOBAL, at__gt=now - FORCE_RELEASE_SHOWN_FOR)
    row = audit.order_by("-at", "-pk").first()
    if row is None:
        return None
    return ForceReleaseView(
        actor=row.actor_name,
        at=row.at,
        at_label=utc_label(row.at),
        reason=row.reason,
        old_holder=row.old_holder,
        old_generation=row.old_generation,
        new_generation=row.new_generation,
        lock_delay_seconds=row.lock_delay_seconds,
        shown_until=row.at + FORCE_RELEASE_SHOWN_FOR,
        shown_seconds_left=(row.at + FORCE_RELEASE_SHOWN_FOR - now).total_seconds(),
    )


def lock_banner_view(now: datetime | None = None) -> LockBannerView:
    now = now or timezone.now()
    lock = locks.current_lock()
    left = (lock.expires_at - now).total_seconds() if lock.held and lock.expires_at else 0.0
    blocked = lock.blocked_until
    blocked_left = (blocked - now).total_seconds() if blocked else 0.0
    notice = _last_force_release(now)
    state = "held" if lock.held else "blocked" if blocked else "free"
    return LockBannerView(
        state=state,
        visible=lock.held or blocked is not None or notice is not None,
        holder=lock.holder or "",
        purpose=lock.purpose or "",
        generation=lock.generation,
        acquired_at=lock.acquired_at,
        expires_at=lock.expires_at,
        expires_label=utc_label(lock.expires_at) if lock.expires_at else "",
        seconds_left=max(0.0, left),
        countdown=format_countdown(left),
        blocked_until=blocked,
        blocked_label=utc_label(blocked) if blocked else "",
        blocked_seconds_left=max(0.0, blocked_left),
        blocked_countdown=format_countdown(blocked_left),
        last_force_release=notice,
    )


def lock_banner(
    *, can_force_release: bool = False, personal: bool = False, oob: bool = False
) -> str:
    """`#lock-banner`. `personal`: rendered for one viewer (page, poll view), so the
    force-release form is inlined for admins; otherwise (pushes) a slot fetches it."""
    context = {
        "lock": lock_banner_view(),
        "can_force_release": can_force_release,
        "personal": personal,
        "oob": oob,
    }
    return render_to_string("dashboard/partials/lock_banner.html", context)


def force_release_slot(*, can_force_release: bool) -> str:
    """`#lock-force-release`: the form for admins while the lock is held, else empty."""
    context = {"lock": lock_banner_view(), "can_force_release": can_force_release}
    return render_to_string("dashboard/partials/lock_force_release.html", context)

"""The lease panel (`#lease-panel`), next to the lock banner: who holds which model on
which host, why, and for how long; a force-release button for admins.

One fragment with three uses, like the other coordination panels: included by the page,
returned by its poll view, pushed over the socket when a lease changes
(`dashboard/live.py`). The button sits in a `{% needs "admin" %}` block, so a pushed
render reaches only admins' sockets with it (dashboard/roles.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

from django.template.loader import render_to_string
from django.utils import timezone

from coordination import leases
from dashboard.panels.labels import format_countdown, utc_label


class LeaseView(TypedDict):
    id: int
    model: str
    host: str
    holder: str
    purpose: str
    system: bool
    expires_at: datetime
    expires_label: str
    seconds_left: float
    countdown: str


def lease_views(now: datetime | None = None) -> list[LeaseView]:
    now = now or timezone.now()
    views = []
    for lease in leases.held_leases():
        left = max(0.0, (lease.expires_at - now).total_seconds())
        views.append(
            LeaseView(
                id=lease.id,
                model=lease.model,
                host=lease.host,
                holder=lease.holder,
                purpose=lease.purpose,
                system=lease.system,
                expires_at=lease.expires_at,
                expires_label=utc_label(lease.expires_at),
                seconds_left=left,
                countdown=format_countdown(left),
            )
        )
    return views


def lease_context() -> dict[str, Any]:
    return {"leases": lease_views()}


def lease_panel(*, oob: bool = False, error: str = "") -> str:
    """`#lease-panel`; hidden while no lease is held."""
    return render_to_string(
        "dashboard/partials/lease_panel.html", {**lease_context(), "oob": oob, "error": error}
    )

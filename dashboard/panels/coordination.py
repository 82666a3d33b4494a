"""The dashboard's coordination panels: the lock banner, scheduled jobs, webhook deliveries.

Each panel is one fragment with three uses: included by the page, returned by its poll
view, pushed over the socket. Its root element carries a stable id (`#lock-banner`,
`#schedule-panel`, `#webhook-panel`).

Pushes go to every dashboard, so a pushed fragment is the same for every viewer. The one
personal part - the force-release form, admins only - is therefore never pushed: a pushed
banner carries a slot that fetches it with the viewer's own session (`force_release_slot`).

Pushing them when the lock, a schedule or a delivery changes is `dashboard/live.py`'s job.

Modules: `lock_banner`, `schedules`, `webhooks` (each panel's view and fragment),
`labels` (times).
"""

from __future__ import annotations

from typing import Any

from arbiter.roles import ADMIN, may
from dashboard.panels.leases import lease_context, lease_panel
from dashboard.panels.lock_banner import force_release_slot, lock_banner, lock_banner_view
from dashboard.panels.schedules import schedule_context, schedule_panel
from dashboard.panels.webhooks import webhook_context, webhook_panel

__all__ = [
    "coordination_panels",
    "force_release_slot",
    "lease_panel",
    "lock_banner",
    "page_context",
    "schedule_panel",
    "webhook_panel",
]


def page_context(user: Any) -> dict[str, Any]:
    """What dashboard/index.html needs to include the three panels for `user`."""
    return {
        "lock": lock_banner_view(),
        "can_force_release": may(user, ADMIN),
        "personal": True,
        **lease_context(),
        **schedule_context(),
        **webhook_context(),
    }


def coordination_panels(*, oob: bool = False) -> str:
    """All three, for the socket's full state on (re)connect (never personal)."""
    return (
        lock_banner(oob=oob)
        + lease_panel(oob=oob)
        + schedule_panel(oob=oob)
        + webhook_panel(oob=oob)
    )

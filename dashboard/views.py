"""Dashboard pages. Each fragment is also served alone for the polling fallback.

Fragments are rendered without the request (the engine pushes the same renders), so each
poll view cuts the actions its person may not take (`personal`, dashboard/roles.py).
"""

import json
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from arbiter.api import audit as audit_api
from arbiter.errors import InvalidInput
from arbiter.models import Host
from arbiter.roles import ADMIN, OPERATOR, may
from coordination.models import WebhookEndpoint
from dashboard.auth import fragment_login_required
from dashboard.panels import coordination
from dashboard.panels.cluster import (
    clients_panel,
    host_history_panel,
    hosts_panel,
    page_context,
    services_panel,
)
from dashboard.panels.keys import keys_context, keys_table
from dashboard.panels.swaps import panel_context, swap_log, swap_panel
from dashboard.panels.timeline import timeline_context
from dashboard.roles import personal


@login_required
def index(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboard/index.html",
        {**page_context(), **panel_context(), **coordination.page_context(request.user)},
    )


@fragment_login_required
def hosts_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(personal(request, hosts_panel()))


@fragment_login_required
def services_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(personal(request, services_panel()))


@fragment_login_required
def host_history(request: HttpRequest, name: str) -> HttpResponse:
    """A host's GPUs over all the history the database keeps, drawn wide (a host card's
    plots link here). The page polls for its plots, so it stays current without a socket."""
    host = get_object_or_404(Host, name=name, in_inventory=True)
    panel = host_history_panel(host)
    if request.htmx:
        return HttpResponse(panel)
    return render(request, "dashboard/host_history.html", {"host_name": host.name, "panel": panel})


@fragment_login_required
def swaps_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(personal(request, swap_panel()))


@fragment_login_required
def swap_log_fragment(request: HttpRequest, swap_id: int) -> HttpResponse:
    """A swap's whole log, loaded when its history entry is opened."""
    return HttpResponse(personal(request, swap_log(swap_id)))


# -- coordination panels (dashboard/panels/) ---------------------------------------


@fragment_login_required
def lock_fragment(request: HttpRequest) -> HttpResponse:
    """The lock banner as this viewer sees it (the force-release form for admins)."""
    banner = coordination.lock_banner(can_force_release=may(request.user, ADMIN), personal=True)
    return HttpResponse(personal(request, banner))


@fragment_login_required
def lock_force_release_fragment(request: HttpRequest) -> HttpResponse:
    """The admin-only part of a pushed banner, fetched with the viewer's own session."""
    return HttpResponse(coordination.force_release_slot(can_force_release=may(request.user, ADMIN)))


@fragment_login_required
def lease_fragment(request: HttpRequest) -> HttpResponse:
    """The lease panel as this viewer sees it (the force-release buttons for admins)."""
    return HttpResponse(personal(request, coordination.lease_panel()))


@fragment_login_required
def schedule_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(personal(request, coordination.schedule_panel()))


@fragment_login_required
def webhook_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(personal(request, coordination.webhook_panel()))


@fragment_login_required
def clients_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(personal(request, clients_panel()))


# -- admin screens: API keys and webhook endpoints -----------------------------------------
# Both pages only show; their forms and buttons post to dashboard/actions.py.


def _require(request: HttpRequest, needed: str) -> None:
    if not may(request.user, needed):
        raise PermissionDenied(f"this page needs the {needed} role")


@login_required
def keys(request: HttpRequest) -> HttpResponse:
    """API keys (admins): list, create (the raw key shown once), revoke."""
    _require(request, ADMIN)
    return render(request, "dashboard/keys.html", keys_context())


@fragment_login_required
def keys_fragment(request: HttpRequest) -> HttpResponse:
    """The key table alone."""
    _require(request, ADMIN)
    return HttpResponse(keys_table())


def _compact(value: object) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(", ", ": "))


@login_required
def audit(request: HttpRequest) -> HttpResponse:
    """The audit trail (admins): the filters of GET /api/audit as a GET form, a table,
    and older / newest links (the same cursor)."""
    _require(request, ADMIN)
    filters = {name: request.GET.get(name, "").strip() for name in audit_api.FILTERS}
    error, events, next_before_id = "", [], None
    try:
        before_id = int(request.GET.get("before_id") or 0) or None
        rows = audit_api.filtered_events(filters)
        events, next_before_id = audit_api.page(rows, audit_api.DEFAULT_LIMIT, before_id)
    except ValueError:
        error = "before_id: must be a whole number"
    except InvalidInput as problem:
        error = problem.message
    kept = {name: value for name, value in filters.items() if value}
    context = {
        "filters": filters,
        "rows": [
            {"event": e, "before": _compact(e.before), "after": _compact(e.after)} for e in events
        ],
        "error": error,
        "older_query": urlencode({**kept, "before_id": next_before_id}) if next_before_id else "",
        "newest_query": urlencode(kept),
        "paged": bool(request.GET.get("before_id")),
    }
    return render(request, "dashboard/audit.html", context, status=422 if error else 200)


@login_required
def timeline(request: HttpRequest) -> HttpResponse:
    """The next 24 hours per host: runs, warm-ups, leases, the lock and conflicts
    (the same data as GET /api/timeline), drawn as bars server-side."""
    return render(request, "dashboard/timeline.html", timeline_context())


@login_required
def webhooks(request: HttpRequest) -> HttpResponse:
    """Webhook endpoints: operators read them; admins add, delete and redeliver."""
    _require(request, OPERATOR)
    context = {**coordination.webhook_context(), "event_types": WebhookEndpoint.EVENT_TYPES}
    return render(request, "dashboard/webhooks.html", context)

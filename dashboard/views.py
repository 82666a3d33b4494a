"""Dashboard pages. Each fragment is also served alone for the polling fallback."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard import coordination
from dashboard.auth import fragment_login_required
from dashboard.fragments import clients_panel, hosts_panel, page_context, services_panel
from dashboard.swaps import panel_context, swap_log, swap_panel


@login_required
def index(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboard/index.html",
        {**page_context(), **panel_context(), **coordination.page_context(request.user)},
    )


@fragment_login_required
def hosts_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(hosts_panel())


@fragment_login_required
def services_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(services_panel())


@fragment_login_required
def swaps_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(swap_panel())


@fragment_login_required
def swap_log_fragment(request: HttpRequest, swap_id: int) -> HttpResponse:
    """A swap's whole log, loaded when its history entry is opened."""
    return HttpResponse(swap_log(swap_id))


# -- coordination panels (dashboard/coordination/) ---------------------------------------


@fragment_login_required
def lock_fragment(request: HttpRequest) -> HttpResponse:
    """The lock banner as this viewer sees it (the force-release form for staff)."""
    return HttpResponse(
        coordination.lock_banner(can_force_release=request.user.is_staff, personal=True)
    )


@fragment_login_required
def lock_force_release_fragment(request: HttpRequest) -> HttpResponse:
    """The staff-only part of a pushed banner, fetched with the viewer's own session."""
    return HttpResponse(coordination.force_release_slot(can_force_release=request.user.is_staff))


@fragment_login_required
def schedule_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(coordination.schedule_panel())


@fragment_login_required
def webhook_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(coordination.webhook_panel())


@fragment_login_required
def clients_fragment(request: HttpRequest) -> HttpResponse:
    return HttpResponse(clients_panel())

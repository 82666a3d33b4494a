"""The catalog page: models, their disk status per host (loaded lazily), add forms."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from arbiter.errors import Conflict, NotFound
from arbiter.models import Host
from arbiter.roles import OPERATOR, level_of, may
from catalog.api import get_model, inventory_targets
from catalog.disk import disk_report
from catalog.forms import CatalogModelForm, HubModelForm, LocalModelForm
from catalog.models import CatalogModel
from dashboard.roles import for_level

FORMS: dict[str, type[CatalogModelForm]] = {"hub": HubModelForm, "local": LocalModelForm}


def _page(
    request: HttpRequest, forms: dict[str, CatalogModelForm] | None = None, status: int = 200
) -> HttpResponse:
    forms = forms or {}
    context = {
        "models": CatalogModel.objects.select_related("default_host"),
        "hosts": Host.objects.filter(in_inventory=True).order_by("name"),
        "hub_form": forms.get("hub") or HubModelForm(prefix="hub"),
        "local_form": forms.get("local") or LocalModelForm(prefix="local"),
        "open_form": next(iter(forms), ""),
        "model_roots": settings.ARBITER_MODEL_ROOTS,
    }
    return render(request, "catalog/index.html", context, status=status)


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return _page(request)


@login_required
@require_POST
def add_model(request: HttpRequest, source: str) -> HttpResponse:
    if not may(request.user, OPERATOR):  # the page shows viewers no form (dashboard/roles.py)
        raise PermissionDenied("adding a model needs the operator role")
    form_class = FORMS.get(source)
    if form_class is None:
        raise Http404("unknown model source")
    form = form_class(request.POST, prefix=source)
    if form.is_valid():
        try:
            model = form.save(who=request)
        except Conflict:
            return _page(request, {source: form}, status=409)
        messages.success(request, f"Added {model.key} to the catalog.")
        return redirect(f"{reverse('catalog:index')}#model-{model.key}")
    # The page again with the form open and every problem next to its field.
    return _page(request, {source: form}, status=422)


@login_required
async def disk_fragment(request: HttpRequest, key: str) -> HttpResponse:
    """One model's disk status on every host (htmx loads it after the page)."""
    try:
        model = await sync_to_async(get_model)(key)
    except NotFound as error:
        raise Http404(error.message) from error
    targets = await sync_to_async(inventory_targets)()
    entries = await disk_report(targets, model, roots=list(settings.ARBITER_MODEL_ROOTS))
    html = render_to_string(
        # No request: the fragment has no form, and the lazy user must not load here.
        "catalog/partials/model_disk.html",
        {
            "model_key": key,
            "entries": entries,
            # Hub models only: local models are never downloaded or deleted by Arbiter.
            "hub": not model.is_local,
            "download_url": reverse("api:download_model", kwargs={"key": key}),
            "delete_url": reverse("api:delete_model_disk", kwargs={"key": key}),
        },
    )
    # Download / Delete only for operators (dashboard/roles.py).
    level = await sync_to_async(level_of)(await request.auser())
    return HttpResponse(for_level(html, level))

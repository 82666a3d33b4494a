"""The catalog page: models, their disk status per host (loaded lazily), and its writes.

Every write is an htmx POST answered with the fragment it changed (NetBox's way), and
calls the same functions as the JSON API (`catalog.store` through the form, `catalog.api`
for the disk, `arbiter.api.swaps.begin_swap`), so the checks, the audit rows and the
messages are the API's. Who may write: `arbiter/route_policy.py` (operator), enforced by
`RoutePolicyMiddleware` before a view runs. A refusal comes back as the fragment that says
why, under the error's own status (422, 409, 423 ...): base.html's htmx-config swaps it.

A download runs as a task on the serving process's event loop (`manage.py serve`: daphne
and the engine share one loop) and the page polls its log, NetBox's progress panel: the
poll answers 286 once nothing runs, which stops it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from arbiter.api.swaps import begin_swap
from arbiter.engine.disk import disk_report
from arbiter.errors import ArbiterError, Conflict, NotFound
from arbiter.models import Host
from arbiter.roles import level_of
from catalog.api import (
    AcceptedDownload,
    accept_download,
    delete_from_host,
    get_model,
    inventory_targets,
)
from catalog.models import CatalogModel
from dashboard.catalog_forms import CatalogModelForm, HubModelForm, LocalModelForm
from dashboard.roles import for_level

log = logging.getLogger(__name__)

FORMS: dict[str, type[CatalogModelForm]] = {"hub": HubModelForm, "local": LocalModelForm}
STOP_POLLING = 286  # htmx: "stop polling" (the log polls while a download runs)


# -- downloads started from the page ---------------------------------------------------


@dataclass
class DiskDownload:
    """One download the page started on one host: its log lines and how it ended."""

    host: str
    lines: list[str] = field(default_factory=list)
    error: str = ""
    finished: bool = False


def on_host(host: str, message: str) -> str:
    """SSH errors already name their host ("sim-a: hf exited ..."): say it once."""
    return message if message.startswith(f"{host}: ") else f"{host}: {message}"


class PageDownloads:
    """The downloads of each model started from this process's page, newest log only.

    In memory: the task and the polls that read its log share the serving process.
    """

    def __init__(self) -> None:
        self._runs: dict[str, list[DiskDownload]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def runs(self, key: str) -> list[DiskDownload]:
        return list(self._runs.get(key, []))

    def running_hosts(self, key: str) -> list[str]:
        return [run.host for run in self.runs(key) if not run.finished]

    def start(self, download: AcceptedDownload) -> DiskDownload:
        runs = self._runs.get(download.key, [])
        if all(run.finished for run in runs):
            runs = []  # a fresh log, unless another host's download of it still writes
        # The first line now, not when the task first runs: the POST's answer shows it.
        run = DiskDownload(
            download.target.name, [f"Downloading {download.repo} to {download.target.name}…"]
        )
        self._runs[download.key] = [*runs, run]
        task = asyncio.get_running_loop().create_task(self._run(download, run))
        self._tasks.add(task)  # a strong reference until it ends
        task.add_done_callback(self._tasks.discard)
        return run

    async def _run(self, download: AcceptedDownload, run: DiskDownload) -> None:
        try:
            async for event, data in download.events():
                if event == "progress":
                    run.lines.append(data["line"])
                elif event == "error":
                    run.error = on_host(run.host, data["message"])
        except Exception as error:  # not an ArbiterError (those end the events)
            log.exception("download of %s to %s failed", download.key, run.host)
            run.error = on_host(run.host, f"download interrupted: {error}")
        finally:
            run.finished = True


DOWNLOADS = PageDownloads()


def download_log(key: str) -> dict[str, Any]:
    """What the card's log and alert show for a model (disk_progress / disk_error)."""
    runs = DOWNLOADS.runs(key)
    return {
        "key": key,
        "lines": [line for run in runs for line in run.lines],
        "errors": [run.error for run in runs if run.error],
        "running": any(not run.finished for run in runs),
    }


# -- the page ---------------------------------------------------------------------------


def _models() -> list[CatalogModel]:
    models = list(CatalogModel.objects.select_related("default_host"))
    for model in models:
        model.disk_log = download_log(model.key)  # type: ignore[attr-defined]
    return models


def _hosts() -> list[Host]:
    return list(Host.objects.filter(in_inventory=True).order_by("name"))


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    context = {
        "models": _models(),
        "hosts": _hosts(),
        "forms": [_add_context(source, FORMS[source](prefix=source)) for source in FORMS],
    }
    return render(request, "catalog/index.html", context)


def _add_context(
    source: str, form: CatalogModelForm, *, open_: bool = False, notice: str = ""
) -> dict[str, Any]:
    return {
        "source": source,
        "form": form,
        "open": open_,
        "notice": notice,
        "model_roots": settings.ARBITER_MODEL_ROOTS,
    }


@login_required
@require_POST
def add_model(request: HttpRequest, source: str) -> HttpResponse:
    """One add form: the form again with every problem next to its field (422), or a
    fresh form with a notice and the model list with the new card (out of band)."""
    form_class = FORMS.get(source)
    if form_class is None:
        raise Http404("unknown model source")
    form = form_class(request.POST, prefix=source)
    if not form.is_valid():
        context = _add_context(source, form, open_=True)
        return render(request, "catalog/partials/model_add.html", context, status=422)
    try:
        model = form.save(who=request)  # catalog.store.create_model, audited as the API's
    except Conflict:  # created concurrently since the form's checks: named on its field
        context = _add_context(source, form, open_=True)
        return render(request, "catalog/partials/model_add.html", context, status=409)
    notice = f"Added {model.key} to the catalog."
    context = {
        **_add_context(source, form_class(prefix=source), open_=True, notice=notice),
        "models": _models(),
        "hosts": _hosts(),
        "oob": True,
    }
    return render(request, "catalog/partials/model_added.html", context)


@login_required
@require_POST
def swap_in(request: HttpRequest, key: str) -> HttpResponse:
    """ "Swap in": the API's swap (lock, busy host, pre-checks), then the dashboard."""
    model = get_object_or_404(CatalogModel, key=key)
    host = request.POST.get("host") or None
    try:
        begin_swap(request, model.key, host, False, request.user.get_username())
    except ArbiterError as error:
        context = {"model": model, "hosts": _hosts(), "selected": host, "error": error.message}
        return render(request, "catalog/partials/swap_form.html", context, status=error.status)
    response = HttpResponse(status=204)
    response["HX-Redirect"] = reverse("dashboard:index")  # the swap panel shows it run
    return response


# -- disk: status, download, delete -------------------------------------------------------


async def _disk_html(key: str, *, oob: bool = False) -> str:
    """One model's disk status on every host, asked now (Download / Delete: hub only)."""
    try:
        model = await sync_to_async(get_model)(key)
    except NotFound as error:
        raise Http404(error.message) from error
    targets = await sync_to_async(inventory_targets)()
    entries = await disk_report(targets, model, roots=list(settings.ARBITER_MODEL_ROOTS))
    running = DOWNLOADS.running_hosts(key)
    # No request: nothing here needs one, and the lazy user must not load here.
    return render_to_string(
        "catalog/partials/model_disk.html",
        {
            "model_key": key,
            "entries": [{**entry, "running": entry["host"] in running} for entry in entries],
            # Local models are never downloaded or deleted by Arbiter.
            "hub": not model.is_local,
            "oob": oob,
        },
    )


async def _personal(request: HttpRequest, html: str, status: int = 200) -> HttpResponse:
    """The operator-only controls cut for this person (dashboard/roles.py)."""
    level = await sync_to_async(level_of)(await request.auser())
    return HttpResponse(for_level(html, level), status=status)


def _log_html(key: str, errors: list[str] | None = None) -> str:
    """The card's log (polling while a download of the model runs) and, out of band,
    its alert: the downloads' errors, or `errors`."""
    context = download_log(key)
    if errors is not None:
        context["errors"] = errors
    return render_to_string("catalog/partials/disk_progress.html", context) + render_to_string(
        "catalog/partials/disk_error.html", {**context, "oob": True}
    )


@login_required
@require_GET
async def disk_fragment(request: HttpRequest, key: str) -> HttpResponse:
    """One model's disk status on every host (htmx loads it after the page)."""
    return await _personal(request, await _disk_html(key))


@login_required
@require_POST
async def download(request: HttpRequest, key: str) -> HttpResponse:
    """Start a hub download (the API's checks and audit row); answer the card's log,
    polling, and the host's button disabled while it runs."""
    host = request.POST.get("host", "")
    try:
        accepted = await accept_download(request, key, host)
    except ArbiterError as error:
        return HttpResponse(_log_html(key, [on_host(host, error.message)]), status=error.status)
    DOWNLOADS.start(accepted)
    button = render_to_string(
        "catalog/partials/disk_button.html",
        {"model_key": key, "host": accepted.target.name, "running": True, "oob": True},
    )
    return HttpResponse(_log_html(key) + button)


@login_required
@require_GET
async def download_progress(request: HttpRequest, key: str) -> HttpResponse:
    """The card's download log; once nothing runs, the fresh disk status too, and 286."""
    if DOWNLOADS.running_hosts(key):
        return HttpResponse(_log_html(key))
    html = _log_html(key) + await _disk_html(key, oob=True)
    return await _personal(request, html, status=STOP_POLLING)


@login_required
@require_POST
async def delete_from_disk(request: HttpRequest, key: str) -> HttpResponse:
    """Delete a hub model's files from a host (the API's checks and audit row); answer the
    disk status asked again, and the card's alert with why it was refused, if it was."""
    host = request.POST.get("host", "")
    errors, status = [], 200
    try:
        await delete_from_host(request, key, host)
    except ArbiterError as error:
        if isinstance(error, NotFound) and error.field == "key":
            raise Http404(error.message) from error
        errors, status = [on_host(host, error.message)], error.status
    alert = render_to_string(
        "catalog/partials/disk_error.html", {"key": key, "errors": errors, "oob": True}
    )
    return await _personal(request, await _disk_html(key) + alert, status=status)

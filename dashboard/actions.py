"""The dashboard's writes: one htmx POST view per action, answering with the fragment to swap.

People's changes arrive here as plain form posts (NetBox's way); the JSON API is for
machines. Each view reads its form into the API's own input schema (so a value is judged
by the same rules either way), calls the same operation as the API route - the same
checks, the same audit row, the lock's rule where the API has it - and answers with the
re-rendered panel, cut for the person (`personal`), as its poll view would.

A refusal answers with its real status (422, 404, 409, 423) and what to show: a form
again with the typed values and the error next to the field it names, or the message in
the output next to the button, placed there by `HX-Retarget`. base.html's htmx-config is
what lets htmx swap those 4xx answers.

Who may call each route: `arbiter.route_policy.VIEW_POLICY` (its middleware runs before
these views), the same level as the API route doing the same change.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, QueryDict
from django.template.loader import render_to_string
from django.utils.html import format_html
from django.views.decorators.http import require_POST
from ninja import Schema
from pydantic import ValidationError

from arbiter.api import inventory as inventory_api
from arbiter.api import keys as keys_api
from arbiter.api import orphans as orphans_api
from arbiter.api import swaps as swaps_api
from arbiter.errors import ArbiterError, InvalidInput
from arbiter.models import ApiKey
from arbiter.roles import ADMIN, may
from coordination.leases import api as leases_api
from coordination.locks import api as locks_api
from coordination.models import WebhookEndpoint
from coordination.webhooks import api as webhooks_api
from coordination.webhooks.schemas import WebhookIn, WebhookPatchIn
from dashboard.panels import coordination
from dashboard.panels.cluster import host_card_by_name, services_panel
from dashboard.panels.keys import keys_table
from dashboard.panels.leases import lease_panel
from dashboard.panels.lock_banner import lock_banner, lock_banner_view
from dashboard.panels.swaps import swap_panel
from dashboard.roles import personal

SchemaT = TypeVar("SchemaT", bound=Schema)

View = Callable[..., HttpResponse]


def action(view: View) -> View:
    """A logged-in person's POST (the route policy has already checked the level)."""
    return wraps(view)(require_POST(login_required(view)))


# -- reading forms -----------------------------------------------------------------------


def validated(schema: type[SchemaT], data: dict[str, Any]) -> SchemaT:
    """The form's values judged by the API's schema; InvalidInput naming the first field
    that is wrong, in the API's words ("field: message")."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


def number(text: str | None) -> Any:
    """A number field: empty is absent (None); a whole number as int; anything else as
    typed, for the schema to refuse with its own message."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def text_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (a list field typed as one line)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def form_error(problem: ArbiterError, fields: tuple[str, ...]) -> dict[str, Any]:
    """The error as a form shows it: `field` set when it is one of the form's fields (the
    message goes next to it), else None (the message goes under the form)."""
    name = (problem.field or "").split(".")[0]
    return {"field": name if name in fields else None, "message": problem.message}


# -- answering ---------------------------------------------------------------------------


def refused(html: str, problem: ArbiterError, target: str) -> HttpResponse:
    """A 4xx answer whose fragment replaces `target` (a CSS selector) instead of the
    element the request named."""
    response = HttpResponse(html, status=problem.status)
    response["HX-Retarget"] = target
    response["HX-Reswap"] = "outerHTML"
    for name, value in problem.headers.items():  # e.g. Retry-After on a 423
        response[name] = value
    return response


def message_for(output_id: str, problem: ArbiterError) -> HttpResponse:
    """The refusal's message in the output next to the button that asked."""
    html = format_html(
        '<output id="{}" class="action-error" role="alert">{}</output>', output_id, problem.message
    )
    return refused(html, problem, f"#{output_id}")


# -- API keys (the keys page) ------------------------------------------------------------

KEY_FIELDS = (
    "name",
    "role",
    "models",
    "expires_in_days",
    "requests_per_minute",
    "tokens_per_day",
    "priority",
)


def _key_form(request: HttpRequest, **context: Any) -> str:
    context["key_roles"] = ApiKey.ROLE_CHOICES
    context["key_priorities"] = ApiKey.PRIORITY_CHOICES
    return render_to_string("dashboard/partials/key_form.html", context, request)


@action
def key_create(request: HttpRequest) -> HttpResponse:
    """A new key: the form again, empty, with the raw key shown once, and the table."""
    form = request.POST
    try:
        payload = validated(
            keys_api.ApiKeyIn,
            {
                "name": form.get("name", ""),
                "role": form.get("role", ""),
                "models": text_list(form.get("models", "")),
                "expires_in_days": number(form.get("expires_in_days")),
                "requests_per_minute": number(form.get("requests_per_minute")),
                "tokens_per_day": number(form.get("tokens_per_day")),
                "priority": form.get("priority") or ApiKey.PRIORITY_DEFAULT,
            },
        )
        key, raw_key = keys_api.issue_key(request, payload)
    except ArbiterError as problem:
        html = _key_form(request, values=form, error=form_error(problem, KEY_FIELDS))
        return HttpResponse(html, status=problem.status)
    created = {"name": key.name, "key": raw_key}
    return HttpResponse(_key_form(request, created=created) + keys_table(oob=True))


@action
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        keys_api.revoke(request, key_id)
    except ArbiterError as problem:
        return HttpResponse(keys_table(error=problem.message), status=problem.status)
    return HttpResponse(keys_table())


# -- webhooks (the webhooks page and the dashboard's webhook panel) -----------------------

WEBHOOK_FIELDS = ("url", "description", "events", "format", "secret", "enabled")


def _webhook_panel(request: HttpRequest, *, oob: bool = False) -> str:
    return personal(request, coordination.webhook_panel(oob=oob))


def _webhook_values(form: QueryDict) -> dict[str, Any]:
    return {
        "url": form.get("url", "").strip(),
        "description": form.get("description", ""),
        "events": form.getlist("events"),
        "format": form.get("format", WebhookEndpoint.FORMAT_STANDARD),
    }


@action
def webhook_create(request: HttpRequest) -> HttpResponse:
    """A new endpoint: the form again, empty, with the secret shown once, and the panel."""
    values = _webhook_values(request.POST)
    secret = request.POST.get("secret", "").strip()
    context: dict[str, Any] = {"event_types": WebhookEndpoint.EVENT_TYPES}
    try:
        # Left empty, the secret is generated: send it only when typed (as the API's
        # callers do; null is not a secret).
        payload = validated(WebhookIn, {**values, **({"secret": secret} if secret else {})})
        endpoint, created_secret = webhooks_api.add_endpoint(request, payload)
    except ArbiterError as problem:
        context |= {"values": {**values, "secret": secret}}
        context["error"] = form_error(problem, WEBHOOK_FIELDS)
        html = render_to_string("dashboard/partials/webhook_form.html", context, request=request)
        return HttpResponse(html, status=problem.status)
    context["created"] = {"url": endpoint.url, "secret": created_secret}
    html = render_to_string("dashboard/partials/webhook_form.html", context, request=request)
    return HttpResponse(html + _webhook_panel(request, oob=True))


@action
def webhook_edit(request: HttpRequest, webhook_id: int) -> HttpResponse:
    """Save an endpoint's Edit form: the panel, or the form again with the error."""
    values = {**_webhook_values(request.POST), "enabled": "enabled" in request.POST}
    try:
        payload = validated(WebhookPatchIn, values)
        webhooks_api.change_endpoint(request, webhook_id, payload)
    except ArbiterError as problem:
        context = {
            "endpoint": {"id": webhook_id, **values},
            "event_types": WebhookEndpoint.EVENT_TYPES,
            "error": form_error(problem, WEBHOOK_FIELDS),
        }
        html = render_to_string("dashboard/partials/webhook_edit_form.html", context, request)
        return refused(html, problem, f"#webhook-{webhook_id}-edit-form")
    return HttpResponse(_webhook_panel(request))


@action
def webhook_delete(request: HttpRequest, webhook_id: int) -> HttpResponse:
    try:
        webhooks_api.remove_endpoint(request, webhook_id)
    except ArbiterError as problem:
        return message_for(f"webhook-{webhook_id}-error", problem)
    return HttpResponse(_webhook_panel(request))


@action
def webhook_test(request: HttpRequest, webhook_id: int) -> HttpResponse:
    """Send one test event now; the panel shows its answer (from the delivery it logged)."""
    try:
        webhooks_api.send_test_event(request, webhook_id)
    except ArbiterError as problem:
        return message_for(f"webhook-{webhook_id}-test-result", problem)
    return HttpResponse(_webhook_panel(request))


@action
def redeliver(request: HttpRequest, delivery_id: int) -> HttpResponse:
    try:
        webhooks_api.redeliver_delivery(request, delivery_id)
    except ArbiterError as problem:
        return message_for(f"delivery-{delivery_id}-error", problem)
    return HttpResponse(_webhook_panel(request))


# -- services, swaps, the lock (the dashboard) ---------------------------------------------


@action
def service_toggle(request: HttpRequest, name: str) -> HttpResponse:
    """Enable or disable a service (`disabled`: "true" or "false"); the panel, pushed to
    every dashboard as well (the API's operation sends `services_changed`)."""
    raw = request.POST.get("disabled")
    disabled: Any = {"true": True, "false": False}.get(raw or "", raw)
    try:
        payload = validated(inventory_api.ServiceEditIn, {"disabled": disabled})
        inventory_api.apply_service_edit(request, name, payload)
    except ArbiterError as problem:
        return message_for("services-error", problem)
    cleared = '<output id="services-error" class="action-error" role="alert" hx-swap-oob="true">'
    return HttpResponse(personal(request, services_panel()) + cleared + "</output>")


@action
def orphan_remove(request: HttpRequest, name: str, container: str) -> HttpResponse:
    """Remove an orphaned container (the API's operation: admin, lock, audit); the host's
    card without it, or the refusal under the card's orphan list."""
    try:
        async_to_sync(orphans_api.remove_and_audit)(request, name, container)
    except ArbiterError as problem:
        return message_for(f"orphans-error-{name}", problem)
    return HttpResponse(personal(request, host_card_by_name(name)))


@action
def swap_cancel(request: HttpRequest, swap_id: int) -> HttpResponse:
    """Cancel a swap (the engine stops it and pushes the end); the swap panel."""
    try:
        swaps_api.cancel(request, swap_id)
    except ArbiterError as problem:
        return message_for(f"swap-{swap_id}-cancel-error", problem)
    return HttpResponse(personal(request, swap_panel()))


FORCE_RELEASE_FIELDS = ("reason", "lock_delay_seconds")


@action
def force_release(request: HttpRequest) -> HttpResponse:
    """Take the swap lock from its holder: the banner (with the release's notice), or
    the banner's form again with the error."""
    values = {
        "reason": request.POST.get("reason", ""),
        "lock_delay_seconds": request.POST.get("lock_delay_seconds", ""),
    }
    try:
        locks_api.force_release(
            request,
            reason=values["reason"],
            lock_delay_seconds=number(values["lock_delay_seconds"]),
        )
    except ArbiterError as problem:
        context = {
            "lock": lock_banner_view(),
            "can_force_release": may(request.user, ADMIN),
            "values": values,
            "error": form_error(problem, FORCE_RELEASE_FIELDS),
        }
        html = render_to_string("dashboard/partials/lock_force_release.html", context, request)
        return refused(html, problem, "#lock-force-release")
    banner = lock_banner(can_force_release=may(request.user, ADMIN), personal=True)
    return HttpResponse(personal(request, banner))


@action
def lease_force_release(request: HttpRequest, lease_id: int) -> HttpResponse:
    """Take a lease from its holder (admin person, audited, the API's own operation):
    the lease panel, or the refusal's message in the panel's output."""
    try:
        leases_api.force_release(request, lease_id, reason=request.POST.get("reason", ""))
    except ArbiterError as problem:
        return message_for("lease-error", problem)
    return HttpResponse(personal(request, lease_panel()))

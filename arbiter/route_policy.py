"""Which role each route needs: one table for every route in the URL configuration.

Keyed by `(method, route)`, where `route` is Django's own route string for the URL
pattern (`request.resolver_match.route`, e.g. "api/swap/<int:swap_id>/cancel") and
`method` is the HTTP method, or `ANY` for views that check their methods themselves.
A route without an entry is refused (it needs `ADMIN` at run time and fails
`tests/core/test_route_matrix.py`), so a route added later gets a decision here.

Decisions:

- `PUBLIC` — no credentials (health, readiness, login, the API's own description);
- `BROKER` — the broker's routes: they authenticate API keys themselves (any role; an
  inference key's model list is checked there, `arbiter.broker.views`);
- `READ`, `OPERATOR`, `ADMIN` — the levels of `arbiter.roles`;
- `PERSON_ADMIN` — a logged-in person with the admin level, never a key: creating and
  revoking API keys stays a person's act.

The API enforces this in its auth classes (`arbiter.auth`); the Django views (catalog
forms, dashboard fragments) through `RoutePolicyMiddleware` below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.urls import Resolver404, resolve

from arbiter.errors import Forbidden
from arbiter.models import ApiKey
from arbiter.roles import ADMIN, OPERATOR, READ, level_of, may

PUBLIC = "public"
BROKER = "broker"
PERSON_ADMIN = "person admin"
ANY = "*"

Decision = str

# The API (django-ninja, /api/...): one entry per operation.
API_POLICY: dict[tuple[str, str], Decision] = {
    ("GET", "api/status"): READ,
    ("GET", "api/endpoints"): READ,
    ("GET", "api/keys"): ADMIN,
    ("POST", "api/keys"): PERSON_ADMIN,
    ("DELETE", "api/keys/<key_id>"): PERSON_ADMIN,
    ("GET", "api/audit"): ADMIN,
    ("PATCH", "api/hosts/<name>"): ADMIN,
    ("DELETE", "api/hosts/<name>/edits"): ADMIN,
    ("GET", "api/hosts/<name>/checks"): READ,
    ("GET", "api/hosts/<name>/orphans"): READ,
    ("DELETE", "api/hosts/<name>/orphans/<container>"): ADMIN,
    ("PATCH", "api/services/<name>"): ADMIN,
    ("DELETE", "api/services/<name>/edits"): ADMIN,
    ("GET", "api/models"): READ,
    ("POST", "api/models"): OPERATOR,
    ("GET", "api/models/<key>"): READ,
    ("PUT", "api/models/<key>"): OPERATOR,
    ("DELETE", "api/models/<key>"): OPERATOR,
    ("GET", "api/models/<key>/disk"): READ,
    ("DELETE", "api/models/<key>/disk"): OPERATOR,
    ("POST", "api/models/<key>/download"): OPERATOR,
    # Catalog aliases (catalog.api): the catalog's rules, reads for all, writes operator.
    ("GET", "api/aliases"): READ,
    ("POST", "api/aliases"): OPERATOR,
    ("GET", "api/aliases/<name>"): READ,
    ("PUT", "api/aliases/<name>"): OPERATOR,
    ("DELETE", "api/aliases/<name>"): OPERATOR,
    ("GET", "api/swap/lock"): READ,
    ("POST", "api/swap/lock"): OPERATOR,
    # Release with the token; `?force=true` additionally needs an admin person
    # (coordination.locks.api).
    ("DELETE", "api/swap/lock"): OPERATOR,
    # Leases (coordination.leases.api): extend and release need the lease's token too;
    # taking one from its holder is an admin person's act, like the lock's.
    ("GET", "api/leases"): READ,
    ("POST", "api/leases"): OPERATOR,
    ("PATCH", "api/leases/<lease_id>"): OPERATOR,
    ("DELETE", "api/leases/<lease_id>"): OPERATOR,
    ("POST", "api/leases/<lease_id>/force-release"): PERSON_ADMIN,
    ("GET", "api/webhooks"): OPERATOR,
    ("POST", "api/webhooks"): ADMIN,
    ("PATCH", "api/webhooks/<webhook_id>"): ADMIN,
    ("DELETE", "api/webhooks/<webhook_id>"): ADMIN,
    ("POST", "api/webhooks/<webhook_id>/test"): ADMIN,
    ("POST", "api/webhooks/<webhook_id>/rotate"): ADMIN,
    ("GET", "api/webhooks/<webhook_id>/deliveries"): OPERATOR,
    ("POST", "api/webhooks/deliveries/<delivery_id>/redeliver"): ADMIN,
    ("GET", "api/schedule"): READ,
    ("POST", "api/schedule"): OPERATOR,
    ("GET", "api/schedule/<job_id>"): READ,
    ("DELETE", "api/schedule/<job_id>"): OPERATOR,
    ("GET", "api/timeline"): READ,
    ("POST", "api/swap"): OPERATOR,
    # A dry run, but it reaches the target host (disk, image), so not for readers.
    ("POST", "api/swap/<key>/validate"): OPERATOR,
    ("GET", "api/swaps"): READ,
    ("GET", "api/swap/<int:swap_id>"): READ,
    ("GET", "api/swap/<int:swap_id>/log"): READ,
    ("GET", "api/swap/<int:swap_id>/stream"): READ,
    ("POST", "api/swap/<int:swap_id>/cancel"): OPERATOR,
}

# Every other route: Django views, which check their own methods.
VIEW_POLICY: dict[tuple[str, str], Decision] = {
    (ANY, "api/openapi.json"): PUBLIC,
    (ANY, "api/docs"): PUBLIC,
    (ANY, "api/"): PUBLIC,  # ninja's "no such API route" catch-all
    (ANY, "healthz"): PUBLIC,
    (ANY, "readyz"): PUBLIC,
    # An API key like the broker, unless ARBITER_METRICS_PUBLIC (arbiter.broker.ops).
    (ANY, "metrics"): BROKER,
    (ANY, "v1/chat/completions"): BROKER,
    (ANY, "v1/completions"): BROKER,
    (ANY, "v1/embeddings"): BROKER,
    (ANY, "v1/audio/speech"): BROKER,
    (ANY, "v1/audio/transcriptions"): BROKER,
    (ANY, "v1/audio/translations"): BROKER,
    (ANY, "v1/models"): BROKER,
    (ANY, "^v1/(?P<capability>llm|tts|stt|image)/(?P<rest>.*)$"): BROKER,
    (ANY, "^audio/(?P<rest>.*)$"): BROKER,
    # Any other /v1 path: the broker's "no such route" 404, the same for everyone.
    (ANY, "^v1/(?P<rest>.*)$"): PUBLIC,
    (ANY, "login/"): PUBLIC,
    (ANY, "logout/"): PUBLIC,
    # People's pages: login_required sends anonymous visitors to the login page.
    (ANY, "catalog/"): READ,
    (ANY, "catalog/<slug:key>/disk"): READ,
    # A download's log (dashboard/catalog.py); starting one is the operator's.
    (ANY, "catalog/<slug:key>/downloads"): READ,
    # The catalog page's writes (dashboard/catalog.py, POST only): what the API route
    # doing the same change needs (POST /api/models, /api/swap, the disk routes).
    (ANY, "catalog/add/<str:source>"): OPERATOR,
    (ANY, "catalog/<slug:key>/download"): OPERATOR,
    (ANY, "catalog/<slug:key>/disk/delete"): OPERATOR,
    (ANY, "catalog/<slug:key>/swap"): OPERATOR,
    (ANY, ""): READ,
    (ANY, "fragments/hosts"): READ,
    (ANY, "fragments/services"): READ,
    (ANY, "fragments/clients"): READ,
    (ANY, "hosts/<slug:name>/history"): READ,
    (ANY, "fragments/swaps"): READ,
    (ANY, "swaps/<int:swap_id>/log"): READ,
    (ANY, "fragments/lock"): READ,
    # Renders the force-release form only for those who may (dashboard.views).
    (ANY, "fragments/lock/force-release"): READ,
    # Renders the force-release buttons only for admins (dashboard/roles.py).
    (ANY, "fragments/leases"): READ,
    (ANY, "fragments/schedule"): READ,
    (ANY, "timeline/"): READ,
    (ANY, "fragments/webhooks"): READ,
    (ANY, "keys/"): ADMIN,
    (ANY, "fragments/keys"): ADMIN,
    (ANY, "audit/"): ADMIN,
    (ANY, "webhooks/"): OPERATOR,
    # The dashboard's writes (dashboard/actions.py, POST only): each needs what the API
    # route doing the same change needs.
    (ANY, "actions/keys"): PERSON_ADMIN,
    (ANY, "actions/keys/<int:key_id>/revoke"): PERSON_ADMIN,
    (ANY, "actions/webhooks"): ADMIN,
    (ANY, "actions/webhooks/<int:webhook_id>/edit"): ADMIN,
    (ANY, "actions/webhooks/<int:webhook_id>/delete"): ADMIN,
    (ANY, "actions/webhooks/<int:webhook_id>/test"): ADMIN,
    (ANY, "actions/webhooks/deliveries/<int:delivery_id>/redeliver"): ADMIN,
    (ANY, "actions/services/<str:name>"): ADMIN,
    (ANY, "actions/hosts/<slug:name>/orphans/<str:container>/remove"): ADMIN,
    (ANY, "actions/swaps/<int:swap_id>/cancel"): OPERATOR,
    # DELETE /api/swap/lock?force=true: an admin person (coordination.locks.api).
    (ANY, "actions/lock/force-release"): PERSON_ADMIN,
    # POST /api/leases/{id}/force-release: an admin person (coordination.leases.api).
    (ANY, "actions/leases/<int:lease_id>/force-release"): PERSON_ADMIN,
}

# What a level is called for each kind of principal, in messages.
KEY_ROLE_OF_LEVEL = {READ: "inference", OPERATOR: "operator", ADMIN: "admin"}
PERSON_ROLE_OF_LEVEL = {READ: "viewer", OPERATOR: "operator", ADMIN: "admin"}


def decision_for(method: str, route: str) -> Decision | None:
    """The decision for a request, or None when the route has no entry."""
    method = "GET" if method == "HEAD" else method.upper()
    found = API_POLICY.get((method, route))
    if found is None:
        found = VIEW_POLICY.get((ANY, route))
    return found


def describe(principal: Any) -> str:
    """Who the principal is and the role they have, for a 403's message."""
    level = level_of(principal)
    if isinstance(principal, ApiKey):
        return f"key {principal.name!r} has role {principal.role}"
    if principal == "anonymous":
        return "an anonymous reader has role viewer"
    name = principal.get_username() if hasattr(principal, "get_username") else "?"
    return f"user {name!r} has role {PERSON_ROLE_OF_LEVEL.get(level or READ, 'viewer')}"


def refusal(principal: Any, method: str, route: str) -> str | None:
    """Why the principal may not call this route, or None when it may."""
    decision = decision_for(method, route)
    if decision in (PUBLIC, BROKER):
        return None
    if decision is None:
        # A route nobody decided on is kept for admins until it gets an entry.
        decision = ADMIN
    if decision == PERSON_ADMIN:
        if isinstance(principal, ApiKey) or principal == "anonymous" or not may(principal, ADMIN):
            return (
                "this needs a logged-in person with the admin role (managing API keys is "
                f"never done with a key); {describe(principal)}"
            )
        return None
    if not may(principal, decision):
        return f"this needs the {decision} role; {describe(principal)}"
    return None


def enforce(request: HttpRequest, principal: Any) -> None:
    """Raise Forbidden (403) when the principal may not call the request's route."""
    match = request.resolver_match
    route = match.route if match is not None else ""
    why = refusal(principal, request.method or "GET", route)
    if why is not None:
        decision = decision_for(request.method or "GET", route) or ADMIN
        raise Forbidden(why, needed=decision)


class RoutePolicyMiddleware:
    """The policy for the Django views (the API and the broker check it themselves).

    Async-capable, and the broker's and public routes pass without a hop to the sync
    thread (the broker's requests must not queue behind it). Anonymous visitors of pages
    that change things are sent to log in (reading pages leave that to their own
    `login_required`); a logged-in person without the level gets a 403 naming the role.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        return self.check(request) or self.get_response(request)

    async def _acall(self, request: HttpRequest) -> Any:
        if not self.needs_check(request):
            return await self.get_response(request)
        refused = await sync_to_async(self.check)(request)
        return refused or await self.get_response(request)

    @staticmethod
    def _route(request: HttpRequest) -> str | None:
        try:
            return resolve(request.path_info).route
        except Resolver404:
            return None

    def needs_check(self, request: HttpRequest) -> bool:
        route = self._route(request)
        if route is None or route.startswith("api/"):
            return False  # ninja checks its operations (arbiter.auth) and answers its 404/405
        return decision_for(request.method or "GET", route) not in (PUBLIC, BROKER)

    def check(self, request: HttpRequest) -> HttpResponse | None:
        if not self.needs_check(request):
            return None
        route = self._route(request) or ""
        method = request.method or "GET"
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            if decision_for(method, route) == READ:
                # Every such page is login_required (the route matrix test holds them to
                # it); fragments answer htmx polls with an HX-Redirect of their own.
                return None
            return redirect_to_login(request.get_full_path())
        why = refusal(user, method, route)
        if why is not None:
            return HttpResponseForbidden(why, content_type="text/plain; charset=utf-8")
        return None

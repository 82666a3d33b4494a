"""Every route in the URL configuration × every kind of caller → allowed, 401 or 403.

The routes come from the resolver (the API's operations with their methods, read from
ninja's path views), the decisions from `arbiter.route_policy`, and the expected answer
from `arbiter.roles.may`, so a route added without a decision fails
`test_it_has_a_decision_for_every_route` and the matrix follows the table as it changes.

Requests carry empty bodies and ids that name nothing, so an allowed write stops at
validation or a 404 and changes nothing.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from ninja.operation import PathView

from arbiter import route_policy
from arbiter.models import ApiKey
from arbiter.roles import ADMIN, OPERATOR, READ, may
from arbiter.route_policy import ANY, API_POLICY, BROKER, PERSON_ADMIN, PUBLIC, VIEW_POLICY

pytestmark = pytest.mark.django_db

# Django views check their own methods; both kinds of request go to each.
VIEW_METHODS = ("GET", "POST")
# Values for path parameters that name nothing, so a permitted action finds nothing to act on.
PARAMETER_VALUES = {"int": "999999", "slug": "no-such-thing", "str": "no-such-thing"}
# The broker's regular-expression routes, spelled out.
REGEX_PATHS = {
    "^v1/(?P<capability>llm|tts|stt|image)/(?P<rest>.*)$": "/v1/llm/no-such-path",
    "^audio/(?P<rest>.*)$": "/audio/no-such-path",
    "^v1/(?P<rest>.*)$": "/v1/no-such-path",
}
PRINCIPALS = (
    "anonymous",
    "inference key",
    "operator key",
    "admin key",
    "viewer person",
    "operator person",
    "admin person",
)


def _ninja_methods(callback) -> list[str] | None:
    """The methods of an API route: its ninja path view holds one operation per method set."""
    for cell in getattr(callback, "__closure__", None) or ():
        view = cell.cell_contents
        if isinstance(view, PathView):
            return sorted({method for op in view.operations for method in op.methods})
    return None


def _walk(patterns=None, prefix=""):
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.callback


def route_methods() -> list[tuple[str, str, bool]]:
    """(method, route, is an API operation) for every route in the URL configuration."""
    found: dict[tuple[str, str], bool] = {}
    for route, callback in _walk():
        methods = _ninja_methods(callback)
        for method in methods or VIEW_METHODS:
            found.setdefault((method, route), methods is not None)
    return [(method, route, is_api) for (method, route), is_api in sorted(found.items())]


def concrete_path(route: str) -> str:
    if route in REGEX_PATHS:
        return REGEX_PATHS[route]

    def value(match: re.Match) -> str:
        return PARAMETER_VALUES.get(match.group(1) or "str", "no-such-thing")

    return "/" + re.sub(r"<(?:(\w+):)?\w+>", value, route)


def test_it_enumerates_the_routes_it_means_to():
    found = {(method, route) for method, route, _ in route_methods()}
    for expected in [
        ("POST", "api/keys"),
        ("DELETE", "api/swap/lock"),
        ("POST", "api/swap/<int:swap_id>/cancel"),
        ("GET", "v1/models"),
        ("POST", "catalog/add/<str:source>"),
        ("GET", "fragments/lock"),
        ("GET", "healthz"),
    ]:
        assert expected in found


def test_it_has_a_decision_for_every_route():
    missing = []
    for method, route, is_api in route_methods():
        key = (method, route) if is_api else (ANY, route)
        if key not in (API_POLICY if is_api else VIEW_POLICY):
            missing.append(f"{method} {route}")
    assert not missing, f"routes without a decision in arbiter/route_policy.py: {missing}"


def test_it_names_an_existing_route_in_every_decision():
    routes = route_methods()
    api = {(method, route) for method, route, is_api in routes if is_api}
    views = {(ANY, route) for _, route, is_api in routes if not is_api}
    assert set(API_POLICY) - api == set()
    assert set(VIEW_POLICY) - views == set()


def test_it_keeps_a_route_without_a_decision_for_admins():
    key = ApiKey(name="ci", role=ApiKey.ROLE_OPERATOR)
    assert route_policy.refusal(key, "POST", "api/some/new/route") == (
        "this needs the admin role; key 'ci' has role operator"
    )


@pytest.fixture
def principals(db, django_user_model) -> dict[str, tuple[object, dict]]:
    """Each kind of caller: the principal (for `may`) and how a client presents it."""
    made: dict[str, tuple[object, dict]] = {"anonymous": (None, {})}
    for role in (ApiKey.ROLE_INFERENCE, ApiKey.ROLE_OPERATOR, ApiKey.ROLE_ADMIN):
        key, raw = ApiKey.objects.create_key(name=f"{role} app", role=role)
        made[f"{role} key"] = (key, {"headers": {"Authorization": f"Bearer {raw}"}})
    for role in ("viewer", "operator", "admin"):
        user = django_user_model.objects.create_user(f"{role}-person", password="pw-12345")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        made[f"{role} person"] = (user, {"login": user})
    return made


def _client(spec: dict) -> Client:
    client = Client(headers=spec.get("headers", {}))
    # A view that fails past the permission check is "allowed" here; its own tests cover it.
    client.raise_request_exception = False
    if "login" in spec:
        client.force_login(spec["login"])
    return client


def expected(decision: str, principal: object, is_api: bool) -> str:
    """ "allowed", "401", "403" or "login" (a redirect to the login page)."""
    if decision == PUBLIC:
        return "allowed"
    if decision == BROKER:
        return "allowed" if isinstance(principal, ApiKey) else "401"
    if principal is None:
        return "401" if is_api else "login"
    if not is_api and isinstance(principal, ApiKey):
        return "login"  # people's pages know sessions, not keys
    if decision == PERSON_ADMIN:
        ok = not isinstance(principal, ApiKey) and may(principal, ADMIN)
        return "allowed" if ok else "403"
    assert decision in (READ, OPERATOR, ADMIN), decision
    return "allowed" if may(principal, decision) else "403"


def outcome(response, decision: str) -> str:
    if decision == PUBLIC:
        return "403" if response.status_code == 403 else "allowed"
    if decision == BROKER and response.status_code == 405:
        return "401"  # the method is checked before the key: nothing is served either way
    if response.status_code in (401, 403):
        return str(response.status_code)
    if response.status_code == 302 and response["Location"].startswith("/login/"):
        return "login"
    if response.status_code == 204 and response.get("HX-Redirect", "").startswith("/login/"):
        return "login"
    return "allowed"


@pytest.mark.parametrize(
    "method, route, is_api",
    route_methods(),
    ids=[f"{method} /{route}" for method, route, _ in route_methods()],
)
def test_it_allows_every_kind_of_caller_or_answers_401_or_403_as_the_decision_says(
    method, route, is_api, principals
):
    decision = route_policy.decision_for(method, route)
    assert decision is not None, f"{method} /{route} has no decision"
    path = concrete_path(route)
    wrong = []
    for name in PRINCIPALS:
        principal, spec = principals[name]
        if decision == BROKER and isinstance(principal, ApiKey):
            # Keys reach the broker's routing, which needs its own event loop and a
            # transactional database: tests/broker/test_key_limits.py covers keys there.
            continue
        client = _client(spec)
        response = client.generic(method, path, "{}", content_type="application/json")
        want, got = expected(decision, principal, is_api), outcome(response, decision)
        if want != got:
            wrong.append(f"{name}: expected {want}, got {response.status_code}")
        elif got == "403" and is_api:
            error = response.json()["error"]
            assert error["type"] == "forbidden"
            assert "needs" in error["message"] and "has role" in error["message"]
    assert not wrong, f"{method} {path} ({decision}): " + "; ".join(wrong)

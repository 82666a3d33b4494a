"""Walk every URL route: nothing that changes state answers an anonymous caller."""

import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

UNSAFE_METHODS = ("post", "put", "patch", "delete")
# The login form must accept anonymous POSTs: that is how one stops being anonymous.
ANONYMOUS_FORMS = {"/login/"}
# ninja renders its API description for any method; it reads nothing and changes nothing.
API_DOCUMENTATION = {"/api/docs", "/api/openapi.json"}


def _concrete_paths(patterns=None, prefix="") -> list[str]:
    """Every route with its parameters filled by a plausible value."""
    paths = []
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            paths.extend(_concrete_paths(entry.url_patterns, route))
        elif isinstance(entry, URLPattern):
            route = re.sub(r"<(?:\w+:)?\w+>", "1", route)
            route = route.lstrip("^").rstrip("$").replace("\\", "")
            paths.append("/" + route)
    return sorted(set(paths))


def test_it_finds_the_routes_it_is_meant_to_guard():
    paths = _concrete_paths()
    for expected in ("/api/status", "/api/keys", "/api/keys/1", "/healthz", "/"):
        assert expected in paths


@pytest.mark.parametrize("path", _concrete_paths())
@pytest.mark.parametrize("method", UNSAFE_METHODS)
def test_it_refuses_anonymous_state_changes(path, method):
    # With a valid CSRF token too, so the refusal is about who, not about the token.
    client = Client(enforce_csrf_checks=True)
    client.get("/login/")
    token = client.cookies["csrftoken"].value
    response = getattr(client, method)(
        path, "{}", content_type="application/json", headers={"X-CSRFToken": token}
    )
    if path in ANONYMOUS_FORMS:
        assert response.status_code in (200, 405)  # the form re-rendered with errors
        return
    if path in API_DOCUMENTATION:
        assert response.status_code in (200, 405)  # renders the description, writes nothing
        return
    refused = response.status_code in (401, 403, 404, 405) or (
        response.status_code == 302 and response["Location"].startswith("/login/")
    )
    assert refused, f"{method.upper()} {path} answered {response.status_code} anonymously"


@pytest.mark.parametrize("path", [p for p in _concrete_paths() if p.startswith("/api/")])
def test_it_refuses_anonymous_api_reads_by_default(path):
    if path in API_DOCUMENTATION:
        return  # the API description is public documentation, not cluster data
    response = Client().get(path)
    assert response.status_code in (401, 404, 405), f"GET {path} answered {response.status_code}"

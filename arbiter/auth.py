"""API authentication: API keys (Bearer), a logged-in session with CSRF, or anonymous reads.

Every API route goes through `api_auth`. Unsafe methods always need a key or a session
that passed the CSRF check; safe methods may be read anonymously only when
`ARBITER_ANONYMOUS_READS` is on. Once a caller is known, the route's entry in
`arbiter.route_policy` decides whether its role may call it: this is the one place the
API enforces roles (403 naming the role needed and the caller's).
"""

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.errors import AuthenticationError
from ninja.security import HttpBearer, SessionAuth

from arbiter import route_policy
from arbiter.models import ApiKey

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class RoleChecked:
    """Checks the route policy for whoever the auth class it is mixed into recognised."""

    def __call__(self, request: HttpRequest) -> Any:
        principal = super().__call__(request)  # type: ignore[misc]
        if principal:
            route_policy.enforce(request, principal)
        return principal


class ApiKeyAuth(RoleChecked, HttpBearer):
    """`Authorization: Bearer arb_<prefix>_<secret>`; keys are stored hashed."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        key = ApiKey.objects.verify(token.strip())
        if key is None:
            # A wrong key is a 401 for what it is, not a fall-through to the session
            # check (which would answer a confusing CSRF 403 on writes).
            raise AuthenticationError()
        key.touch()
        return key


class PersonSessionAuth(RoleChecked, SessionAuth):
    """A logged-in person (Django session, CSRF-checked on unsafe methods)."""


class AnonymousRead:
    """Lets GET requests through without credentials when the setting allows it."""

    def __call__(self, request: HttpRequest) -> Any:
        if settings.ARBITER_ANONYMOUS_READS and request.method in SAFE_METHODS:
            return "anonymous"
        return None


# Order matters: a Bearer key is tried first so automation never needs a CSRF token;
# the session check enforces CSRF on unsafe methods and raises 403 when it fails.
class AnonymousReadAuth(RoleChecked, AnonymousRead):
    """Anonymous reads, as far as the policy lets readers read."""


api_auth = [ApiKeyAuth(), PersonSessionAuth(csrf=True), AnonymousReadAuth()]

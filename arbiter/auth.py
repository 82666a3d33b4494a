"""API authentication: API keys (Bearer), a logged-in session with CSRF, or anonymous reads.

Every API route goes through `api_auth`. Unsafe methods always need a key or a session
that passed the CSRF check; safe methods may be read anonymously only when
`ARBITER_ANONYMOUS_READS` is on.
"""

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from ninja.errors import AuthenticationError
from ninja.security import HttpBearer, SessionAuth

from arbiter.models import ApiKey

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer arb_<prefix>_<secret>`; keys are stored hashed."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        key = ApiKey.objects.verify(token.strip())
        if key is None:
            # A wrong key is a 401 for what it is, not a fall-through to the session
            # check (which would answer a confusing CSRF 403 on writes).
            raise AuthenticationError()
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
        return key


class AnonymousReadAuth:
    """Lets GET requests through without credentials when the setting allows it."""

    def __call__(self, request: HttpRequest) -> Any:
        if settings.ARBITER_ANONYMOUS_READS and request.method in SAFE_METHODS:
            return "anonymous"
        return None


# Order matters: a Bearer key is tried first so automation never needs a CSRF token;
# the session check enforces CSRF on unsafe methods and raises 403 when it fails.
api_auth = [ApiKeyAuth(), SessionAuth(csrf=True), AnonymousReadAuth()]

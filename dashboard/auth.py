"""Dashboard sessions: fragments and sockets end when the session does."""

from collections.abc import Callable
from functools import wraps

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.urls import reverse


def session_group(session_key: str) -> str:
    """The channel group of every dashboard socket opened by one login session."""
    return f"session-{session_key}"


def fragment_login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Like login_required, but an htmx poll of a logged-out user reloads into the login
    page (HX-Redirect) instead of swapping the login form into the panel."""
    protected = login_required(view)

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated and getattr(request, "htmx", False):
            response = HttpResponse(status=204)
            response["HX-Redirect"] = f"{reverse('login')}?next=/"
            return response
        return protected(request, *args, **kwargs)

    return wrapper


def close_sockets_on_logout(sender, request: HttpRequest, user, **kwargs) -> None:
    """Logging out closes that session's open dashboards (they stop receiving updates)."""
    session_key = request.session.session_key
    layer = get_channel_layer()
    if session_key and layer is not None:
        async_to_sync(layer.group_send)(session_group(session_key), {"type": "session.ended"})

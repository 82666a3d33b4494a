"""ASGI entry point: HTTP through Django, WebSockets through channels."""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.settings")
# Static files are a handful of small vendored files: serving them from the app keeps
# the one-command start free of a separate web server (daphne never serves them itself).
django_asgi_app = ASGIStaticFilesHandler(get_asgi_application())

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from arbiter.body_limit import with_body_limit  # noqa: E402
from arbiter.broker.asgi import with_broker  # noqa: E402
from dashboard.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # /v1 and /audio (the broker) skip the browser middleware; see arbiter.broker.asgi.
        # Bodies over the limit are answered 413 before Django reads (and spools) them.
        "http": with_body_limit(with_broker(django_asgi_app)),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

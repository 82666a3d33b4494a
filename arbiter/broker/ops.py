"""Operations endpoints: `/readyz` (public) and Prometheus `/metrics`.

`/metrics` needs an API key (Bearer) like the broker, unless `ARBITER_METRICS_PUBLIC`
is on (for a scraper on a trusted network that cannot send one).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from arbiter.broker import metrics
from arbiter.broker.errors import BrokerError, MethodNotAllowed
from arbiter.broker.state import get_state
from arbiter.broker.views import authenticate, error_response
from arbiter.models import Host, Service

STALE_AFTER_INTERVALS = 3
log = logging.getLogger(__name__)


def readiness() -> tuple[bool, dict[str, object]]:
    """Ready when the database answers and the engine has sampled or probed recently."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return _engine_readiness()
    except Exception:  # any database failure means "not ready", never a 500
        # Logged, not shown: /readyz answers without authentication.
        log.exception("readyz: the database did not answer")
        return False, {"status": "not_ready", "database": "unavailable"}


def _engine_readiness() -> tuple[bool, dict[str, object]]:
    hosts = Host.objects.filter(in_inventory=True)
    services = Service.objects.filter(in_inventory=True, disabled=False)
    if not hosts.exists() and not services.exists():
        return True, {"status": "ready", "database": "ok", "engine": "nothing to watch"}
    newest = [
        hosts.aggregate(at=Max("last_attempt_at"))["at"],
        services.aggregate(at=Max("last_probe_at"))["at"],
    ]
    last = max((at for at in newest if at is not None), default=None)
    interval = max(
        float(getattr(settings, "ARBITER_SAMPLE_INTERVAL", 2.0)),
        float(getattr(settings, "ARBITER_PROBE_INTERVAL", 5.0)),
    )
    limit = timedelta(seconds=STALE_AFTER_INTERVALS * interval)
    body: dict[str, object] = {
        "database": "ok",
        "engine_last_activity": last.isoformat() if last else None,
    }
    if last is None or timezone.now() - last > limit:
        return False, {"status": "not_ready", "engine": "stale", **body}
    return True, {"status": "ready", "engine": "ok", **body}


async def readyz(request: HttpRequest) -> JsonResponse:
    if request.method not in ("GET", "HEAD"):
        return error_response(MethodNotAllowed(request.method or "", "GET"))
    ready, body = await sync_to_async(readiness)()
    return JsonResponse(body, status=200 if ready else 503)


async def metrics_view(request: HttpRequest) -> HttpResponse:
    try:
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(request.method or "", "GET")
        if not getattr(settings, "ARBITER_METRICS_PUBLIC", False):
            await authenticate(request, get_state())
    except BrokerError as error:
        return error_response(error)
    body = await sync_to_async(metrics.render)()
    return HttpResponse(body, content_type=metrics.CONTENT_TYPE)

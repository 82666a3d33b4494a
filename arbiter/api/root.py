"""The one NinjaAPI at /api: routers per app, domain errors mapped to one JSON shape."""

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser
from ninja.types import DictStrAny

from arbiter.api.audit import router as audit_router
from arbiter.api.host_checks import router as host_checks_router
from arbiter.api.inventory import router as inventory_router
from arbiter.api.keys import router as keys_router
from arbiter.api.orphans import router as orphans_router
from arbiter.api.status import router as status_router
from arbiter.api.swaps import router as swaps_router
from arbiter.auth import api_auth
from arbiter.body_limit import api_limit
from arbiter.errors import ArbiterError, PayloadTooLarge
from catalog.api import router as catalog_router
from coordination.leases.api import router as lease_router
from coordination.locks.api import router as lock_router
from coordination.schedules.api import router as schedule_router
from coordination.webhooks.api import router as webhook_router


class NotUtf8(ValueError):
    """A JSON string that is no text: a lone surrogate (`"\\ud800"` is valid JSON, and
    Python decodes it, but no database, SSH command or log line can hold it)."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def first_lone_surrogate(value: object, path: str = "") -> str | None:
    """The dotted path of the first string (key or value) that is not valid UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = first_lone_surrogate(key, where) or first_lone_surrogate(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = first_lone_surrogate(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


class StrictJsonParser(Parser):
    """JSON bodies whose every string is text; otherwise 422 naming the field (through
    `on_http_error`: ninja turns any parser error into its 400 "Cannot parse")."""

    def parse_body(self, request: HttpRequest) -> DictStrAny:
        data = super().parse_body(request)
        field = first_lone_surrogate(data)
        if field is not None:
            raise NotUtf8(field)
        return data


api = NinjaAPI(
    title="Arbiter API",
    version="1",
    description="Control plane and GPU arbiter for a small cluster of GPU hosts.",
    auth=api_auth,
    docs_url="/docs",
    urls_namespace="api",
    parser=StrictJsonParser(),
)


def error_response(request: HttpRequest, status: int, body: dict) -> HttpResponse:
    return api.create_response(request, body, status=status)


@api.exception_handler(ArbiterError)
def on_arbiter_error(request: HttpRequest, exc: ArbiterError) -> HttpResponse:
    response = error_response(request, exc.status, exc.as_body())
    for name, value in exc.headers.items():  # e.g. Retry-After on a 423
        response[name] = value
    return response


def _field_name(location: list) -> str:
    # ninja reports ("body", "payload", "ttl_seconds"); callers know the field as
    # "ttl_seconds", so drop the parameter source and the schema argument name.
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] in ("payload", "data", "body"):
        parts = parts[1:]
    return ".".join(parts) or "body"


@api.exception_handler(RequestDataTooBig)
def on_request_data_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    # Django raises this on `request.body` past DATA_UPLOAD_MAX_MEMORY_SIZE; unhandled it
    # becomes Django's HTML 400. (Served through arbiter.asgi, arbiter.body_limit answers
    # such a body before Django reads it; this covers every other way in.)
    return on_arbiter_error(request, PayloadTooLarge(api_limit()))


@api.exception_handler(NinjaValidationError)
def on_validation_error(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    problems = [
        {"field": _field_name(list(err.get("loc", []))), "message": err.get("msg", "invalid")}
        for err in exc.errors
    ]
    first = problems[0] if problems else {"field": "body", "message": "invalid request"}
    body = {
        "error": {
            "type": "validation_error",
            "message": f"{first['field']}: {first['message']}",
            "field": first["field"],
            "errors": problems,
        }
    }
    return error_response(request, 422, body)


@api.exception_handler(AuthenticationError)
def on_authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    body = {
        "error": {
            "type": "unauthorized",
            "message": "authentication required: send `Authorization: Bearer <api key>` or log in",
        }
    }
    response = error_response(request, 401, body)
    response["WWW-Authenticate"] = 'Bearer realm="arbiter"'
    return response


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, NotUtf8):
        field = exc.__cause__.field
        problem = {"field": field, "message": "must be text (it holds a lone UTF-16 surrogate)"}
        body = {
            "type": "validation_error",
            "message": f"{field}: {problem['message']}",
            "field": field,
            "errors": [problem],
        }
        return error_response(request, 422, {"error": body})
    error_type = {403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    return error_response(
        request, exc.status_code, {"error": {"type": error_type, "message": str(exc)}}
    )


api.add_router("/", status_router)
api.add_router("/", keys_router)
api.add_router("/", audit_router)
api.add_router("/", inventory_router)
api.add_router("/", host_checks_router)
api.add_router("/", orphans_router)
api.add_router("/", catalog_router)
# The lock router comes before the swap router: /swap/lock is not a swap id.
api.add_router("/", lock_router)
api.add_router("/", lease_router)
api.add_router("/", webhook_router)
api.add_router("/", schedule_router)
api.add_router("/", swaps_router)

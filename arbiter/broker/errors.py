"""The broker's errors, answered in the OpenAI shape applications already parse.

`{"error": {"type": ..., "message": ..., "param"?: ..., "code"?: ..., **extra}}` plus the
headers that belong to the error (`Retry-After`, `WWW-Authenticate`). The control API's
`ArbiterError`s that reach the broker (the swap lock's 423, a busy host's 409) are
translated once, in `from_arbiter_error`.
"""

from __future__ import annotations

import math
from typing import Any

from arbiter.errors import ArbiterError, Locked


class BrokerError(Exception):
    """Base of every error the broker answers itself (the backend's own errors pass through)."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.extra = extra
        self.headers: dict[str, str] = {}
        if retry_after is not None:
            self.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))

    def as_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
        error.update(self.extra)
        return {"error": error}


class InvalidRequest(BrokerError):
    status = 400


class Unauthorized(BrokerError):
    status = 401
    error_type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")
        self.headers["WWW-Authenticate"] = 'Bearer realm="arbiter"'


class ModelNotAllowed(BrokerError):
    """The API key is limited to other models (ApiKey.allowed_models)."""

    status = 403
    error_type = "permission_error"

    def __init__(self, model: str, key_name: str) -> None:
        super().__init__(
            f"The API key {key_name!r} may not use the model `{model}`.",
            code="model_not_allowed",
            param="model",
        )


class ModelNotFound(BrokerError):
    status = 404

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` is neither served nor in the catalog.",
            code="model_not_found",
            param="model",
        )


class RouteNotFound(BrokerError):
    status = 404
    error_type = "not_found"


class MethodNotAllowed(BrokerError):
    status = 405

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"{method} is not allowed here; use {allowed}", code="method_not_allowed")
        self.headers["Allow"] = allowed


class ModelNotLoadable(BrokerError):
    """The model is in the catalog but the cluster, as configured, cannot load it."""

    status = 409
    error_type = "model_not_loadable"


class DoesNotFit(ModelNotLoadable):
    """The model cannot fit on any host, even with every evictable service stopped."""

    error_type = "insufficient_vram"


class PayloadTooLarge(BrokerError):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than the broker's limit of {limit} bytes.",
            code="request_too_large",
            limit_bytes=limit,
        )


class UnsupportedMediaType(BrokerError):
    status = 415

    def __init__(self, content_type: str, expected: str) -> None:
        super().__init__(
            f"Content-Type {content_type or '(none)'!r} is not accepted here; send {expected}.",
            code="unsupported_media_type",
        )


class LockHeld(BrokerError):
    """Someone else holds the swap lock, so the broker loads (and evicts) nothing; or a
    lease holds the model a load would replace or evict (`blocked_by` names it)."""

    status = 423
    error_type = "locked"


class TooManyRequests(BrokerError):
    status = 429
    error_type = "rate_limit_exceeded"


class BackendUnavailable(BrokerError):
    """The backend's last probe failed (or it refused the connection just now)."""

    status = 503
    error_type = "backend_unavailable"


class Busy(BrokerError):
    """The request could not be served in time: full wait queue, slow swap, busy memory."""

    status = 503
    error_type = "server_busy"


class LoadFailed(BrokerError):
    """The swap that was to load the model failed or was cancelled."""

    status = 503
    error_type = "load_failed"


class UpstreamError(BrokerError):
    status = 502
    error_type = "upstream_error"


class UpstreamTimeout(BrokerError):
    status = 504
    error_type = "upstream_timeout"


def from_arbiter_error(exc: ArbiterError) -> BrokerError:
    """A control-plane error met while loading, as the broker answers it."""
    if isinstance(exc, Locked):
        # A lease (coordination.leases) carries `blocked_by`; the lock does not.
        code = "model_leased" if "blocked_by" in exc.extra else "swap_lock_held"
        error: BrokerError = LockHeld(
            exc.message, code=code, retry_after=exc.retry_after, **exc.extra
        )
        return error
    if exc.status == 404:
        return RouteNotFound(exc.message, code=exc.error_type, param=exc.field, **exc.extra)
    if exc.status == 409:
        return Busy(exc.message, code="host_busy", retry_after=5, **exc.extra)
    if exc.status < 500:
        # e.g. the catalog model names no host and the inventory has several: the
        # request itself is fine, the cluster cannot take it as configured.
        return ModelNotLoadable(exc.message, code=exc.error_type, param=exc.field, **exc.extra)
    return BackendUnavailable(exc.message, code=exc.error_type, retry_after=5, **exc.extra)

"""Domain exceptions. Each carries its HTTP status; `arbiter.api.root` maps them once."""

from typing import Any


class ArbiterError(Exception):
    """Base of every error Arbiter reports to a caller."""

    status = 400
    error_type = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra
        # Response headers that belong to the error (e.g. Retry-After on 423).
        self.headers: dict[str, str] = {}

    def as_body(self) -> dict[str, Any]:
        """The one JSON error shape: {"error": {"type", "message", "field", ...}}."""
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        error.update(self.extra)
        return {"error": error}


class InvalidInput(ArbiterError):
    status = 422
    error_type = "validation_error"


class NotFound(ArbiterError):
    status = 404
    error_type = "not_found"


class Conflict(ArbiterError):
    status = 409
    error_type = "conflict"


class PayloadTooLarge(ArbiterError):
    """A request body over the limit (DATA_UPLOAD_MAX_MEMORY_SIZE for the API)."""

    status = 413
    error_type = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"body: the request body is larger than the limit of {limit} bytes",
            field="body",
            limit_bytes=limit,
        )


class Forbidden(ArbiterError):
    """Authenticated, but not allowed to do this (e.g. an API key where a person must act)."""

    status = 403
    error_type = "forbidden"


class PreconditionFailed(ArbiterError):
    """A conditional request whose condition (e.g. a lock token) does not hold."""

    status = 412
    error_type = "precondition_failed"


class PreconditionRequired(ArbiterError):
    """A request that must be conditional (e.g. carry a lock token) but is not."""

    status = 428
    error_type = "precondition_required"


class Locked(ArbiterError):
    """The swap lock is held by someone else (or blocked after a force release).

    Carries the holder and when the lock frees up, never the token, and a `Retry-After`
    header: whole seconds until then, at least 1.
    """

    status = 423
    error_type = "locked"

    def __init__(
        self,
        message: str,
        *,
        holder: str | None,
        expires_at: str | None,
        retry_after: int,
        **extra: Any,
    ) -> None:
        super().__init__(message, holder=holder, expires_at=expires_at, **extra)
        self.holder = holder
        self.retry_after = max(1, int(retry_after))
        self.headers["Retry-After"] = str(self.retry_after)


# --- SSH -------------------------------------------------------------------------


class SshError(ArbiterError):
    """Something went wrong talking to a host over SSH."""

    status = 502
    error_type = "ssh_error"

    def __init__(self, host: str, message: str, **extra: Any) -> None:
        super().__init__(f"{host}: {message}", host=host, **extra)
        self.host = host


class HostUnreachable(SshError):
    error_type = "host_unreachable"


class SshAuthFailed(HostUnreachable):
    """The host answered but refused our user or key."""

    error_type = "ssh_auth_failed"


class HostKeyRejected(SshError):
    """The host presented a key we do not trust: unknown or changed. Fails closed."""

    error_type = "host_key_rejected"

    def __init__(self, host: str, message: str, *, fingerprint: str, changed: bool) -> None:
        super().__init__(host, message, fingerprint=fingerprint, changed=changed)
        self.fingerprint = fingerprint
        self.changed = changed


class CommandTimeout(SshError):
    status = 504
    error_type = "command_timeout"


class CommandFailed(SshError):
    """The remote command ran and exited non-zero."""

    error_type = "command_failed"

    def __init__(self, host: str, argv: list[str], exit_status: int, stderr_tail: str) -> None:
        super().__init__(
            host,
            f"{argv[0] if argv else 'command'} exited with status {exit_status}: "
            f"{stderr_tail.strip() or '(no stderr)'}",
            exit_status=exit_status,
            stderr_tail=stderr_tail,
        )
        self.argv = argv
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail

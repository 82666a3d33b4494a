"""The client's errors: each carries the exit code it ends the run with."""

from __future__ import annotations

import signal

import httpx

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_SWAP_FAILED = 4
EXIT_TIMEOUT = 5
EXIT_UNREACHABLE = 6
EXIT_AUTH = 7
EXIT_API_ERROR = 8
# Interrupted: 128 + the signal's number, as shells report it (130 SIGINT, 143 SIGTERM).


class ClientError(Exception):
    exit_code = EXIT_API_ERROR


class Unreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


class AuthFailed(ClientError):
    exit_code = EXIT_AUTH


class LockHeld(ClientError):
    exit_code = EXIT_LOCKED


class ApiError(ClientError):
    exit_code = EXIT_API_ERROR

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SwapFailed(ClientError):
    exit_code = EXIT_SWAP_FAILED


class WaitTimedOut(ClientError):
    exit_code = EXIT_TIMEOUT


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; unwinds like Ctrl-C so every `finally` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def error_for(response: httpx.Response) -> ClientError:
    """The API's error answer as the exception (and so the exit code) it stands for."""
    try:
        error = response.json().get("error") or {}
        message = str(error.get("message") or response.reason_phrase)
    except (ValueError, AttributeError):
        error, message = {}, f"{response.reason_phrase}: {response.text[:200].strip()}"
    status = response.status_code
    if status == 401:
        return AuthFailed("401 the API key was not accepted (check --api-key / ARBITER_API_KEY)")
    if status == 403:
        return AuthFailed(f"403 {message} (check the API key's permissions)")
    if status == 423:
        # Shown, never slept on or parsed into a number: anything but plain ASCII digits
        # (delay-seconds, RFC 9110 §10.2.3) is shown as unknown.
        retry = response.headers.get("Retry-After", "").strip()
        if not (retry.isascii() and retry.isdigit() and len(retry) <= 9):
            retry = "?"
        return LockHeld(f"{message} (free again in {retry} s)")
    if status in (502, 503, 504):
        return Unreachable(f"{status} from {response.request.url}: {message}")
    return ApiError(f"{status} {message}", status)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

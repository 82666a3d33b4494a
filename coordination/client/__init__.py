"""arbiter-swap: the command-line client for cron jobs (acquire, swap, stream, release).

    arbiter-swap --model KEY --holder NAME --ttl SECONDS [--host H] [--wait-timeout S]

It takes the swap lock, starts the swap with the lock's token, prints the swap's log as
it streams (Server-Sent Events) until the final state, and releases the lock - always:
also when the swap fails, the wait times out, or SIGINT/SIGTERM arrives (then the swap
is cancelled first). While the swap runs the lock is extended every TTL/3 seconds, so
the TTL only bounds how long a crashed client (kill -9, a lost machine) keeps the lock.

It runs on other machines than Arbiter: the standard library and httpx only, never Django.

Modules: `errors` (exit codes), `api` (the HTTP calls and the event stream), `reporter`
(output and signals), `job` (the run itself), `cli` (options and `main`).
"""

from coordination.client.api import ArbiterApi, SseEvent, iter_sse
from coordination.client.cli import main, parse_args
from coordination.client.errors import (
    EXIT_API_ERROR,
    EXIT_AUTH,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_SWAP_FAILED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ApiError,
    AuthFailed,
    ClientError,
    LockHeld,
    SwapFailed,
    Unreachable,
    WaitTimedOut,
    error_for,
)
from coordination.client.job import Options, SwapJob
from coordination.client.reporter import Reporter

__all__ = [
    "EXIT_API_ERROR",
    "EXIT_AUTH",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_SWAP_FAILED",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "ApiError",
    "ArbiterApi",
    "AuthFailed",
    "ClientError",
    "LockHeld",
    "Options",
    "Reporter",
    "SseEvent",
    "SwapFailed",
    "SwapJob",
    "Unreachable",
    "WaitTimedOut",
    "error_for",
    "iter_sse",
    "main",
    "parse_args",
]

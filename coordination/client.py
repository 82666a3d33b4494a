"""arbiter-swap: the command-line client for cron jobs (acquire, swap, stream, release).

    arbiter-swap --model KEY --holder NAME --ttl SECONDS [--host H] [--wait-timeout S]

It takes the swap lock, starts the swap with the lock's token, prints the swap's log as
it streams (Server-Sent Events) until the final state, and releases the lock - always:
also when the swap fails, the wait times out, or SIGINT/SIGTERM arrives (then the swap
is cancelled first). While the swap runs the lock is extended every TTL/3 seconds, so
the TTL only bounds how long a crashed client (kill -9, a lost machine) keeps the lock.

It runs on other machines than Arbiter: the standard library and httpx only, never Django.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO, TypedDict

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

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_HEADER = "X-Swap-Lock-Token"  # noqa: S105 - a header name, not a secret
HTTP_TIMEOUT = 10.0
# The stream sends a keepalive comment after 15 s without lines; twice that means stalled.
STREAM_READ_TIMEOUT = 30.0
# How long the stream may stay unreachable (an Arbiter restart takes seconds) before we
# give up with EXIT_UNREACHABLE; how long a cancelled swap gets to stop before we release.
RECONNECT_GIVE_UP = 60.0
CANCEL_WAIT = 15.0

EXIT_CODES_HELP = """\
exit codes:
  0  the swap completed (or the dry run passed); the lock was released
  2  usage error (bad or missing arguments, no API key)
  3  locked: someone else holds the swap lock (their holder and expiry are printed)
  4  the swap failed or was cancelled (its error is printed)
  5  --wait-timeout passed: the swap was cancelled, the lock released
  6  Arbiter unreachable (connection refused, timeouts, 502/503/504 from a proxy)
  7  authentication or permission error (401/403: check the API key)
  8  any other API error, e.g. unknown model (404), bad TTL (422), host busy (409)
  130/143  interrupted by SIGINT/SIGTERM: the swap was cancelled, the lock released

environment: ARBITER_URL, ARBITER_API_KEY (or ARBITER_API_KEY_FILE: a file holding it)
"""


class SwapState(TypedDict):
    """A `state` event of the stream (also what the final outcome is judged by)."""

    swap_id: int
    state: str
    final: bool
    error: str
    detail: str


# --- Errors: each carries the exit code it ends the run with ---------------------------


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
        retry = response.headers.get("Retry-After", "?")
        return LockHeld(f"{message} (free again in {retry} s)")
    if status in (502, 503, 504):
        return Unreachable(f"{status} from {response.request.url}: {message}")
    return ApiError(f"{status} {message}", status)


# --- HTTP -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    name: str
    data: str
    id: str | None


def iter_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from text lines (the WHATWG parsing rules, minus `retry`)."""
    name, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield SseEvent(name, "\n".join(data), event_id)
            name, data = "message", []
            continue
        if line.startswith(":"):  # a comment: the server's keepalive
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


class ArbiterApi:
    """The few API calls the client makes; every failure becomes a ClientError."""

    def __init__(
        self, url: str, api_key: str, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "arbiter-swap/1"},
            timeout=HTTP_TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def call(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> httpx.Response:
        headers = {TOKEN_HEADER: token} if token else {}
        try:
            response = self.http.request(method, path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach Arbiter at {self.url}: {describe(exc)}") from None
        if response.status_code >= 400:
            raise error_for(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.call(method, path, **kwargs)
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ApiError(f"not an Arbiter answer from {response.url}", response.status_code)
        return document

    @contextmanager
    def stream(self, swap_id: int, after: int, read_timeout: float) -> Iterator[Iterator[str]]:
        """The swap's event stream from line `after` on (Last-Event-ID), as text lines."""
        timeout = httpx.Timeout(HTTP_TIMEOUT, read=read_timeout)
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        with self.http.stream(
            "GET", f"/api/swap/{swap_id}/stream", headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise error_for(response)
            yield response.iter_lines()


def _event_data(event: SseEvent) -> dict[str, Any]:
    try:
        data = json.loads(event.data)
        if isinstance(data, dict) and (event.name != "line" or "seq" in data):
            return data
    except ValueError:
        pass
    raise ApiError(f"malformed {event.name!r} event in the log stream: {event.data[:100]}", 200)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- Output -----------------------------------------------------------------------------


class Reporter:
    """Log lines to stdout; what the client itself says to stderr, `arbiter-swap: …`."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._lock = threading.Lock()

    def _write(self, stream: TextIO, text: str) -> None:
        with self._lock:
            print(text, file=stream, flush=True)

    def line(self, text: str) -> None:
        if not self.quiet:
            self._write(sys.stdout, text)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._write(sys.stderr, f"arbiter-swap: {message}")

    def warn(self, message: str) -> None:
        self._write(sys.stderr, f"arbiter-swap: {message}")

    def error(self, message: str) -> None:
        self._write(sys.stderr, f"arbiter-swap: error: {message}")


# --- Signals ----------------------------------------------------------------------------

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> dict[int, Any]:
    """SIGINT and SIGTERM raise Interrupted (whatever cron or a shell set before us)."""
    return {signum: signal.signal(signum, _raise_interrupted) for signum in HANDLED_SIGNALS}


@contextmanager
def signals_deferred(say: Reporter) -> Iterator[list[int]]:
    """Cancel and release must finish: a second Ctrl-C is noted, acted on afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    arrived: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        arrived.append(signum)
        say.warn(f"{signal.Signals(signum).name}: still cancelling/releasing, a moment")

    previous = {signum: signal.signal(signum, note) for signum in HANDLED_SIGNALS}
    try:
        yield arrived
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if arrived:
        raise Interrupted(arrived[0])


# --- The job ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    model: str
    holder: str
    ttl: int
    host: str | None
    purpose: str
    wait_timeout: float | None
    url: str
    api_key: str
    quiet: bool
    dry_run: bool


class LockKeeper(threading.Thread):
    """Extends the lock every TTL/3 while the swap runs, so it cannot expire mid-swap.

    A third, not a half: a late or failed extension still leaves one more try.
    """

    def __init__(self, options: Options, token: str, say: Reporter) -> None:
        super().__init__(name="arbiter-swap-lock-keeper", daemon=True)
        self.options, self.token, self.say = options, token, say
        self.interval = max(0.3, options.ttl / 3)
        self.stopped = threading.Event()

    def run(self) -> None:
        api = ArbiterApi(self.options.url, self.options.api_key)
        body = {
            "holder": self.options.holder,
            "ttl_seconds": self.options.ttl,
            "purpose": self.options.purpose,
        }
        wait = self.interval
        try:
            while not self.stopped.wait(wait):
                try:
                    api.json("POST", "/api/swap/lock", token=self.token, body=body)
                    wait = self.interval
                except Unreachable as exc:  # try again soon, well before it expires
                    wait = min(self.interval, 2.0)
                    self.say.warn(f"could not extend the lock, retrying: {exc}")
                except ClientError as exc:  # 412/423: expired or force-released
                    self.say.warn(f"stopped extending the lock: {exc}")
                    return
        finally:
            api.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=HTTP_TIMEOUT + 1)


class SwapJob:
    """acquire -> swap -> follow the stream -> release (always), cancel on give-up."""

    def __init__(self, api: ArbiterApi, options: Options, say: Reporter) -> None:
        self.api, self.options, self.say = api, options, say
        self.clock: Callable[[], float] = time.monotonic
        self.swap_id: int | None = None  # once started: what an interrupt cancels
        self.last_seq = 0  # the last log line printed: where a reconnect resumes
        self.down_since: float | None = None  # when the stream was lost, until it is back

    def run(self) -> int:
        o = self.options
        lock_body = {"holder": o.holder, "ttl_seconds": o.ttl, "purpose": o.purpose}
        grant = self.api.json("POST", "/api/swap/lock", body=lock_body)
        token = str(grant["token"])
        self.say.info(
            f"lock acquired as {o.holder!r} (generation {grant.get('generation')}, "
            f"expires {grant.get('expires_at')}, extended while the swap runs)"
        )
        keeper = LockKeeper(o, token, self.say)
        keeper.start()
        try:
            return self._swap(token)
        except ClientError as exc:  # reported before the release, in the order it happened
            self.say.error(str(exc))
            if isinstance(exc, WaitTimedOut):
                self._cancel("gave up")
            return exc.exit_code
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            self.say.error(f"interrupted by {signal.Signals(signum).name}")
            self._cancel("interrupted")
            return 128 + signum
        finally:
            with signals_deferred(self.say):
                keeper.stop()
                self._release(token)

    def _swap(self, token: str) -> int:
        o = self.options
        body: dict[str, Any] = {"model": o.model, "dry_run": o.dry_run}
        if o.host:
            body["host"] = o.host
        created = self.api.json("POST", "/api/swap", token=token, body=body)
        self.swap_id = swap_id = int(created["id"])
        where = f" on {o.host}" if o.host else ""
        kind = "dry run" if o.dry_run else "swap"
        self.say.info(f"{kind} {swap_id} started: {o.model}{where}")
        deadline = None if o.wait_timeout is None else self.clock() + o.wait_timeout
        final = self._follow(swap_id, deadline)
        if final["state"] == "complete":
            self.say.info(f"{kind} {swap_id} complete: {final['detail'] or 'done'}")
            return EXIT_OK
        reason = final["error"] or final["detail"] or "no error recorded"
        raise SwapFailed(f"{kind} {swap_id} {final['state']}: {reason}")

    def _follow(self, swap_id: int, deadline: float | None) -> SwapState:
        """Print the log until the final state; reconnect (Last-Event-ID) if it drops."""
        self.last_seq, self.down_since = 0, None
        while True:
            read_timeout = STREAM_READ_TIMEOUT
            if deadline is not None:
                left = deadline - self.clock()
                if left <= 0:
                    raise self._timed_out(swap_id)
                read_timeout = min(read_timeout, left)
            try:
                final = self._read_stream(swap_id, read_timeout, deadline)
                if final is not None:
                    return final
                # It ended without a final state (a proxy or a restart cut it): ask for the
                # state, which also turns a 404 or 401 into its exit code, then resume.
                state = self.api.json("GET", f"/api/swap/{swap_id}").get("state")
                self.say.info(f"log stream of swap {swap_id} dropped ({state}); resuming")
            except httpx.ReadTimeout:
                if read_timeout == STREAM_READ_TIMEOUT:  # not the deadline: a stalled stream
                    self.say.info(f"log stream of swap {swap_id} went quiet; reconnecting")
            except (httpx.TransportError, Unreachable) as exc:
                if self.down_since is None:
                    self.down_since = self.clock()
                    self.say.info(f"lost the log stream of swap {swap_id} ({describe(exc)})")
                if self.clock() - self.down_since > RECONNECT_GIVE_UP:
                    raise Unreachable(
                        f"lost the log stream of swap {swap_id} for "
                        f"{RECONNECT_GIVE_UP:g} s: {describe(exc)}"
                    ) from None
                time.sleep(1.0)

    def _read_stream(
        self, swap_id: int, read_timeout: float, deadline: float | None
    ) -> SwapState | None:
        """One connection to the stream: print its lines; the final state, if it came."""
        with self.api.stream(swap_id, self.last_seq, read_timeout) as lines:
            self.down_since = None
            for event in iter_sse(lines):
                if event.name == "line":
                    line = _event_data(event)
                    self.last_seq = max(self.last_seq, int(line["seq"]))
                    self.say.line(str(line["text"]))
                elif event.name == "state":
                    state = _event_data(event)
                    if state.get("final"):
                        return SwapState(
                            swap_id=swap_id,
                            state=str(state.get("state")),
                            final=True,
                            error=str(state.get("error") or ""),
                            detail=str(state.get("detail") or ""),
                        )
                # Lines may flow without a pause: the deadline is checked here too.
                if deadline is not None and self.clock() >= deadline:
                    raise self._timed_out(swap_id)
        return None

    def _timed_out(self, swap_id: int) -> WaitTimedOut:
        return WaitTimedOut(
            f"swap {swap_id} did not finish within --wait-timeout {self.options.wait_timeout:g} s"
        )

    def _cancel(self, why: str) -> None:
        """Cancel the swap we started (if any) and wait briefly until it has stopped."""
        swap_id = self.swap_id
        if swap_id is None:
            return
        with signals_deferred(self.say):
            self._cancel_swap(swap_id, why)

    def _cancel_swap(self, swap_id: int, why: str) -> None:
        self.say.warn(f"{why}: cancelling swap {swap_id}")
        try:
            self.api.call("POST", f"/api/swap/{swap_id}/cancel")
        except ApiError as exc:
            if exc.status != 409:  # 409: it had already finished
                self.say.warn(f"could not cancel swap {swap_id}: {exc}")
                return
        except ClientError as exc:
            self.say.warn(f"could not cancel swap {swap_id}: {exc}")
            return
        # Wait (briefly) until it has stopped what it launched, before the lock is freed.
        give_up = self.clock() + CANCEL_WAIT
        state = "?"
        while self.clock() < give_up:
            try:
                swap = self.api.json("GET", f"/api/swap/{swap_id}")
            except ClientError:
                break
            state = str(swap.get("state"))
            if swap.get("final"):
                break
            time.sleep(0.3)
        self.say.warn(f"swap {swap_id} is {state}")

    def _release(self, token: str) -> None:
        try:
            self.api.call("DELETE", "/api/swap/lock", token=token)
        except ApiError as exc:
            if exc.status == 409:
                self.say.warn("the lock was no longer ours (expired or force-released)")
            else:
                self.say.warn(f"could not release the lock: {exc}")
        except ClientError as exc:
            self.say.warn(f"could not release the lock (it expires by its TTL): {exc}")
        else:
            self.say.info("lock released")


# --- Command line -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arbiter-swap",
        description=(
            "Reserve the GPU for a cron job: acquire Arbiter's swap lock, swap a model in,\n"
            "print the swap's log until it ends, and release the lock - always, also on\n"
            "failure, timeout and SIGINT/SIGTERM (which cancel the swap first)."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="KEY", help="catalog key to swap in")
    parser.add_argument("--holder", required=True, metavar="NAME", help="who holds the lock")
    parser.add_argument(
        "--ttl",
        required=True,
        type=_positive_int,
        metavar="SECONDS",
        help="lock lease; extended every TTL/3 while the swap runs, so it bounds how long "
        "a crashed client keeps the lock",
    )
    parser.add_argument("--host", metavar="H", help="host to swap on (default: the model's)")
    parser.add_argument("--purpose", default=None, metavar="TEXT", help="shown with the lock")
    parser.add_argument(
        "--wait-timeout",
        type=_positive_float,
        metavar="S",
        help="give up (cancel the swap, exit 5) after S seconds; default: wait until it ends",
    )
    parser.add_argument(
        "--url", metavar="URL", help=f"Arbiter's base URL (default $ARBITER_URL or {DEFAULT_URL})"
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--api-key", metavar="KEY", help="API key (default $ARBITER_API_KEY)")
    keys.add_argument("--api-key-file", metavar="PATH", help="read the API key from a file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="pre-flight checks and the command only; nothing runs on the host "
        "(the lock is still taken and released)",
    )
    return parser


def _read_key_file(parser: argparse.ArgumentParser, path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError as exc:
        parser.error(f"{what}: cannot read {path}: {exc.strerror or exc}")
    if not key:
        parser.error(f"{what}: {path} is empty")
    return key


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Options:
    """The options, with defaults from `env`; exits 2 (argparse) on a usage error."""
    env = os.environ if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    url = (args.url or env.get("ARBITER_URL") or DEFAULT_URL).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        parser.error(f"--url: must start with http:// or https://, got {url!r}")
    if args.api_key is not None:
        key = args.api_key.strip()
    elif args.api_key_file:
        key = _read_key_file(parser, args.api_key_file, "--api-key-file")
    elif env.get("ARBITER_API_KEY", "").strip():
        key = env["ARBITER_API_KEY"].strip()
    elif env.get("ARBITER_API_KEY_FILE"):
        key = _read_key_file(parser, env["ARBITER_API_KEY_FILE"], "ARBITER_API_KEY_FILE")
    else:
        key = ""
    if not key:
        parser.error("no API key: set ARBITER_API_KEY, or pass --api-key-file PATH")
    model, holder = args.model.strip(), args.holder.strip()
    if not model or not holder:
        parser.error("--model and --holder must not be blank")
    purpose = args.purpose if args.purpose is not None else f"arbiter-swap --model {model}"
    return Options(
        model=model,
        holder=holder,
        ttl=args.ttl,
        host=(args.host or "").strip() or None,
        purpose=purpose,
        wait_timeout=args.wait_timeout,
        url=url,
        api_key=key,
        quiet=args.quiet,
        dry_run=args.dry_run,
    )


def run(options: Options) -> int:
    say = Reporter(options.quiet)
    api = ArbiterApi(options.url, options.api_key)
    try:
        return SwapJob(api, options, say).run()
    except ClientError as exc:
        say.error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        say.error(f"interrupted by {signal.Signals(signum).name}")
        return 128 + signum
    finally:
        api.close()


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a C locale under cron must not crash on "✓"
            stream.reconfigure(errors="replace")
    options = parse_args(argv)
    previous = install_signal_handlers()
    try:
        return run(options)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())

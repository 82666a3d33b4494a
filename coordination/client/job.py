"""The job: acquire -> swap -> follow the stream -> release (always), cancel on give-up."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import httpx

from coordination.client.api import HTTP_TIMEOUT, ArbiterApi, event_data, iter_sse
from coordination.client.errors import (
    EXIT_OK,
    ApiError,
    ClientError,
    Interrupted,
    SwapFailed,
    Unreachable,
    WaitTimedOut,
    describe,
)
from coordination.client.reporter import Reporter, signals_deferred

# The stream sends a keepalive comment after 15 s without lines; twice that means stalled.
STREAM_READ_TIMEOUT = 30.0
# How long the stream may stay unreachable (an Arbiter restart takes seconds) before we
# give up with EXIT_UNREACHABLE; how long a cancelled swap gets to stop before we release.
RECONNECT_GIVE_UP = 60.0
CANCEL_WAIT = 15.0
# A release that meets a server error or no answer is sent again: releasing is
# idempotent (a token that no longer holds the lock answers 409), and a lock left held
# by a lost release blocks everyone until its TTL runs out.
RELEASE_DELAYS = (0.5, 1.0, 2.0, 4.0)


class SwapState(TypedDict):
    """A `state` event of the stream (also what the final outcome is judged by)."""

    swap_id: int
    state: str
    final: bool
    error: str
    detail: str


def progress_text(progress: dict) -> str:
    """A launch phase and its ETA as the client prints it (the stream's `progress`)."""
    text = f"phase: {progress.get('phase_label') or progress.get('phase')}"
    elapsed = progress.get("phase_elapsed_seconds")
    if isinstance(elapsed, int | float):
        text += f" for {elapsed:.0f} s"
    eta = progress.get("eta_seconds")
    text += f", ETA {eta:.0f} s" if isinstance(eta, int | float) else ", no ETA yet"
    return text


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
    # --lease SECONDS: once the swap completed, lease the model on its host for the job.
    lease: int | None = None


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
        self.token: str | None = None  # the lock's: a cancel needs it while the lock is held
        self.last_seq = 0  # the last log line printed: where a reconnect resumes
        self.down_since: float | None = None  # when the stream was lost, until it is back

    def run(self) -> int:
        o = self.options
        lock_body = {"holder": o.holder, "ttl_seconds": o.ttl, "purpose": o.purpose}
        grant = self.api.json("POST", "/api/swap/lock", body=lock_body)
        token = self.token = str(grant["token"])
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
            if o.lease and not o.dry_run:
                self._lease(str(created.get("host") or o.host or ""))
            return EXIT_OK
        reason = final["error"] or final["detail"] or "no error recorded"
        raise SwapFailed(f"{kind} {swap_id} {final['state']}: {reason}")

    def _lease(self, host: str) -> None:
        """Lease the model just swapped in on its host, while the lock is still ours (so
        nobody swaps in between), and print the lease's id and token on stdout - shown
        once, like the lock's token: the job extends (PATCH) and releases (DELETE)
        /api/leases/ID with the token in X-Arbiter-Lease-Token."""
        o = self.options
        body: dict[str, Any] = {
            "model": o.model,
            "holder": o.holder,
            "ttl_seconds": o.lease,
            "purpose": o.purpose,
        }
        if host:
            body["host"] = host
        grant = self.api.json("POST", "/api/leases", body=body)
        self.say.info(
            f"lease {grant.get('id')} acquired as {o.holder!r}: {grant.get('model')} on "
            f"{grant.get('host')} until {grant.get('expires_at')}"
        )
        self.say.result(f"ARBITER_LEASE_ID={grant.get('id')}")
        self.say.result(f"ARBITER_LEASE_TOKEN={grant.get('token')}")

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
                    line = event_data(event)
                    self.last_seq = max(self.last_seq, int(line["seq"]))
                    self.say.line(str(line["text"]))
                elif event.name == "progress":
                    self.say.info(progress_text(event_data(event)))
                elif event.name == "state":
                    state = event_data(event)
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
            self.api.call("POST", f"/api/swap/{swap_id}/cancel", token=self.token)
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
        for attempt, delay in enumerate((*RELEASE_DELAYS, None)):
            try:
                self.api.call("DELETE", "/api/swap/lock", token=token)
            except ApiError as exc:
                if exc.status == 409:
                    self.say.warn("the lock was no longer ours (expired or force-released)")
                    return
                if exc.status < 500 or delay is None:
                    self.say.warn(f"could not release the lock: {exc}")
                    return
                problem = str(exc)
            except ClientError as exc:
                if delay is None or not isinstance(exc, Unreachable):
                    self.say.warn(f"could not release the lock (it expires by its TTL): {exc}")
                    return
                problem = str(exc)
            else:
                self.say.info("lock released")
                return
            self.say.warn(f"release attempt {attempt + 1} failed ({problem}); trying again")
            time.sleep(delay)

"""What the client prints, and how SIGINT/SIGTERM reach it (cancel and release finish)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TextIO

from coordination.client.errors import Interrupted


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

    def result(self, text: str) -> None:
        """What the caller must read, on stdout even with --quiet (a lease's token)."""
        self._write(sys.stdout, text)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._write(sys.stderr, f"arbiter-swap: {message}")

    def warn(self, message: str) -> None:
        self._write(sys.stderr, f"arbiter-swap: {message}")

    def error(self, message: str) -> None:
        self._write(sys.stderr, f"arbiter-swap: error: {message}")


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

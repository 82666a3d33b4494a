"""Helper threads that leave `docker stop`'s signal to the main thread.

A signal sent to a process goes to any one of its threads that does not block it
(signal(7): "A process-directed signal may be delivered to any one of the threads that
does not currently have the signal blocked"), and Python runs its handler only in the
main thread, the next time that thread runs Python code (the `signal` module docs). A
main thread waiting on a lock (`Event.wait()`) is woken only by a signal delivered to
that thread: one taken by the HTTP thread left the simulated vLLM running until
`docker stop` killed it 30 s later, which real vLLM (uvicorn's SIGTERM handler) does
not do. So every helper thread blocks the stop signals first; threads it starts (the
HTTP server's request threads) inherit the block (pthread_sigmask(3)).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def start_helper_thread(target: Callable[..., Any], *args: Any, name: str | None = None) -> None:
    """Start a daemon thread running `target(*args)` with the stop signals blocked."""

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        target(*args)

    threading.Thread(target=run, name=name, daemon=True).start()

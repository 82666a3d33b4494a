"""The container's log lines, whole and flushed, as vLLM and uvicorn print them."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

print_lock = threading.Lock()


def log_line(line: str, stream: TextIO | None = None) -> None:
    # Handler threads log concurrently, so one lock keeps lines whole; flush per line
    # because a pipe is block-buffered and a log follower must see lines as they happen.
    out = stream or sys.stdout
    with print_lock:
        out.write(line + "\n")
        out.flush()


def log(level: str, where: str, message: str, stream: TextIO | None = None) -> None:
    log_line(f"{level} {time.strftime('%m-%d %H:%M:%S')} [{where}] {message}", stream)

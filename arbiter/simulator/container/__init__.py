"""A simulated inference container: a real local process that behaves like vLLM.

The simulated docker daemon starts one of these per `docker run`. It serves the
OpenAI-compatible subset the Arbiter relies on and prints vLLM-like logs, so log
followers, readiness probes and the proxy see what they would see on a GPU host.
Standard library only: it must start fast and must never import Django.

Modules: `options` (command line, constants), `logs`, `replies` (what the model says),
`server` (HTTP routes), `lifecycle` (start-up, crash, shutdown; `main`).
"""

from arbiter.simulator.container.options import CRASH_EXIT_CODE

__all__ = ["CRASH_EXIT_CODE"]

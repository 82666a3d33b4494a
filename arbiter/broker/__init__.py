"""The broker: one OpenAI-compatible front door (`/v1/...`, `/audio/...`) for applications.

It finds the backend that serves a request (`routing`), refuses fast when that backend
is down, streams the answer through unbuffered (`proxy`), loads a catalog model on
demand as a swap under the lock's rules (`loading`, `planner`), and bounds concurrency
and waiting (`limits`). Everything it needs from the database is read into plain
values (`table`), never held as ORM objects across an await.
"""

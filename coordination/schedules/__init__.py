"""The schedule registry: validate recurring jobs, compute their next runs, warn about them.

Schedulers outside Arbiter register their jobs so the dashboard can show what will swap
the GPU and when. Arbiter only stores and displays them: nothing here starts a task,
takes the lock, swaps or talks to a host.

Cron expressions are evaluated by cronsim (Debian cron semantics, including its DST
rules) in the job's own IANA timezone; every time handed out is UTC. cronsim says only
"Bad minute", so each field is probed on its own to report which one is wrong and why.

Modules: `cron` (expressions), `jobs` (registering), `runs` (next runs),
`schedule_warnings` (what the dashboard points out).
"""

from coordination.schedules.cron import validate_cron
from coordination.schedules.jobs import register_job, validate_timezone
from coordination.schedules.runs import next_runs, runs_between
from coordination.schedules.schedule_warnings import schedule_warnings

__all__ = [
    "next_runs",
    "register_job",
    "runs_between",
    "schedule_warnings",
    "validate_cron",
    "validate_timezone",
]

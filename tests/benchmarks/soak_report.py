"""The soak's figures (tests/benchmarks/test_soak.py): the served Arbiter measured from
outside every minute (VmRSS of serve's process tree, the database size, the row counts of
the tables that grow), the growth per minute after warm-up, and the printed table and
summary. The JSON goes to ARBITER_SOAK_ARTIFACT (default test-artifacts/soak.json).
"""

import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.benchmarks.conftest import ChildProcess
from tests.benchmarks.soak_load import MINUTES, Tally
from tests.live_arbiter import simulated_container_records

# The figures that judge flatness start here: 5 minutes in a full soak, less in a trial.
WARMUP_MINUTES = min(5, max(1, MINUTES // 3))
ARTIFACT = Path(
    os.environ.get("ARBITER_SOAK_ARTIFACT")
    or Path(__file__).resolve().parents[2] / "test-artifacts" / "soak.json"
)
GROWING_TABLES = {
    "gpu_samples": "arbiter_gpusample",
    "swaps": "arbiter_swap",
    "swap_transitions": "arbiter_swaptransition",
    "swap_log_lines": "arbiter_swaplogline",
    "webhook_events": "coordination_webhookevent",
    "webhook_deliveries": "coordination_webhookdelivery",
    "delivery_attempts": "coordination_deliveryattempt",
    "audit_events": "arbiter_auditevent",
    "lock_audit": "coordination_lockaudit",
    "key_usage": "arbiter_keyusage",
    "sessions": "django_session",
}

# Why a figure may keep growing after warm-up, by design (printed next to it).
GROWS_BY_DESIGN = {
    "gpu_samples": "kept HISTORY (15 min, engine/sampler.py): grows until then, then flat",
    "gpu_samples_max_per_gpu": "the same, per GPU",
    "swaps": "one row per swap, never pruned (swap_store.prune_logs keeps swaps)",
    "swap_transitions": "a few rows per swap, never pruned (kept with the swap)",
    "swap_log_lines": "each swap's log, kept ARBITER_SWAP_LOG_RETENTION_DAYS (90)",
    "webhook_events": "one per swap, kept with its deliveries",
    "webhook_deliveries": "one per event and endpoint, kept "
    "ARBITER_WEBHOOK_DELIVERY_RETENTION_DAYS (30)",
    "delivery_attempts": "kept with their delivery",
    "audit_events": "swap.start per swap, kept ARBITER_AUDIT_RETENTION_DAYS (365)",
    "key_usage": "a minute row per quota key, kept 1 h (broker/quotas.py KEEP_MINUTES)",
    "db_bytes": "the rows above; SQLite reuses freed pages, the file never shrinks",
    "wal_bytes": "SQLite's WAL restarts after each checkpoint (1000 pages) but the file "
    "keeps its largest size",
    "huey_bytes": "huey's queue: tasks are deleted once run",
    "huey_wal_bytes": "as wal_bytes, for huey's queue",
    "total_bytes": "the sum of the files above",
}


# -- the served Arbiter ----------------------------------------------------------------------
@dataclass
class Database:
    """Where serve keeps its state, measured from outside: a SQLite file or a PG database."""

    sqlite_path: Path | None = None
    huey_path: Path | None = None
    postgres_url: str | None = None

    @property
    def vendor(self) -> str:
        return "postgresql" if self.postgres_url else "sqlite"

    def size(self) -> dict[str, int]:
        if self.postgres_url:
            import psycopg

            with psycopg.connect(self.postgres_url, autocommit=True) as db:
                row = db.execute("SELECT pg_database_size(current_database())").fetchone()
            return {"db_bytes": int(row[0]) if row else 0}
        assert self.sqlite_path is not None and self.huey_path is not None
        sizes = {
            "db_bytes": _file_size(self.sqlite_path),
            "wal_bytes": _file_size(Path(f"{self.sqlite_path}-wal")),
            "huey_bytes": _file_size(self.huey_path),
            "huey_wal_bytes": _file_size(Path(f"{self.huey_path}-wal")),
        }
        return sizes

    def rows(self) -> dict[str, int]:
        queries = {name: f"SELECT COUNT(*) FROM {table}" for name, table in GROWING_TABLES.items()}  # noqa: S608 (constant names)
        gpus = 'SELECT COUNT(*) FROM arbiter_gpusample GROUP BY host_id, "index"'
        if self.postgres_url:
            import psycopg

            with psycopg.connect(self.postgres_url, autocommit=True) as db:
                counts = {name: db.execute(q).fetchone()[0] for name, q in queries.items()}
                per_gpu = [r[0] for r in db.execute(gpus).fetchall()]
        else:
            uri = f"file:{self.sqlite_path}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True, timeout=20)) as db:
                counts = {name: db.execute(q).fetchone()[0] for name, q in queries.items()}
                per_gpu = [r[0] for r in db.execute(gpus).fetchall()]
        counts["gpu_samples_max_per_gpu"] = max(per_gpu, default=0)
        counts["gpus_sampled"] = len(per_gpu)
        return counts


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class SoakArbiter:
    """The running `manage.py serve`, its keys and how to measure its database."""

    child: ChildProcess
    url: str
    data_dir: Path
    database: Database
    admin_password: str
    admin_key: str = ""
    inference_key: str = ""
    quota_key: str = ""


# -- measuring processes ------------------------------------------------------------------------
def simulated_containers(data_dir: Path) -> dict[int, str]:
    """{pid: "container <host>/<name>"} of every simulated container, running or not."""
    return {
        container["pid"]: f"container {host}/{container['name']}"
        for host, container in simulated_container_records(data_dir)
        if container.get("pid") and container.get("status") == "running"
    }


def _parent_pids() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(text[text.rindex(")") + 2 :].split()[1])
    return parents


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return 0  # a zombie has no VmRSS line


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def process_tree_rss(serve_pid: int, data_dir: Path) -> dict[str, float]:
    """{name: RSS MiB} of serve and every descendant (containers are the simulator's
    children though each runs in its own session)."""
    parents = _parent_pids()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    containers = simulated_containers(data_dir)
    tree, todo = [], [serve_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    rss: dict[str, float] = {}
    for pid in tree:
        kib = _rss_kib(pid)
        if kib is None:
            continue
        command = _cmdline(pid)
        if pid == serve_pid:
            name = "serve"
        elif pid in containers:
            name = containers[pid]
        elif " simcluster" in command:
            name = "simcluster"
        else:
            name = f"other {command[:40]}"
        rss[name] = rss.get(name, 0.0) + kib / 1024
    return {name: round(mib, 1) for name, mib in sorted(rss.items())}


# -- figures -----------------------------------------------------------------------------------
def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares growth per minute of (minute, value) points; None below 2 points."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else None


def growth(samples: list[dict], pick) -> dict[str, Any]:
    """First, warm-up and last value, and the slope per minute from warm-up on."""
    points = [(s["minute"], pick(s)) for s in samples if pick(s) is not None]
    after = [(m, v) for m, v in points if m >= WARMUP_MINUTES]
    rate = slope(after)
    # The second half of a full soak starts after HISTORY: GPU samples are flat by then.
    late = slope([(m, v) for m, v in points if m >= MINUTES / 2])
    return {
        "start": points[0][1] if points else None,
        "at_warmup": after[0][1] if after else None,
        "end": points[-1][1] if points else None,
        "per_min_after_warmup": None if rate is None else round(rate, 3),
        "points_after_warmup": len(after),
        "per_min_second_half": None if late is None else round(late, 3),
    }


def summarize(samples: list[dict]) -> dict[str, Any]:
    names = sorted({name for s in samples for name in s["rss_mib"]})
    rss = {name: growth(samples, lambda s, n=name: s["rss_mib"].get(n)) for name in names}
    rss["all processes"] = growth(samples, lambda s: round(sum(s["rss_mib"].values()), 1))
    database = {name: growth(samples, lambda s, n=name: s["db"][n]) for name in samples[0]["db"]}
    database["total_bytes"] = growth(samples, lambda s: sum(s["db"].values()))
    rows = {name: growth(samples, lambda s, n=name: s["rows"][n]) for name in samples[0]["rows"]}
    return {"rss_mib": rss, "db_bytes": database, "rows": rows}


def print_minute(sample: dict, header: bool) -> None:
    rss = sample["rss_mib"]
    rows = sample["rows"]
    if header:
        print(
            "\n min  serve  simcl  contnr  |  db+wal KiB  huey KiB | samples  swaps  loglines "
            " hooks(dlv/att)  audit  keyuse | broker ok/other  swaps  hooks  pushes"
        )
    containers = sum(v for k, v in rss.items() if k.startswith("container"))
    db, load = sample["db"], sample["load"]
    deliveries = f"{rows['webhook_deliveries']}/{rows['delivery_attempts']}"
    huey = db.get("huey_bytes", 0) + db.get("huey_wal_bytes", 0)
    print(
        f"{sample['minute']:4d} {rss.get('serve', 0):6.1f} {rss.get('simcluster', 0):6.1f} "
        f"{containers:7.1f}  | {(db['db_bytes'] + db.get('wal_bytes', 0)) / 1024:11.0f} "
        f"{huey / 1024:9.0f} | {rows['gpu_samples']:7d} {rows['swaps']:6d} "
        f"{rows['swap_log_lines']:9d} {deliveries:>14s} "
        f"{rows['audit_events']:6d} {rows['key_usage']:7d} | "
        f"{load['broker_ok']:8d}/{load['broker_other']:<6d} "
        f"{load['swaps']:5d} {load['webhooks']:6d} {load['pushes']:7d}",
        flush=True,
    )


def take_sample(minute: int, arbiter: SoakArbiter, tally: Tally) -> dict:
    return {
        "minute": minute,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rss_mib": process_tree_rss(arbiter.child.pid, arbiter.data_dir),
        "db": arbiter.database.size(),
        "rows": arbiter.database.rows(),
        "load": {
            "broker_ok": tally.broker_status[200],
            "broker_other": tally.broker_total() - tally.broker_status[200],
            "swaps": len(tally.swaps),
            "webhooks": len(tally.webhooks),
            "pushes": sum(tally.pushes.values()),
        },
        "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def _why(name: str, figures: dict) -> str:
    """The design reason next to a figure that grew after warm-up."""
    if not figures["per_min_after_warmup"]:
        return ""
    return f"  [{GROWS_BY_DESIGN.get(name, 'NOT EXPLAINED: look into it')}]"


def print_summary(results: dict) -> None:
    print(f"\n== soak: {MINUTES} min, growth per minute from minute {WARMUP_MINUTES} on ==")
    for name, g in results["growth"]["rss_mib"].items():
        print(
            f"RSS {name:38s} {g['start']} -> {g['at_warmup']} -> {g['end']} MiB, "
            f"{g['per_min_after_warmup']} MiB/min (2nd half {g['per_min_second_half']})"
        )
    for name, g in results["growth"]["db_bytes"].items():
        print(
            f"DB  {name:38s} {g['start']} -> {g['at_warmup']} -> {g['end']} bytes, "
            f"{g['per_min_after_warmup']} bytes/min (2nd half {g['per_min_second_half']})"
            f"{_why(name, g)}"
        )
    for name, g in results["growth"]["rows"].items():
        print(
            f"rows {name:37s} {g['start']} -> {g['at_warmup']} -> {g['end']}, "
            f"{g['per_min_after_warmup']} /min (2nd half {g['per_min_second_half']})"
            f"{_why(name, g)}"
        )
    print(json.dumps(results["load"], indent=1))
    print(f"retention: {json.dumps(results['retention'])}")
    print(f"(written to {ARTIFACT})")

"""`manage.py serve`: the whole embedded Arbiter in one process tree.

daphne (HTTP, WebSocket) and the engine loops share one asyncio loop, so the in-memory
channel layer reaches every browser; the huey consumer runs as threads of the same
process. Without ARBITER_CONFIG the simulated cluster is started as a child process.
Several serve processes may share one database (behind a proxy): each serves HTTP, and
exactly one of them — the leader — runs the engine loops (`arbiter.engine.leader`).
"""

import asyncio
import gc
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from arbiter.engine.leader import lead_when_possible, startup_serialized
from arbiter.inventory import InventoryError, apply_inventory, load_inventory
from catalog.loader import CatalogError, seed_catalog_file

SIMULATOR_READY_TIMEOUT = 30.0


class Command(BaseCommand):
    help = "Serve Arbiter (daphne + engine + huey worker); simulated cluster without a config."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("ARBITER_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("ARBITER_PORT", "8000")))
        parser.add_argument("--no-huey", action="store_true", help="Do not run the huey worker")
        parser.add_argument(
            "--proxy-headers",
            action="store_true",
            help="Take the client address from X-Forwarded-For (behind a reverse proxy), "
            "as daphne's own --proxy-headers does",
        )

    def handle(self, *args, **options):
        simulator = None
        config_path = settings.ARBITER_CONFIG
        if not config_path:
            simulator, config_path = start_simulator(settings.DATA_DIR / "sim")
            self.stdout.write(f"Simulated cluster running (inventory {config_path})")
        try:
            # Several serve processes may start together on one database.
            with startup_serialized():
                self.load_cluster(config_path)
                self.print_login(options["host"], options["port"])
            consumer = None if options["no_huey"] else start_huey_consumer()
            try:
                serve_forever(options["host"], options["port"], options["proxy_headers"])
            finally:
                if consumer is not None:
                    consumer.stop(graceful=True)
        finally:
            if simulator is not None:
                simulator.send_signal(signal.SIGTERM)
                simulator.wait(timeout=10)

    def load_cluster(self, config_path: str | Path) -> None:
        try:
            result = apply_inventory(load_inventory(config_path))
        except InventoryError as exc:
            raise CommandError(f"invalid cluster inventory:\n{exc}") from exc
        self.stdout.write(f"Inventory loaded from {config_path}: {result}")
        self.seed_catalog(config_path)

    def seed_catalog(self, config_path: str | Path) -> None:
        """Seed the catalog from ARBITER_CATALOG, or from the simulator's demo catalog."""
        path = settings.ARBITER_CATALOG
        if not path and not settings.ARBITER_CONFIG:
            demo = Path(config_path).with_name("catalog.yaml")  # written by the simulator
            path = str(demo) if demo.exists() else ""
        if not path:
            return
        try:
            result = seed_catalog_file(path)
        except CatalogError as exc:
            raise CommandError(f"invalid catalog:\n{exc}") from exc
        self.stdout.write(f"Catalog seeded from {path}: {result}")

    def print_login(self, host: str, port: int) -> None:
        url = f"http://{host}:{port}/"
        password = ensure_first_admin()
        self.stdout.write(self.style.SUCCESS(f"Arbiter is serving at {url}"))
        if password:
            self.stdout.write(
                "First start: created the admin user. Log in as 'admin' with password\n"
                f"    {password}\n(shown only this once; change it with "
                "`manage.py changepassword admin`)"
            )
        else:
            self.stdout.write(
                "Log in with an existing admin account (`manage.py changepassword NAME` "
                "resets a password)."
            )
        self.stdout.write("API keys for automation: `manage.py create_api_key NAME`.")
        sys.stdout.flush()


def ensure_first_admin() -> str | None:
    """Create the first superuser when there is none; return its one-time password."""
    user_model = get_user_model()
    if user_model.objects.filter(is_superuser=True).exists():
        return None
    password = secrets.token_urlsafe(12)
    user_model.objects.create_superuser("admin", "", password)
    return password


def start_simulator(data_dir: Path) -> tuple[subprocess.Popen, Path]:
    """Start `manage.py simcluster` and wait for the inventory it writes."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-u",
            str(Path(settings.BASE_DIR) / "manage.py"),
            "simcluster",
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    marker = "simulated cluster ready: "
    assert process.stdout is not None
    # A simulator that never says it is ready must not hang `make run`: kill it, which
    # ends the read loop below with a clear error.
    watchdog = threading.Timer(SIMULATOR_READY_TIMEOUT, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            sys.stdout.write(f"[simulator] {line}")
            if line.startswith(marker):
                # Keep echoing the simulator's output without blocking this process.
                _drain_in_background(process)
                return process, Path(line[len(marker) :].strip())
    finally:
        watchdog.cancel()
    raise CommandError(
        f"the simulated cluster exited with status {process.wait()} before it was ready "
        f"(it has {SIMULATOR_READY_TIMEOUT:g} s)"
    )


def _drain_in_background(process: subprocess.Popen) -> None:
    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(f"[simulator] {line}")

    threading.Thread(target=pump, daemon=True, name="simulator-output").start()


def start_huey_consumer():
    """Run the huey consumer as threads of this process (no signal handlers of its own)."""
    from django.utils.module_loading import autodiscover_modules
    from huey.consumer import Consumer
    from huey.contrib.djhuey import HUEY

    autodiscover_modules("tasks")  # register every app's huey tasks before consuming

    class EmbeddedConsumer(Consumer):
        def _set_signal_handlers(self) -> None:
            # daphne's reactor owns SIGINT/SIGTERM in this process.
            pass

    consumer = EmbeddedConsumer(HUEY, workers=2, worker_type="thread", periodic=True)
    consumer.start()
    return consumer


def serve_forever(host: str, port: int, proxy_headers: bool = False) -> None:
    """Run daphne; on daphne's own asyncio loop, run the engine loops whenever this
    process holds the engine leadership (exactly one process on a database does)."""
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server, twisted_loop
    from twisted.internet import reactor

    from arbiter.asgi import application
    from arbiter.loops import run_engine

    engine_task: list[asyncio.Task] = []

    def start_engine() -> None:
        engine_task.append(twisted_loop.create_task(lead_when_possible(run_engine)))

    def stop_engine() -> None:
        for task in engine_task:
            task.cancel()

    reactor.addSystemEventTrigger("before", "shutdown", stop_engine)
    server = Server(
        application=application,
        endpoints=build_endpoint_description_strings(host=host, port=port),
        ready_callable=lambda: reactor.callWhenRunning(start_engine),
        # The same headers daphne's command line trusts with --proxy-headers.
        proxy_forwarded_address_header="X-Forwarded-For" if proxy_headers else None,
        proxy_forwarded_port_header="X-Forwarded-Port" if proxy_headers else None,
        proxy_forwarded_proto_header="X-Forwarded-Proto" if proxy_headers else None,
        verbosity=0,
    )
    # Everything loaded so far (Django, the apps, Twisted: some 125,000 objects) lives as
    # long as the process. Without this, every full collection of the cyclic garbage
    # collector walks all of it, a pause of about 80 ms on the reference machine that
    # every request in flight waits out (the broker's worst latencies at concurrency 1);
    # frozen, a full collection walks only what was made since.
    gc.freeze()
    server.run()

"""`manage.py simcluster`: run the simulated cluster on its own until SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from arbiter.simulator.cluster import DEFAULT_HOSTS, SimulatedCluster, generated_hosts
from arbiter.simulator.host import HostSpec
from arbiter.simulator.scenarios import SCENARIOS


def cluster_hosts(count: int | None) -> list[HostSpec]:
    """The default hosts (or the first `count` of them), else `count` generated ones."""
    if count is None:
        return list(DEFAULT_HOSTS)
    if count <= len(DEFAULT_HOSTS):
        return DEFAULT_HOSTS[:count]
    return generated_hosts(count)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = (
        "Run the simulated GPU cluster (SSH servers on loopback) until interrupted. "
        "Containers keep running after it stops, as on real hosts."
    )
    requires_system_checks: list[str] = []  # never touches the database

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="Where keys, cluster.yaml and host state live (default: DATA_DIR/sim).",
        )
        parser.add_argument(
            "--startup-delay",
            type=float,
            default=2.0,
            help="Seconds a simulated model takes to become ready (default: 2).",
        )
        parser.add_argument(
            "--hosts",
            type=positive_int,
            default=None,
            metavar="N",
            help=(
                "Number of hosts (default: sim-a, sim-b, sim-gb10). N > 3 generates "
                "sim-001 ... with one GPU each, every 8th a GB10; they run no services."
            ),
        )
        parser.add_argument(
            "--scenario",
            choices=SCENARIOS,
            default="default",
            help=(
                "A ready-made cluster: spark-pair is two DGX Sparks whose vllm_node "
                "containers a script started with host networking (not Arbiter); "
                "spark-control-pair is the same two Sparks running one model across "
                "both (spark-1 the head, spark-2 a --headless worker)."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir = options["data_dir"] or Path(settings.DATA_DIR) / "sim"
        scenario = options["scenario"]
        if scenario != "default" and options["hosts"] is not None:
            raise CommandError("--hosts and --scenario cannot be combined")
        hosts = None if scenario != "default" else cluster_hosts(options["hosts"])
        asyncio.run(self.serve(Path(data_dir), options["startup_delay"], hosts, scenario))

    async def serve(
        self,
        data_dir: Path,
        startup_delay: float,
        hosts: list[HostSpec] | None = None,
        scenario: str | None = None,
    ) -> None:
        cluster = SimulatedCluster(
            data_dir, hosts=hosts, startup_delay=startup_delay, scenario=scenario
        )
        await cluster.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Launchers wait for this exact line before they read cluster.yaml.
        self.stdout.write(f"simulated cluster ready: {cluster.config_path}")
        self.stdout.write(f"control API: {cluster.control_url}")
        self.stdout.flush()
        try:
            await stop.wait()
        finally:
            await cluster.stop()
            self.stdout.write("simulated cluster stopped (containers left running)")
            self.stdout.flush()

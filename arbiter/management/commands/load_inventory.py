"""`manage.py load_inventory [PATH]`: validate the cluster file and load it into the database."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from arbiter.inventory import InventoryError, apply_inventory, load_inventory


class Command(BaseCommand):
    help = "Validate the cluster inventory YAML and load its hosts and services."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "path", nargs="?", help="Cluster file (default: the ARBITER_CONFIG setting)"
        )

    def handle(self, *args: Any, path: str | None = None, **options: Any) -> None:
        path = path or settings.ARBITER_CONFIG
        if not path:
            raise CommandError("No cluster file: pass PATH or set ARBITER_CONFIG.")
        try:
            inventory = load_inventory(path)
        except InventoryError as error:
            # Every problem, one per line, so the operator fixes the file in one pass.
            raise CommandError(str(error)) from error
        result = apply_inventory(inventory)
        simulated = " (simulated)" if inventory.simulated else ""
        self.stdout.write(f"Loaded {path}{simulated}: {result}")

"""`manage.py load_catalog [PATH]`: seed the catalog from a YAML file (existing models kept)."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog.loader import CatalogError, seed_catalog_file


class Command(BaseCommand):
    help = (
        "Validate a catalog YAML file and create the models the database does not have yet. "
        "Models already in the catalog are never overwritten."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "path", nargs="?", help="Catalog file (default: the ARBITER_CATALOG setting)"
        )

    def handle(self, *args: Any, path: str | None = None, **options: Any) -> None:
        path = path or settings.ARBITER_CATALOG
        if not path:
            raise CommandError("No catalog file: pass PATH or set ARBITER_CATALOG.")
        try:
            result = seed_catalog_file(path)
        except CatalogError as error:
            # Every problem, one per line, so the operator fixes the file in one pass.
            raise CommandError(str(error)) from error
        self.stdout.write(f"Loaded {path}: {result}")

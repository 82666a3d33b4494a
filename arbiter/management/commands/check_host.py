"""`manage.py check_host NAME [--model KEY]`: is this host ready for Arbiter?

Prints every precondition (SSH login, docker without sudo, NVIDIA runtime, nvidia-smi,
the hub CLI, the hub token through SSH, the hub cache, free disk, SSH sessions) with ✓
or ✗, what was found and the fix; exits 0 when all pass, 1 otherwise. See
`arbiter.engine.host_checks`.
"""

from __future__ import annotations

import sys

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from arbiter.engine import ssh
from arbiter.engine.host_checks import HostReport, check_host
from arbiter.errors import NotFound


async def _report(name: str, model: str | None) -> HostReport:
    try:
        return await check_host(name, model)
    finally:
        await ssh.get_pool().close()


class Command(BaseCommand):
    help = "Check that a host meets Arbiter's preconditions; exit 1 when one fails."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Host name from the inventory")
        parser.add_argument(
            "--model", help="Catalog model key: also check free disk for its weights"
        )

    def handle(self, *args, name: str, model: str | None, **options):
        try:
            report = async_to_sync(_report)(name, model)
        except NotFound as error:
            raise CommandError(error.message) from error
        self.stdout.write(f"Host {report.host}:")
        for check in report.checks:
            mark = self.style.SUCCESS("✓") if check.ok else self.style.ERROR("✗")
            self.stdout.write(f"{mark} {check.name}: {check.detail}")
            if check.fix and not check.ok:
                self.stdout.write(f"    fix: {check.fix}")
        failed = [check.name for check in report.checks if not check.ok]
        if failed:
            self.stdout.write(self.style.ERROR(f"{len(failed)} failed: {', '.join(failed)}"))
            sys.exit(1)
        self.stdout.write(self.style.SUCCESS("every check passed"))

"""`manage.py trust_host NAME`: show a host's SSH key and trust it only on confirmation."""

import asyncio

from django.core.management.base import BaseCommand, CommandError

from arbiter.engine.ssh import SshTarget, fetch_host_key
from arbiter.errors import SshError
from arbiter.models import Host


class Command(BaseCommand):
    help = "Fetch a host's SSH host key, show its fingerprint, and record it if you confirm."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Host name from the inventory")
        parser.add_argument(
            "--replace",
            action="store_true",
            help="Replace an already trusted key (after a host was reinstalled)",
        )
        parser.add_argument(
            "--yes", action="store_true", help="Do not ask; trust the key shown (scripts only)"
        )

    def handle(self, *args, name: str, replace: bool, yes: bool, **options):
        host = Host.objects.filter(name=name).first()
        if host is None:
            raise CommandError(f"no host named {name!r} in the inventory")
        target = SshTarget.from_host(host)
        try:
            key = asyncio.run(fetch_host_key(host.address, host.ssh_port))
        except SshError as exc:
            raise CommandError(str(exc)) from exc
        key_line = " ".join(key.export_public_key("openssh").decode().split()[:2])
        fingerprint = key.get_fingerprint()
        trusted = target.trusted_fingerprints()

        self.stdout.write(f"Host {name} at {host.address}:{host.ssh_port} presents:")
        self.stdout.write(f"  {key.get_algorithm()} {fingerprint}")
        if fingerprint in trusted:
            self.stdout.write("This key is already trusted; nothing to do.")
            return
        if trusted:
            self.stdout.write(
                self.style.WARNING(f"It differs from the trusted key: {', '.join(trusted)}")
            )
            if not replace:
                raise CommandError(
                    "the host key CHANGED; refusing. Verify the new fingerprint on the host "
                    "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and re-run with --replace."
                )
        if not yes and not self.confirm():
            raise CommandError("not trusted: the key was not recorded")
        host.trusted_host_keys = key_line if replace else _append(host.trusted_host_keys, key_line)
        host.save(update_fields=["trusted_host_keys"])
        self.stdout.write(self.style.SUCCESS(f"Trusted {fingerprint} for {name}."))

    def confirm(self) -> bool:
        self.stdout.write("Compare it with the host's own key. Trust it? [y/N] ", ending="")
        self.stdout.flush()
        try:
            answer = input()
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")


def _append(existing: str, line: str) -> str:
    return "\n".join([*filter(None, existing.splitlines()), line])

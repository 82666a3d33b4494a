"""`manage.py create_api_key NAME`: prints only the new key, once, on stdout."""

from django.core.management.base import BaseCommand

from arbiter.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for automation and print it once (it is stored hashed)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="What the key is for, e.g. 'nightly-eval cron'")

    def handle(self, *args, name: str, **options):
        key, raw_key = ApiKey.objects.create_key(name=name)
        # stdout carries only the key so scripts can capture it: KEY=$(manage.py ...)
        self.stdout.write(raw_key)
        self.stderr.write(
            f"Created API key {key.visible_prefix}… ({name}). It is shown only now; "
            "send it as `Authorization: Bearer <key>`."
        )

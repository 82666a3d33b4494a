"""`manage.py create_api_key NAME [--role R] [--models a,b] [--expires-in-days N]
[--requests-per-minute N] [--tokens-per-day N] [--priority interactive|default|batch]`.

Prints only the new key, once, on stdout. The same fields as `POST /api/keys`.
"""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from arbiter import audit
from arbiter.api.keys import (
    MAX_EXPIRES_IN_DAYS,
    MAX_REQUESTS_PER_MINUTE,
    MAX_TOKENS_PER_DAY,
    key_audit_values,
)
from arbiter.models import ApiKey

ROLES = [ApiKey.ROLE_INFERENCE, ApiKey.ROLE_OPERATOR, ApiKey.ROLE_ADMIN]


class Command(BaseCommand):
    help = "Create an API key for automation and print it once (it is stored hashed)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="What the key is for, e.g. 'nightly-eval cron'")
        parser.add_argument(
            "--role",
            choices=ROLES,
            default=ApiKey.ROLE_OPERATOR,
            help="inference: the broker /v1 and read-only status; operator: swaps, lock, "
            "catalog, schedules, downloads; admin: also inventory, webhooks (default: operator)",
        )
        parser.add_argument(
            "--models",
            default="",
            help="Inference keys only: comma-separated catalog keys or served names the key "
            "may use (default: all)",
        )
        parser.add_argument(
            "--expires-in-days",
            type=int,
            default=None,
            help=f"The key stops working after this many days (1..{MAX_EXPIRES_IN_DAYS})",
        )
        parser.add_argument(
            "--requests-per-minute",
            type=int,
            default=None,
            help="Broker quota: past this many requests in a minute the key gets 429 "
            "(default: no limit)",
        )
        parser.add_argument(
            "--tokens-per-day",
            type=int,
            default=None,
            help="Broker quota: once the key's tokens in a UTC day reach this, it gets 429 "
            "(default: no limit)",
        )
        parser.add_argument(
            "--priority",
            choices=list(ApiKey.PRIORITIES),
            default=ApiKey.PRIORITY_DEFAULT,
            help="The broker's priority class for the key's requests while they wait for a "
            "model (default: default)",
        )

    def handle(
        self,
        *args,
        name: str,
        role: str,
        models: str,
        expires_in_days,
        requests_per_minute,
        tokens_per_day,
        priority=ApiKey.PRIORITY_DEFAULT,
        **options,
    ):
        allowed = list(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
        if allowed and role != ApiKey.ROLE_INFERENCE:
            raise CommandError(f"--models: only an inference key is limited to models, not {role}")
        expires_at = None
        if expires_in_days is not None:
            if not 1 <= expires_in_days <= MAX_EXPIRES_IN_DAYS:
                raise CommandError(f"--expires-in-days: must be 1..{MAX_EXPIRES_IN_DAYS}")
            expires_at = timezone.now() + timedelta(days=expires_in_days)
        if requests_per_minute is not None and not (
            1 <= requests_per_minute <= MAX_REQUESTS_PER_MINUTE
        ):
            raise CommandError(f"--requests-per-minute: must be 1..{MAX_REQUESTS_PER_MINUTE}")
        if tokens_per_day is not None and not 1 <= tokens_per_day <= MAX_TOKENS_PER_DAY:
            raise CommandError(f"--tokens-per-day: must be 1..{MAX_TOKENS_PER_DAY}")
        with transaction.atomic():  # the key and its audit row commit together
            key, raw_key = ApiKey.objects.create_key(
                name=name,
                role=role,
                allowed_models=allowed,
                expires_at=expires_at,
                requests_per_minute=requests_per_minute,
                tokens_per_day=tokens_per_day,
                priority=priority,
            )
            audit.record(
                audit.command("create_api_key"),
                "key.create",
                "api_key",
                key.pk,
                after=key_audit_values(key),
            )
        # stdout carries only the key so scripts can capture it: KEY=$(manage.py ...)
        self.stdout.write(raw_key)
        limits = f"role {role}"
        if allowed:
            limits += f", models {', '.join(allowed)}"
        if expires_at is not None:
            limits += f", expires {expires_at.isoformat(timespec='seconds')}"
        if requests_per_minute is not None:
            limits += f", {requests_per_minute} requests per minute"
        if tokens_per_day is not None:
            limits += f", {tokens_per_day} tokens per day"
        limits += f", priority {priority}"
        self.stderr.write(
            f"Created API key {key.visible_prefix}… ({name}; {limits}). It is shown only now; "
            "send it as `Authorization: Bearer <key>`."
        )

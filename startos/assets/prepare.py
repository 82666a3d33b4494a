"""StartOS only: what the package sets up in Arbiter's database before Arbiter serves.

Run by the package's `prepare` oneshot (startos/startos/main.ts) after `migrate`, from
the source tree (cwd /app) with Arbiter's settings in the environment:

- the first admin user, with the password the package generated at install (shown by
  the "Admin credentials" action), unless a superuser exists already;
- the webhook endpoint of the Configure action: created, updated or removed so the
  database holds exactly what the form says. Endpoints added through the API are left
  alone; this one is recognised by its description.

Inputs (environment): STARTOS_ADMIN_USERNAME, STARTOS_ADMIN_PASSWORD,
STARTOS_WEBHOOK_URL and STARTOS_WEBHOOK_SECRET (empty URL: no webhook).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIGURED_WEBHOOK = "Configured in StartOS"


def ensure_admin(username: str, password: str) -> bool:
    """Create the admin unless any superuser exists; True when it was created."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    if not password or user_model.objects.filter(is_superuser=True).exists():
        return False
    user_model.objects.create_superuser(username, "", password)
    return True


def apply_webhook(url: str, secret: str) -> str:
    """Make the StartOS webhook endpoint match the form; return what was done."""
    from coordination import webhooks
    from coordination.models import WebhookEndpoint
    from coordination.webhooks.secrets_box import SecretUnreadable

    endpoint = WebhookEndpoint.objects.filter(description=CONFIGURED_WEBHOOK).first()
    if not url:
        if endpoint is None:
            return "none"
        endpoint.delete()
        return "removed"
    if endpoint is None:
        webhooks.create_endpoint(url, secret=secret or None, description=CONFIGURED_WEBHOOK)
        return "created"
    changed = []
    cleaned = webhooks.clean_url(url)
    if endpoint.url != cleaned:
        # A new receiver starts with a clean slate, even if the old one was disabled.
        endpoint.url, endpoint.enabled, endpoint.disabled_reason = cleaned, True, ""
        endpoint.save(update_fields=["url", "enabled", "disabled_reason"])
        changed.append("url")
    try:
        current = webhooks.signing_secrets(endpoint)[0]
    except SecretUnreadable:  # encrypted under an older SECRET_KEY
        current = None
    if secret and current != secret:
        # The receiver is configured with the new secret at the same time: no overlap.
        webhooks.rotate_secret(endpoint, new_secret=secret, previous_valid_hours=0)
        changed.append("secret")
    return "updated " + " and ".join(changed) if changed else "unchanged"


def main() -> int:
    sys.path.insert(0, str(Path.cwd()))  # the source tree; this file lives elsewhere
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.settings")
    import django

    django.setup()
    created = ensure_admin(
        os.environ.get("STARTOS_ADMIN_USERNAME", "admin"),
        os.environ.get("STARTOS_ADMIN_PASSWORD", ""),
    )
    print(f"admin user: {'created' if created else 'kept'}")
    from arbiter.errors import InvalidInput

    try:
        webhook = apply_webhook(
            os.environ.get("STARTOS_WEBHOOK_URL", "").strip(),
            os.environ.get("STARTOS_WEBHOOK_SECRET", "").strip(),
        )
    except InvalidInput as error:
        # A refused URL (e.g. a LAN address outside ARBITER_WEBHOOK_ALLOW_NETWORKS) must
        # not keep Arbiter from starting: say why and serve without the webhook.
        webhook = f"not applied: {error.message}"
    print(f"webhook: {webhook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Webhook secrets at rest: Fernet encryption, and the `whsec_<base64>` secret format.

The encryption key is `ARBITER_WEBHOOK_KEY` (a Fernet key; a comma-separated list rotates
keys: the first encrypts, every one decrypts). When it is empty the key is derived from
`SECRET_KEY` with HKDF/SHA-256 — changing `SECRET_KEY` then makes stored secrets
unreadable, and deliveries fail with a clear error until they are re-created.

Nothing here ever puts a secret (or a key) into an exception message or a log line.
"""

import base64
import binascii
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret
# Standard Webhooks: a secret is 24 to 64 random bytes; we generate 32.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
GENERATED_SECRET_BYTES = 32
_HKDF_SALT = b"arbiter webhook secrets v1"
_HKDF_INFO = b"fernet key for coordination.WebhookEndpoint secrets"


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with the configured key."""


def _derived_key(secret_key: str) -> bytes:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO).derive(
        secret_key.encode()
    )
    return base64.urlsafe_b64encode(raw)


def _box() -> MultiFernet:
    configured = [key.strip() for key in settings.ARBITER_WEBHOOK_KEY.split(",") if key.strip()]
    if not configured:
        return MultiFernet([Fernet(_derived_key(settings.SECRET_KEY))])
    boxes = []
    for position, key in enumerate(configured, start=1):
        try:
            boxes.append(Fernet(key))
        except (ValueError, binascii.Error):
            # Never echo the value: it is a key.
            raise ImproperlyConfigured(
                f"ARBITER_WEBHOOK_KEY: key {position} is not a Fernet key (32 url-safe "
                "base64-encoded bytes; make one with `Fernet.generate_key()`)"
            ) from None
    return MultiFernet(boxes)


def encrypt_secret(secret: str) -> str:
    """The ciphertext (a Fernet token, ASCII) to store for `secret`."""
    return _box().encrypt(secret.encode()).decode("ascii")


def decrypt_secret(token: str) -> str:
    """The plaintext secret of a stored token; `SecretUnreadable` if the key changed."""
    try:
        return _box().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError, ValueError):
        raise SecretUnreadable(
            "a stored webhook secret cannot be decrypted: was ARBITER_WEBHOOK_KEY or "
            "SECRET_KEY changed? Rotate or re-create the endpoint's secret"
        ) from None


def generate_secret() -> str:
    """A fresh `whsec_<base64 of 32 random bytes>` secret."""
    raw = secrets.token_bytes(GENERATED_SECRET_BYTES)
    return SECRET_PREFIX + base64.b64encode(raw).decode("ascii")


def secret_key_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret: its base64-decoded part (Standard Webhooks)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    # Receivers' libraries accept unpadded base64; so do we.
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


def secret_format_problem(secret: str) -> str | None:
    """Why `secret` is not a usable `whsec_` secret, or None. Never quotes the secret."""
    if not secret.startswith(SECRET_PREFIX):
        return f"must look like {SECRET_PREFIX}<base64>; leave it out to have one generated"
    try:
        key = secret_key_bytes(secret)
    except (binascii.Error, ValueError):
        return f"the part after {SECRET_PREFIX} must be standard base64"
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        return (
            f"the part after {SECRET_PREFIX} must decode to {MIN_SECRET_BYTES}-"
            f"{MAX_SECRET_BYTES} bytes, got {len(key)}"
        )
    return None

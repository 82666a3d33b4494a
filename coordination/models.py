"""Coordination state: the swap lock and its audit, webhooks (outbox and attempts), schedules."""

from django.conf import settings
from django.db import models
from django.utils import timezone

# --- Swap lock ------------------------------------------------------------------------


class SwapLock(models.Model):
    """One row per lock scope ("global" to start; a host name later). Never deleted.

    A free lock is a row with no holder, or whose `expires_at` has passed: only the
    server clock counts. `generation` is the fencing number: it grows on every grant and
    every force release, and a swap records the generation it was accepted under.
    """

    GLOBAL = "global"

    scope = models.CharField(max_length=63, unique=True, default=GLOBAL)
    holder = models.CharField(max_length=200, blank=True)
    purpose = models.CharField(max_length=500, blank=True)
    token_hash = models.CharField(max_length=64, blank=True)  # sha256 hex; never the token
    generation = models.BigIntegerField(default=0)
    acquired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Set by a force release with a lock-delay: nobody may acquire before this time.
    blocked_until = models.DateTimeField(null=True, blank=True)
    # The last release: how, by whom, when (kept until the next grant overwrites it).
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.CharField(max_length=200, blank=True)
    release_reason = models.CharField(max_length=500, blank=True)

    def __str__(self) -> str:
        return f"lock {self.scope} (generation {self.generation})"

    def is_held(self, now=None) -> bool:
        now = now or timezone.now()
        return bool(self.token_hash) and self.expires_at is not None and self.expires_at > now


class LockAudit(models.Model):
    """A force release by a person: who, when, why, whom it took the lock from."""

    scope = models.CharField(max_length=63)
    action = models.CharField(max_length=32, default="force_release")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=500, blank=True)
    old_holder = models.CharField(max_length=200, blank=True)
    old_purpose = models.CharField(max_length=500, blank=True)
    old_generation = models.BigIntegerField()
    new_generation = models.BigIntegerField()
    lock_delay_seconds = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.action} of {self.scope} by {self.actor_name} at {self.at:%Y-%m-%d %H:%M}"


# --- Webhooks ------------------------------------------------------------------------


class WebhookEndpoint(models.Model):
    """A receiver of signed events. Secrets are stored encrypted, never logged."""

    EVENT_TYPES = ("swap_complete", "swap_failed", "lock.force_released")

    url = models.URLField(max_length=1000)
    description = models.CharField(max_length=200, blank=True)
    # Empty list = every event type.
    events = models.JSONField(default=list, blank=True)
    # Encrypted secrets (`whsec_…` values); two while a secret rotates.
    secret_encrypted = models.TextField()
    previous_secret_encrypted = models.TextField(blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.url

    def wants(self, event_type: str) -> bool:
        return self.enabled and (not self.events or event_type in self.events)


class WebhookEvent(models.Model):
    """The outbox: an event written in the same transaction as the state it reports."""

    event_id = models.CharField(max_length=64, unique=True)  # the stable `webhook-id`
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class WebhookDelivery(models.Model):
    """One event for one endpoint: its retry state; each attempt is a DeliveryAttempt."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # retries exhausted or the endpoint was disabled
    STATUS_CHOICES = [(PENDING, PENDING), (DELIVERED, DELIVERED), (FAILED, FAILED)]

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Claimed by a worker until this time (a conditional UPDATE claims it).
    locked_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.event_id_display} → {self.endpoint_id} ({self.status})"

    @property
    def event_id_display(self) -> str:
        return self.event.event_id if self.event_id else "?"


class DeliveryAttempt(models.Model):
    """One HTTP attempt: time, status, latency, a response excerpt."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    response_excerpt = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["delivery", "at", "pk"]

    def __str__(self) -> str:
        return f"attempt {self.pk} of {self.delivery_id}: {self.status_code or self.error}"


# --- Schedules -----------------------------------------------------------------------


class ScheduledJob(models.Model):
    """A recurring job some scheduler runs, registered for display. Arbiter never runs it."""

    job_id = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    owner = models.CharField(max_length=200, blank=True)
    cron = models.CharField(max_length=200)
    timezone = models.CharField(max_length=64, default="UTC")
    target_model = models.ForeignKey(
        "catalog.CatalogModel", on_delete=models.CASCADE, related_name="scheduled_jobs"
    )
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["job_id"]

    def __str__(self) -> str:
        return f"{self.job_id} ({self.cron} {self.timezone})"

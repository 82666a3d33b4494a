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


# --- Leases ---------------------------------------------------------------------------


class LeaseQuerySet(models.QuerySet):
    def held(self, now=None) -> "LeaseQuerySet":
        """Leases nobody released whose TTL has not run out (only the server clock counts)."""
        return self.filter(released_at__isnull=True, expires_at__gt=now or timezone.now())


class Lease(models.Model):
    """A hold on one model on one host: nobody but its holder swaps it out, evicts it or
    unloads it while the lease is held (coordination.leases). A row, so it survives
    restarts; it ends by its holder's release, a staff force release or its TTL.
    """

    model_key = models.CharField(max_length=63)  # the catalog key
    host = models.ForeignKey("arbiter.Host", on_delete=models.CASCADE, related_name="leases")
    holder = models.CharField(max_length=200)
    purpose = models.CharField(max_length=500, blank=True)
    token_hash = models.CharField(max_length=64)  # sha256 hex; never the token
    # Arbiter's own lease (a warm-up's hold), not a person's or a job's.
    system = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    released_at = models.DateTimeField(null=True, blank=True)  # null while held
    released_by = models.CharField(max_length=200, blank=True)
    release_reason = models.CharField(max_length=500, blank=True)

    objects = LeaseQuerySet.as_manager()

    class Meta:
        ordering = ["expires_at", "pk"]

    def __str__(self) -> str:
        return f"lease {self.pk} of {self.model_key} on host {self.host_id} by {self.holder}"

    def is_held(self, now=None) -> bool:
        return self.released_at is None and self.expires_at > (now or timezone.now())


# --- Webhooks ------------------------------------------------------------------------


class WebhookEndpoint(models.Model):
    """A receiver of signed events. Secrets are stored encrypted, never logged."""

    EVENT_TYPES = (
        "swap_complete",
        "swap_failed",
        "lock.force_released",
        "lease.force_released",
        "warm_up_missed",
        "service_down",
        "service_recovered",
        "host_offline",
        "host_online",
        "restart_gave_up",
    )
    # "standard": Standard Webhooks JSON, signed; "chat": a plain message for a
    # Slack-compatible incoming webhook ({"text": ...}; Slack, Mattermost, Discord's /slack).
    FORMAT_STANDARD = "standard"
    FORMAT_CHAT = "chat"
    FORMAT_CHOICES = [(FORMAT_STANDARD, "Standard Webhooks"), (FORMAT_CHAT, "Chat message")]

    url = models.URLField(max_length=1000)
    description = models.CharField(max_length=200, blank=True)
    # Empty list = every event type.
    events = models.JSONField(default=list, blank=True)
    # Encrypted secrets (`whsec_…` values); two while a secret rotates.
    secret_encrypted = models.TextField()
    previous_secret_encrypted = models.TextField(blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    format = models.CharField(max_length=8, choices=FORMAT_CHOICES, default=FORMAT_STANDARD)
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
    # The optional warm-up (coordination.schedules.warm_ups): the target model is swapped
    # in on this host `warm_up_lead_seconds` before each run and held by a system lease
    # for `warm_up_hold_seconds` after it. No host: no warm-up.
    warm_up_host = models.ForeignKey(
        "arbiter.Host", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    warm_up_lead_seconds = models.PositiveIntegerField(default=0)
    warm_up_hold_seconds = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["job_id"]

    def __str__(self) -> str:
        return f"{self.job_id} ({self.cron} {self.timezone})"

    @property
    def has_warm_up(self) -> bool:
        return self.warm_up_host_id is not None


class WarmUp(models.Model):
    """One warm-up for one run of a job; the row is the claim (unique per job and run)."""

    PLANNED = "planned"  # claimed; the swap is not created yet
    SWAPPING = "swapping"  # the swap of the job's model runs
    HELD = "held"  # the model is served and a system lease holds it until the window ends
    DONE = "done"  # the window ended; the lease was released (or expires by its TTL)
    MISSED = "missed"  # the lock, a lease, a busy host or a failed swap prevented it
    STATE_CHOICES = [(s, s) for s in (PLANNED, SWAPPING, HELD, DONE, MISSED)]
    OPEN_STATES = (PLANNED, SWAPPING, HELD)

    job = models.ForeignKey(ScheduledJob, on_delete=models.CASCADE, related_name="warm_ups")
    run_at = models.DateTimeField()
    host_name = models.CharField(max_length=63)
    model_key = models.CharField(max_length=63)
    state = models.CharField(max_length=16, choices=STATE_CHOICES, default=PLANNED)
    reason = models.CharField(max_length=500, blank=True)
    swap_id = models.BigIntegerField(null=True, blank=True)
    lease_id = models.BigIntegerField(null=True, blank=True)
    hold_until = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["job", "run_at"], name="one_warm_up_per_job_run")
        ]

    def __str__(self) -> str:
        return f"warm-up of {self.model_key} on {self.host_name} for {self.run_at:%Y-%m-%d %H:%M}"

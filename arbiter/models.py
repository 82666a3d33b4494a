"""The cluster as Arbiter knows it: hosts, services, samples, and API keys."""

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


class Host(models.Model):
    """A GPU host, loaded from the cluster inventory."""

    SAMPLING_SSH = "ssh"
    SAMPLING_NVML = "nvml"
    SAMPLING_CHOICES = [(SAMPLING_SSH, "SSH (remote)"), (SAMPLING_NVML, "NVML (this machine)")]

    name = models.SlugField(max_length=63, unique=True)
    address = models.CharField(max_length=255)
    ssh_user = models.CharField(max_length=64, default="arbiter")
    ssh_port = models.PositiveIntegerField(default=22)
    ssh_key = models.CharField(max_length=1024, blank=True, help_text="Private key path")
    known_hosts = models.CharField(
        max_length=1024, blank=True, help_text="Extra OpenSSH known_hosts file to trust"
    )
    # OpenSSH public key lines recorded by `manage.py trust_host` after confirmation.
    trusted_host_keys = models.TextField(blank=True)
    sampling = models.CharField(max_length=8, choices=SAMPLING_CHOICES, default=SAMPLING_SSH)
    vram_budget_mib = models.PositiveIntegerField(null=True, blank=True)
    vram_margin_mib = models.PositiveIntegerField(default=0)
    simulated = models.BooleanField(default=False)
    # Present in the current inventory file; hosts dropped from it are kept for history.
    in_inventory = models.BooleanField(default=True)
    # Fields edited in Arbiter, each with the file's value: a reload keeps the edit.
    inventory_overrides = models.JSONField(default=dict, blank=True)

    # Live state written by the sampler.
    last_sample_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    missed_samples = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    mem_total_mib = models.PositiveIntegerField(null=True, blank=True)
    mem_available_mib = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def state(self) -> str:
        """live / stale / offline / unknown, from consecutive missed samples."""
        if self.last_sample_at is None and self.missed_samples == 0:
            return "unknown"
        if self.missed_samples >= settings.ARBITER_OFFLINE_AFTER_MISSES:
            return "offline"
        if self.missed_samples >= settings.ARBITER_STALE_AFTER_MISSES:
            return "stale"
        if self.last_sample_at is None:
            return "unknown"
        return "live"


class Service(models.Model):
    """An inference backend (vLLM or generic HTTP) served from a host."""

    KIND_VLLM = "vllm"
    KIND_HTTP = "http"
    KIND_CHOICES = [(KIND_VLLM, "vLLM"), (KIND_HTTP, "Generic HTTP")]
    CAPABILITIES = ("llm", "tts", "stt", "image", "embeddings", "audio")

    name = models.SlugField(max_length=63, unique=True)
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="services")
    kind = models.CharField(max_length=8, choices=KIND_CHOICES, default=KIND_VLLM)
    base_url = models.URLField(max_length=512)
    health_path = models.CharField(max_length=255, default="/health")
    capabilities = models.JSONField(default=list)
    request_paths = models.JSONField(default=list)
    vram_resident_mib = models.PositiveIntegerField(default=0)
    can_coexist_with = models.JSONField(default=list)
    load_route = models.CharField(max_length=255, blank=True)
    unload_route = models.CharField(max_length=255, blank=True)
    disabled = models.BooleanField(default=False)
    in_inventory = models.BooleanField(default=True)
    # Fields edited in Arbiter, each with the file's value: a reload keeps the edit.
    inventory_overrides = models.JSONField(default=dict, blank=True)

    # Live state written by the health prober.
    health = models.CharField(max_length=8, default="unknown")  # up / down / unknown
    health_since = models.DateTimeField(null=True, blank=True)
    last_probe_at = models.DateTimeField(null=True, blank=True)
    last_latency_ms = models.FloatField(null=True, blank=True)
    loaded_model = models.CharField(max_length=255, blank=True)
    # Set while the broker has unloaded the service (its unload_route) and not reloaded it.
    unloaded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class GpuSample(models.Model):
    """One reading of one GPU at one tick. Nullable fields are what the GPU did not report."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="gpu_samples")
    taken_at = models.DateTimeField(default=timezone.now, db_index=True)
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=64, blank=True)
    name = models.CharField(max_length=128, blank=True)
    utilization_pct = models.FloatField(null=True)
    memory_used_mib = models.FloatField(null=True)
    memory_total_mib = models.FloatField(null=True)
    temperature_c = models.FloatField(null=True)
    power_w = models.FloatField(null=True)
    # GB10-style GPUs report no memory of their own ([N/A]): for them the memory
    # figures are host memory from /proc/meminfo (MemTotal - MemAvailable).
    unified_memory = models.BooleanField(default=False)

    class Meta:
        ordering = ["host", "index", "-taken_at"]
        indexes = [models.Index(fields=["host", "index", "-taken_at"])]

    def __str__(self) -> str:
        return f"{self.host_id}/gpu{self.index} @ {self.taken_at:%H:%M:%S}"


API_KEY_PREFIX = "arb_"


def _hash_key(raw_key: str) -> str:
    # Keys are 256-bit random strings, so a plain SHA-256 is enough (no stretching
    # needed) and lets every request be checked in constant time by one lookup.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def create_key(self, name: str, user=None) -> tuple["ApiKey", str]:
        """Create a key; the raw key is returned here once and never stored."""
        prefix = secrets.token_hex(4)
        raw_key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        key = self.create(name=name, prefix=prefix, key_hash=_hash_key(raw_key), user=user)
        return key, raw_key

    def verify(self, raw_key: str) -> "ApiKey | None":
        if not raw_key.startswith(API_KEY_PREFIX):
            return None
        prefix = raw_key[len(API_KEY_PREFIX) :].split("_", 1)[0]
        candidate = self.filter(prefix=prefix, revoked_at__isnull=True).first()
        if candidate is None or not secrets.compare_digest(candidate.key_hash, _hash_key(raw_key)):
            return None
        return candidate


class ApiKey(models.Model):
    """A credential for automation, sent as `Authorization: Bearer arb_<prefix>_<secret>`."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} ({API_KEY_PREFIX}{self.prefix}_…)"

    @property
    def visible_prefix(self) -> str:
        return f"{API_KEY_PREFIX}{self.prefix}_"


class Swap(models.Model):
    """One request to serve a catalog model on a host, and everything that happened to it."""

    PENDING = "pending"
    PREFLIGHT = "preflight"
    STOPPING = "stopping"
    LAUNCHING = "launching"
    WAITING_HEALTHY = "waiting_healthy"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # The order a successful swap goes through; failed / cancelled can follow any of them.
    PHASES = (PENDING, PREFLIGHT, STOPPING, LAUNCHING, WAITING_HEALTHY, COMPLETE)
    ACTIVE_STATES = (PENDING, PREFLIGHT, STOPPING, LAUNCHING, WAITING_HEALTHY)
    FINAL_STATES = (COMPLETE, FAILED, CANCELLED)
    STATE_CHOICES = [(s, s) for s in (*PHASES, FAILED, CANCELLED)]

    model = models.ForeignKey(
        "catalog.CatalogModel", null=True, on_delete=models.SET_NULL, related_name="swaps"
    )
    model_key = models.CharField(max_length=63, help_text="The catalog key, kept for history")
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="swaps")
    service = models.ForeignKey(
        Service, null=True, blank=True, on_delete=models.SET_NULL, related_name="swaps"
    )
    state = models.CharField(max_length=16, choices=STATE_CHOICES, default=PENDING)
    dry_run = models.BooleanField(default=False)
    cancel_requested = models.BooleanField(default=False)
    requested_by = models.CharField(max_length=150, blank=True)
    # The swap lock's fencing generation the request was accepted under (coordination).
    lock_generation = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    launch_argv = models.JSONField(default=list, blank=True)
    checks = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The engine that runs the swap touches this; a stale heartbeat means nobody does.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One swap at a time per host, enforced by the database itself.
            models.UniqueConstraint(
                fields=["host"],
                condition=models.Q(
                    state__in=["pending", "preflight", "stopping", "launching", "waiting_healthy"]
                ),
                name="one_active_swap_per_host",
            )
        ]

    def __str__(self) -> str:
        return f"swap {self.pk} {self.model_key} on {self.host_id} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES


class SwapTransition(models.Model):
    """A state a swap entered, and when."""

    swap = models.ForeignKey(Swap, on_delete=models.CASCADE, related_name="transitions")
    state = models.CharField(max_length=16, choices=Swap.STATE_CHOICES)
    at = models.DateTimeField(default=timezone.now)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["swap", "at", "pk"]

    def __str__(self) -> str:
        return f"{self.swap_id} → {self.state}"


class SwapLogLine(models.Model):
    """One line of a swap's log: the container's output or Arbiter's own narration."""

    STREAM_CHOICES = [("stdout", "stdout"), ("stderr", "stderr"), ("arbiter", "arbiter")]

    swap = models.ForeignKey(Swap, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.PositiveIntegerField()
    at = models.DateTimeField(default=timezone.now)
    stream = models.CharField(max_length=8, choices=STREAM_CHOICES, default="stdout")
    text = models.TextField()

    class Meta:
        ordering = ["swap", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["swap", "seq"], name="swap_log_line_seq_unique")
        ]

    def __str__(self) -> str:
        return f"{self.swap_id}#{self.seq}"

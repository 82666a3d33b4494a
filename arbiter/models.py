"""The cluster as Arbiter knows it: hosts, services, samples, and API keys."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median
from typing import Any, TypedDict

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from arbiter.errors import NotFound


class HostQuerySet(models.QuerySet):
    def in_inventory(self) -> "HostQuerySet":
        return self.filter(in_inventory=True)

    def by_name(self, name: str, *, field: str = "host") -> "Host":
        """The inventory's host of that name, or NotFound (404) naming `field`."""
        host = self.in_inventory().filter(name=name).first()
        if host is None:
            raise NotFound(f"no host named {name!r} in the inventory", field=field)
        return host


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
    # nvidia-smi's own message while SSH works but the driver does not (NVML mismatch,
    # no devices): a driver problem, not a stale or offline host.
    driver_error = models.TextField(blank=True)
    # The hub cache on the host, the folder holding `models--org--name` ("": the setting
    # ARBITER_HF_CACHE_DIR, else the SSH user's ~/.cache/huggingface/hub; engine.host_paths)
    # and that user's home directory as the host reported it (docker needs absolute paths).
    hf_cache_dir = models.CharField(max_length=1024, blank=True)
    home_dir = models.CharField(max_length=1024, blank=True)
    # Concurrent SSH channels per connection, below OpenSSH's MaxSessions (default 10).
    max_ssh_sessions = models.PositiveSmallIntegerField(default=8)
    # The interconnect a multi-node launch talks over (the QSFP link between two Sparks):
    # this host's address on it (VLLM_HOST_IP, the head's --master-addr) and its network
    # interface (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME, UCX_NET_DEVICES). Blank: the host
    # cannot take part in a multi-node model.
    cluster_address = models.CharField(max_length=255, blank=True)
    cluster_interface = models.CharField(max_length=64, blank=True)
    # GPU memory a container Arbiter stopped still holds after the memory wait's timeout:
    # {"since", "container", "detail", "processes": [{"pid", "process_name", "used_mib",
    # "gpu_uuid"}]} from `nvidia-smi --query-compute-apps`; null once it came back.
    memory_not_returned = models.JSONField(null=True, blank=True)
    # Containers labelled as Arbiter's that no service or swap accounts for (left by a
    # crash or started by hand), as the last orphan scan found them, and when it ran.
    orphan_containers = models.JSONField(default=list, blank=True)
    orphans_checked_at = models.DateTimeField(null=True, blank=True)

    objects = HostQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def state(self) -> str:
        """live / stale / offline / unknown from consecutive missed samples; driver_error
        while SSH answers but nvidia-smi fails (its message in `driver_error`)."""
        if self.last_sample_at is None and self.missed_samples == 0:
            return "unknown"
        if self.missed_samples >= settings.ARBITER_OFFLINE_AFTER_MISSES:
            return "offline"
        if self.missed_samples >= settings.ARBITER_STALE_AFTER_MISSES:
            return "stale"
        if self.last_sample_at is None:
            return "unknown"
        if self.driver_error:
            return "driver_error"
        return "live"


class ServiceQuerySet(models.QuerySet):
    def in_inventory(self) -> "ServiceQuerySet":
        return self.filter(in_inventory=True)

    def vllm_on(self, host: Host) -> "Service | None":
        """The service a swap replaces on a host: its (first) enabled vLLM service."""
        return (
            self.in_inventory()
            .filter(host=host, kind=Service.KIND_VLLM, disabled=False)
            .order_by("name")
            .first()
        )


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
    # How the routes are called: vLLM's /sleep and /wake_up take a bare POST; Ollama
    # unloads with POST /api/generate {"model": ..., "keep_alive": 0}.
    load_method = models.CharField(max_length=8, default="POST")
    load_body = models.JSONField(null=True, blank=True)
    unload_method = models.CharField(max_length=8, default="POST")
    unload_body = models.JSONField(null=True, blank=True)
    # Containers Arbiter did not start but may stop for this service (scripts' vllm_node).
    adopt_containers = models.JSONField(default=list, blank=True)
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
    # Set when the restart policy gave up on the model the service ran (why, and when);
    # cleared by the next swap that completes on the service.
    failed_reason = models.TextField(blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    objects = ServiceQuerySet.as_manager()

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
    def create_key(
        self,
        name: str,
        user=None,
        *,
        role: str = "operator",
        allowed_models: list[str] | None = None,
        expires_at: "datetime | None" = None,
        requests_per_minute: int | None = None,
        tokens_per_day: int | None = None,
        priority: str = "default",
    ) -> tuple["ApiKey", str]:
        """Create a key; the raw key is returned here once and never stored."""
        prefix = secrets.token_hex(4)
        raw_key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        key = self.create(
            name=name,
            prefix=prefix,
            key_hash=_hash_key(raw_key),
            user=user,
            role=role,
            allowed_models=list(allowed_models or []),
            expires_at=expires_at,
            requests_per_minute=requests_per_minute,
            tokens_per_day=tokens_per_day,
            priority=priority,
        )
        return key, raw_key

    def verify(self, raw_key: str) -> "ApiKey | None":
        if not raw_key.startswith(API_KEY_PREFIX):
            return None
        prefix = raw_key[len(API_KEY_PREFIX) :].split("_", 1)[0]
        candidate = self.filter(prefix=prefix, revoked_at__isnull=True).first()
        if candidate is None or not secrets.compare_digest(candidate.key_hash, _hash_key(raw_key)):
            return None
        if candidate.is_expired():
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
    # What the key may do (arbiter.roles): inference (the broker and read-only status),
    # operator (swaps, lock, catalog, schedules, downloads), admin (inventory, keys,
    # webhooks, force release).
    ROLE_INFERENCE = "inference"
    ROLE_OPERATOR = "operator"
    ROLE_ADMIN = "admin"
    ROLE_CHOICES = [(r, r) for r in (ROLE_INFERENCE, ROLE_OPERATOR, ROLE_ADMIN)]
    role = models.CharField(max_length=16, choices=ROLE_CHOICES, default=ROLE_OPERATOR)
    # The models (catalog keys or served names) an inference key may use; [] = all.
    allowed_models = models.JSONField(default=list, blank=True)
    # After this the key no longer authenticates (null: never expires).
    expires_at = models.DateTimeField(null=True, blank=True)
    # Quotas for what the key sends through the broker (null: no limit). Past either,
    # the broker answers 429 naming the limit; counted in KeyUsage, shared by every
    # broker process.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    # The broker's priority class for this key's requests while they wait for a model
    # (docs/BROKER.md "Priorities and fair share"); a request may lower it, never raise it.
    PRIORITY_INTERACTIVE = "interactive"
    PRIORITY_DEFAULT = "default"
    PRIORITY_BATCH = "batch"
    PRIORITIES = (PRIORITY_INTERACTIVE, PRIORITY_DEFAULT, PRIORITY_BATCH)  # best first
    PRIORITY_CHOICES = [(p, p) for p in PRIORITIES]
    priority = models.CharField(max_length=16, choices=PRIORITY_CHOICES, default=PRIORITY_DEFAULT)

    objects = ApiKeyQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} ({API_KEY_PREFIX}{self.prefix}_…)"

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    # `last_used_at` is written at most once a minute per key: a write per API call would
    # grow the database's write load with traffic, for a value shown to the minute.
    LAST_USED_EVERY = timedelta(seconds=60)

    def touch(self, now: datetime | None = None) -> bool:
        """Record a use unless one was recorded within LAST_USED_EVERY; True if written."""
        now = now or timezone.now()
        if self.last_used_at is not None and now - self.last_used_at < self.LAST_USED_EVERY:
            return False
        ApiKey.objects.filter(pk=self.pk).update(last_used_at=now)
        self.last_used_at = now
        return True

    @property
    def visible_prefix(self) -> str:
        return f"{API_KEY_PREFIX}{self.prefix}_"


class SwapQuerySet(models.QuerySet):
    def in_flight(self) -> "SwapQuerySet":
        """Swaps not yet ended (at most one per host)."""
        return self.filter(state__in=Swap.ACTIVE_STATES)

    def finished(self) -> "SwapQuerySet":
        return self.filter(state__in=Swap.FINAL_STATES)

    def on_host(self, name: str) -> "SwapQuerySet":
        """Swaps serving on the named host (a multi-node swap: its head)."""
        return self.filter(host__name=name)

    def newest_first(self) -> "SwapQuerySet":
        return self.order_by("-created_at", "-pk")

    def for_display(self) -> "SwapQuerySet":
        """With what `Swap.as_dict` reads: host, service, hosts and transitions."""
        return self.select_related("host", "service").prefetch_related(
            models.Prefetch("swap_hosts", queryset=SwapHost.objects.select_related("host")),
            "transitions",
        )

    def by_id(self, swap_id: int) -> "Swap":
        """The swap, or NotFound (404) naming `swap_id`."""
        swap = self.filter(pk=swap_id).first()
        if swap is None:
            raise NotFound(f"no swap with id {swap_id}", field="swap_id")
        return swap

    def launch_history(self, swap: "Swap") -> list[dict[str, Any]]:
        """Phase durations of the latest complete swaps of the swap's model on its host."""
        return list(
            self.filter(
                model_key=swap.model_key, host_id=swap.host_id, state=Swap.COMPLETE, dry_run=False
            )
            .exclude(pk=swap.pk)
            .order_by("-finished_at", "-pk")
            .values_list("phase_durations", flat=True)[: Swap.ETA_HISTORY]
        )


@dataclass(frozen=True)
class LaunchProgress:
    """Where a swap's launch is: its phase, for how long, and the time left."""

    phase: str | None
    phase_label: str
    phase_elapsed_seconds: float | None
    eta_seconds: float | None
    phase_durations: dict[str, float]


class SwapDict(TypedDict):
    """A swap as the API lists it and the dashboard shows it (`Swap.as_dict`)."""

    id: int
    model: str
    host: str  # the host it serves on (a multi-node model's head)
    hosts: list[str]  # every host the swap works on, the head first
    service: str | None
    state: str
    # "swap", or "restart" (the restart policy), and when a restart's backoff ends.
    kind: str
    not_before: datetime | None
    final: bool
    dry_run: bool
    requested_by: str
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_seconds: float
    progress: float
    phase: str | None
    phase_label: str
    phase_elapsed_seconds: float | None
    eta_seconds: float | None
    phase_durations: dict[str, float]
    url: str


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
    # A swap asked for by someone, or a restart of a model that crashed after it was
    # ready (the catalog model's restart policy; arbiter.engine.supervisor).
    KIND_SWAP = "swap"
    KIND_RESTART = "restart"
    KIND_CHOICES = [(KIND_SWAP, "swap"), (KIND_RESTART, "restart")]
    STATE_CHOICES = [(s, s) for s in (*PHASES, FAILED, CANCELLED)]
    # The launch runs up to three phases, each with its own budget: the image pull (only
    # when the image is not on the host), the weights (only for a hub model not yet in
    # the host's hub cache), and the load (container start until the served model answers).
    PULL = "pull"
    WEIGHTS = "weights"
    LOAD = "load"
    LAUNCH_PHASES = (PULL, WEIGHTS, LOAD)
    PHASE_LABELS = {PULL: "pulling the image", WEIGHTS: "downloading the weights", LOAD: "loading"}
    # The ETA takes the median over this many of the latest complete swaps of the same
    # model on the same host; older ones describe an image or a host that may have changed.
    ETA_HISTORY = 5

    model = models.ForeignKey(
        "catalog.CatalogModel", null=True, on_delete=models.SET_NULL, related_name="swaps"
    )
    model_key = models.CharField(max_length=63, help_text="The catalog key, kept for history")
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="swaps")
    service = models.ForeignKey(
        Service, null=True, blank=True, on_delete=models.SET_NULL, related_name="swaps"
    )
    state = models.CharField(max_length=16, choices=STATE_CHOICES, default=PENDING)
    kind = models.CharField(max_length=8, choices=KIND_CHOICES, default=KIND_SWAP)
    # A restart waits out its backoff: the dispatcher does not claim it before this time.
    not_before = models.DateTimeField(null=True, blank=True)
    dry_run = models.BooleanField(default=False)
    cancel_requested = models.BooleanField(default=False)
    requested_by = models.CharField(max_length=150, blank=True)
    # The swap lock's fencing generation the request was accepted under (coordination).
    lock_generation = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    launch_argv = models.JSONField(default=list, blank=True)
    # The launch phase now (pull / weights / load, "" outside the launch), since when,
    # and how long each phase took (the ETA of later swaps of the same model and host).
    phase = models.CharField(max_length=16, blank=True)
    phase_started_at = models.DateTimeField(null=True, blank=True)
    phase_durations = models.JSONField(default=dict, blank=True)
    checks = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The engine that runs the swap touches this; a stale heartbeat means nobody does.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    objects = SwapQuerySet.as_manager()

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

    @property
    def is_final(self) -> bool:
        return self.state in self.FINAL_STATES

    def elapsed_seconds(self, now: datetime | None = None) -> float:
        """Seconds from the request to the end (or now): it counts from the request, not
        the engine's claim, so it never jumps back when the engine picks the swap up."""
        end = self.finished_at or now or timezone.now()
        return round(max(0.0, (end - self.created_at).total_seconds()), 3)

    def host_names(self) -> list[str]:
        """The hosts the swap works on, the head first (its head alone before SwapHost rows)."""
        return [row.host.name for row in self.swap_hosts.all()] or [self.host.name]

    @property
    def reached_phase(self) -> str:
        """The furthest state of the successful path (PHASES) its transitions reached."""
        reached = [t.state for t in self.transitions.all() if t.state in self.PHASES]
        return reached[-1] if reached else self.PENDING

    @property
    def progress(self) -> float:
        """0..1 through the successful path's phases."""
        if self.state == self.COMPLETE:
            return 1.0
        return round(self.PHASES.index(self.reached_phase) / (len(self.PHASES) - 1), 3)

    def eta_seconds(self, now: datetime | None = None) -> float | None:
        """Seconds the launch will still take, from earlier swaps of this model on this host.

        The current phase's median duration minus the time spent in it (never below zero),
        plus the median of each later phase. A phase that an earlier swap skipped (its
        image was there already) gives no sample; None when any phase needed has none:
        "no estimate yet". Later phases are taken to run (a load always does; a pull
        happens before the weights, so when the weights are needed is not yet known and
        the estimate counts them only if earlier swaps of this model downloaded them).
        """
        if self.phase not in self.LAUNCH_PHASES or not self.is_active:
            return None
        samples: dict[str, list[float]] = {phase: [] for phase in self.LAUNCH_PHASES}
        for durations in Swap.objects.launch_history(self):
            for phase, seconds in (durations or {}).items():
                if phase in samples and isinstance(seconds, int | float):
                    samples[phase].append(float(seconds))
        if not samples[self.phase] or not samples[self.LOAD]:
            return None
        now = now or timezone.now()
        spent = (now - self.phase_started_at).total_seconds() if self.phase_started_at else 0.0
        remaining = max(0.0, median(samples[self.phase]) - spent)
        current = self.LAUNCH_PHASES.index(self.phase)
        for phase in self.LAUNCH_PHASES[current + 1 :]:
            if samples[phase]:
                remaining += median(samples[phase])
        return round(remaining, 1)

    def launch_progress(self, now: datetime | None = None) -> LaunchProgress:
        """The launch phase, the time in it, the ETA and each finished phase's duration."""
        now = now or timezone.now()
        phase = self.phase or None
        in_phase = None
        if phase and self.phase_started_at is not None:
            end = now if self.is_active else (self.finished_at or now)
            in_phase = round(max(0.0, (end - self.phase_started_at).total_seconds()), 3)
        durations = {
            phase: float(seconds)
            for phase, seconds in (self.phase_durations or {}).items()
            if isinstance(seconds, int | float)
        }
        return LaunchProgress(
            phase=phase,
            phase_label=self.PHASE_LABELS.get(phase or "", ""),
            phase_elapsed_seconds=in_phase,
            eta_seconds=self.eta_seconds(now),
            phase_durations=durations,
        )

    @property
    def url(self) -> str:
        return reverse("api:swap_detail", kwargs={"swap_id": self.pk})

    @property
    def stream_url(self) -> str:
        return reverse("api:swap_stream", kwargs={"swap_id": self.pk})

    @property
    def log_url(self) -> str:
        return reverse("api:swap_log", kwargs={"swap_id": self.pk})

    def as_dict(self, now: datetime | None = None) -> SwapDict:
        """The one shape of a swap, for the API and the dashboard (see `for_display`)."""
        now = now or timezone.now()
        launch = self.launch_progress(now)
        return SwapDict(
            id=self.pk,
            model=self.model_key,
            host=self.host.name,
            hosts=self.host_names(),
            service=self.service.name if self.service else None,
            state=self.state,
            kind=self.kind,
            not_before=self.not_before,
            final=self.is_final,
            dry_run=self.dry_run,
            requested_by=self.requested_by,
            error=self.error,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            elapsed_seconds=self.elapsed_seconds(now),
            progress=self.progress,
            phase=launch.phase,
            phase_label=launch.phase_label,
            phase_elapsed_seconds=launch.phase_elapsed_seconds,
            eta_seconds=launch.eta_seconds,
            phase_durations=launch.phase_durations,
            url=self.url,
        )

    def as_detail_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """`as_dict` with what one swap's page adds: transitions, checks, argv, log size."""
        return {
            **self.as_dict(now),
            "cancel_requested": self.cancel_requested,
            "lock_generation": self.lock_generation,
            "heartbeat_at": self.heartbeat_at,
            "checks": self.checks or [],
            "argv": [str(item) for item in self.launch_argv or []],
            "transitions": [
                {"state": t.state, "at": t.at, "detail": t.detail} for t in self.transitions.all()
            ],
            "log_lines": self.log_lines.count(),
            "stream_url": self.stream_url,
            "log_url": self.log_url,
        }


class SwapHost(models.Model):
    """A host a swap works on: the head (node rank 0) and, for a multi-node model, workers.

    While the swap is active its rows are `active`, and the database allows one active row
    per host: no two swaps can touch the same host at once, whichever host they name.
    """

    swap = models.ForeignKey(Swap, on_delete=models.CASCADE, related_name="swap_hosts")
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="swap_hosts")
    node_rank = models.PositiveSmallIntegerField(default=0)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["swap", "node_rank"]
        constraints = [
            models.UniqueConstraint(
                fields=["host"],
                condition=models.Q(active=True),
                name="one_active_swap_per_host_node",
            ),
            models.UniqueConstraint(fields=["swap", "host"], name="swap_host_once"),
        ]

    def __str__(self) -> str:
        return f"swap {self.swap_id} on {self.host_id} (rank {self.node_rank})"


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
    # The host whose container printed the line, in a multi-node swap ("" otherwise):
    # a re-attach counts each node's lines apart (see arbiter.engine.swaps.journal).
    node = models.CharField(max_length=63, blank=True)

    class Meta:
        ordering = ["swap", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["swap", "seq"], name="swap_log_line_seq_unique")
        ]

    def __str__(self) -> str:
        return f"{self.swap_id}#{self.seq}"

    def as_dict(self) -> dict[str, Any]:
        """A line as the API pages it and the dashboard shows it."""
        return {
            "seq": self.seq,
            "at": self.at,
            "stream": self.stream,
            "text": self.text,
            "node": self.node,
        }


class KeyUsage(models.Model):
    """What one API key sent through the broker in one period: a minute or a UTC day."""

    MINUTE = "minute"
    DAY = "day"
    PERIOD_CHOICES = [(MINUTE, MINUTE), (DAY, DAY)]

    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="usage")
    period = models.CharField(max_length=8, choices=PERIOD_CHOICES)
    starts_at = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["key", "period", "starts_at"], name="key_usage_one_row_per_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.key_id} {self.period} {self.starts_at:%Y-%m-%d %H:%M}"


class AuditEvent(models.Model):
    """One state change: who did it (a person, a key, or the engine on their behalf),
    what changed, on which object, the values before and after, and from where."""

    PERSON = "person"
    KEY = "key"
    ENGINE = "engine"
    ACTOR_KINDS = [(k, k) for k in (PERSON, KEY, ENGINE)]

    at = models.DateTimeField(default=timezone.now)
    actor_kind = models.CharField(max_length=8, choices=ACTOR_KINDS)
    actor_name = models.CharField(max_length=150)  # username, key name, or "engine"
    actor_role = models.CharField(max_length=16, blank=True)  # arbiter.roles level name
    # What the engine did this for, when it acted on someone's behalf (e.g. a broker
    # load for key "app1"): "" when the actor acted itself.
    on_behalf_of = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)  # "swap.start", "lock.acquire", ...
    object_type = models.CharField(max_length=32)  # "swap", "lock", "catalog_model", ...
    object_id = models.CharField(max_length=200, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [
            models.Index(fields=["at"], name="audit_at"),
            models.Index(fields=["action", "at"], name="audit_action_at"),
            models.Index(fields=["object_type", "object_id"], name="audit_object"),
            models.Index(fields=["actor_name", "at"], name="audit_actor_at"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.object_id}"

"""The catalog: models Arbiter can swap in (a hub repo or a local path) and how to launch them."""

from django.db import models

from arbiter.errors import NotFound


class CatalogModelQuerySet(models.QuerySet):
    def by_key(self, key: str, *, field: str = "model") -> "CatalogModel":
        """The model with that catalog key, or NotFound (404) naming `field`."""
        model = self.filter(key=key).first()
        if model is None:
            raise NotFound(f"no catalog model with key {key!r}", field=field)
        return model


class CatalogModel(models.Model):
    """A model that can be served: exactly one of a hub repo id or an absolute local path."""

    KIND_CHOICES = [("llm", "LLM"), ("embeddings", "Embeddings"), ("tts", "Text to speech")]

    key = models.SlugField(max_length=63, unique=True, help_text="Catalog key used by the API")
    display_name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=16, choices=KIND_CHOICES, default="llm")
    # Source: exactly one of these two (checked in catalog.validation and a DB constraint).
    hub_repo = models.CharField(max_length=200, blank=True, help_text="org/name on the hub")
    hub_revision = models.CharField(max_length=100, blank=True)
    local_path = models.CharField(max_length=1024, blank=True, help_text="Absolute host path")

    # Launch settings: every value reaches the container as one argv item, never a shell word.
    served_name = models.CharField(max_length=200)
    image = models.CharField(max_length=255, default="vllm/vllm-openai:latest")
    port = models.PositiveIntegerField(default=8000, help_text="Port inside the container")
    container_name = models.CharField(max_length=128, default="arbiter-vllm")
    tensor_parallel_size = models.PositiveSmallIntegerField(default=1)
    tensor_parallel_hosts = models.JSONField(default=list, blank=True)
    # How the hosts of a multi-node model find each other: vLLM's own multiprocessing
    # multi-node mode, or a Ray cluster (arbiter.engine.swaps.multi_node).
    MULTI_NODE_NATIVE = "native"
    MULTI_NODE_RAY = "ray"
    MULTI_NODE_CHOICES = [(MULTI_NODE_NATIVE, "vLLM native"), (MULTI_NODE_RAY, "Ray")]
    multi_node = models.CharField(max_length=8, choices=MULTI_NODE_CHOICES, default="native")
    max_model_len = models.PositiveIntegerField(null=True, blank=True)
    # Null: chosen per host at launch (0.9 on discrete GPUs; on unified memory derived from
    # the host's MemAvailable, see arbiter.engine.swaps.preflight).
    gpu_memory_utilization = models.FloatField(null=True, blank=True, default=None)
    # The argv placed right after the image (e.g. ["vllm", "serve"]); [] runs the image's
    # own entrypoint. Resolved from the image when a model is created without it.
    command = models.JSONField(default=list, blank=True)
    # vLLM sleep mode on a unified-memory host only when the model opts in (wake-up crashes
    # are reported there).
    sleep_on_unified_memory = models.BooleanField(default=False)
    extra_engine_flags = models.JSONField(default=list, blank=True)
    extra_container_args = models.JSONField(default=list, blank=True)
    estimated_vram_mib = models.PositiveIntegerField(default=0)
    # The broker unloads the model after this long without requests (null: never).
    idle_unload_seconds = models.PositiveIntegerField(null=True, blank=True)
    # Restart policy: a container that dies after it was ready is restarted at most
    # `restart_max` times within `restart_window_seconds` (null: never restarted).
    restart_max = models.PositiveSmallIntegerField(null=True, blank=True)
    restart_window_seconds = models.PositiveIntegerField(null=True, blank=True)
    default_host = models.ForeignKey(
        "arbiter.Host", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CatalogModelQuerySet.as_manager()

    class Meta:
        ordering = ["key"]
        constraints = [
            models.CheckConstraint(
                name="catalog_model_exactly_one_source",
                condition=(
                    (models.Q(hub_repo="") & ~models.Q(local_path=""))
                    | (~models.Q(hub_repo="") & models.Q(local_path=""))
                ),
            ),
            # Clients name a model by its served name: two models with one name would
            # send one client's requests (and prompts) to the other's backend.
            models.UniqueConstraint(
                fields=["served_name"], name="catalog_model_unique_served_name"
            ),
        ]

    def __str__(self) -> str:
        return self.key

    @property
    def is_local(self) -> bool:
        return bool(self.local_path)

    @property
    def restart_policy(self) -> dict[str, int] | None:
        """`{"max", "window_seconds"}` as the API and the catalog file write it; None: off."""
        if not self.restart_max or not self.restart_window_seconds:
            return None
        return {"max": self.restart_max, "window_seconds": self.restart_window_seconds}

    @property
    def source(self) -> str:
        """What vLLM is told to load: the local path, or the hub repo id."""
        return self.local_path or self.hub_repo


class CatalogAlias(models.Model):
    """A name clients may use instead of a model's: the broker routes it to the first
    listed model that is loaded, else loads the first (`model_keys`: catalog keys, in order)."""

    name = models.CharField(max_length=200, unique=True)
    model_keys = models.JSONField(default=list)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

"""Catalog API schemas. Types are checked here; the rules live in catalog.validation."""

from datetime import datetime
from typing import Any

from ninja import Field, Schema
from pydantic import ConfigDict

from catalog.models import CatalogAlias, CatalogModel
from catalog.validation import DEFAULT_IMAGE


class CatalogModelIn(Schema):
    """A catalog model as sent by a client: exactly one of hub_repo or local_path."""

    # A misspelt field (`hub_rep`) is an error naming it, not a silently ignored key; and
    # no coercion: `"port": true` or `"port": "80"` is a mistake to report, not to guess.
    model_config = ConfigDict(extra="forbid", strict=True)

    key: str | None = Field(None, description="Catalog key; required on POST, fixed on PUT")
    display_name: str = ""
    kind: str = "llm"
    hub_repo: str | None = Field(None, description="`org/name` on the hub")
    hub_revision: str | None = Field(None, description="Branch, tag or commit sha")
    local_path: str | None = Field(None, description="Absolute path below a model root")
    served_name: str | None = Field(None, description="Defaults to hub_repo, or the key")
    image: str = DEFAULT_IMAGE
    port: int = 8000
    container_name: str | None = Field(None, description="Default: ARBITER_CONTAINER_NAME")
    tensor_parallel_size: int = Field(
        1, description="GPUs in all; with tensor_parallel_hosts, the total over every host"
    )
    tensor_parallel_hosts: list[str] = Field(
        [],
        description="A multi-node model's hosts, head first: none, or 2+ distinct hosts "
        "that each have a cluster_address in the inventory",
    )
    multi_node: str = Field(
        "native",
        description="How those hosts connect: native (vLLM's own multi-node mode) or ray",
    )
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = Field(
        None,
        description="In (0, 1]; null: 0.9, or derived from free memory on unified-memory hosts",
    )
    command: list[str] | None = Field(
        None,
        description='argv after the image, e.g. ["vllm", "serve"]; [] runs the image\'s '
        "entrypoint; null: the known default for the image",
    )
    sleep_on_unified_memory: bool = Field(
        False, description="Allow vLLM sleep mode (idle unloads) on unified-memory hosts"
    )
    extra_engine_flags: list[str] = Field([], description="One option per item, `--x[=v]`")
    extra_container_args: list[str] = Field([], description="Allow-listed `--opt=value`")
    estimated_vram_mib: int = 0
    idle_unload_seconds: int | None = Field(
        None, description="The broker unloads it after this many idle seconds (>= 60)"
    )
    restart: dict[str, Any] | None = Field(
        None,
        description='Restart policy {"max": N, "window_seconds": W}: a container that dies '
        "after it was ready is restarted at most N times within W seconds; null: never",
    )
    default_host: str | None = None


class CatalogModelOut(Schema):
    key: str
    display_name: str
    kind: str
    local: bool
    source: str
    hub_repo: str
    hub_revision: str
    local_path: str
    served_name: str
    image: str
    port: int
    container_name: str
    tensor_parallel_size: int
    tensor_parallel_hosts: list[str]
    multi_node: str
    max_model_len: int | None
    gpu_memory_utilization: float | None
    command: list[str]
    sleep_on_unified_memory: bool
    extra_engine_flags: list[str]
    extra_container_args: list[str]
    estimated_vram_mib: int
    idle_unload_seconds: int | None
    restart: dict[str, int] | None
    default_host: str | None
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def from_model(model: CatalogModel) -> "CatalogModelOut":
        return CatalogModelOut(
            key=model.key,
            display_name=model.display_name,
            kind=model.kind,
            local=model.is_local,
            source=model.source,
            hub_repo=model.hub_repo,
            hub_revision=model.hub_revision,
            local_path=model.local_path,
            served_name=model.served_name,
            image=model.image,
            port=model.port,
            container_name=model.container_name,
            tensor_parallel_size=model.tensor_parallel_size,
            tensor_parallel_hosts=list(model.tensor_parallel_hosts or []),
            multi_node=model.multi_node,
            max_model_len=model.max_model_len,
            gpu_memory_utilization=model.gpu_memory_utilization,
            command=list(model.command or []),
            sleep_on_unified_memory=model.sleep_on_unified_memory,
            extra_engine_flags=list(model.extra_engine_flags or []),
            extra_container_args=list(model.extra_container_args or []),
            estimated_vram_mib=model.estimated_vram_mib,
            idle_unload_seconds=model.idle_unload_seconds,
            restart=model.restart_policy,
            default_host=model.default_host.name if model.default_host else None,
            created_at=model.created_at,
            updated_at=model.updated_at,
        )


class DiskOut(Schema):
    """One host's copy of a model; `present` is null when the host could not be asked."""

    host: str
    path: str
    present: bool | None
    size_bytes: int | None
    detail: str
    error: str | None = None


class CatalogAliasIn(Schema):
    """An alias as sent by a client: a name clients may use for the first loaded (else
    the first) of an ordered list of catalog models."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, description="Required on POST, fixed on PUT")
    model_keys: list[str] = Field(description="Catalog keys in order of preference")
    description: str = ""


class CatalogAliasOut(Schema):
    name: str
    model_keys: list[str]
    description: str
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def from_alias(alias: CatalogAlias) -> "CatalogAliasOut":
        return CatalogAliasOut(
            name=alias.name,
            model_keys=list(alias.model_keys or []),
            description=alias.description,
            created_at=alias.created_at,
            updated_at=alias.updated_at,
        )

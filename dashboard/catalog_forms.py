"""The catalog page's "+ Add model" (hub) and "+ Add local model" forms.

Django checks the types; the rules are catalog.validation's, the same as the API's, and
each problem is shown next to the field it names.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from arbiter.errors import Conflict
from arbiter.models import Host
from catalog.models import CatalogModel
from catalog.store import create_model, host_problems, served_name_conflict, served_name_owner
from catalog.validation import DEFAULT_IMAGE, catalog_field_problems, default_value


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def host_names(text: str) -> list[str]:
    """The form's hosts, in the order typed (the first is the head): commas or spaces
    between them. Each name is checked by catalog.validation like the API's list."""
    return (text or "").replace(",", " ").split()


ENTRYPOINT_ONLY = "[]"


def command_words(text: str) -> list[str] | None:
    """The form's command: blank → None (the image's default), `[]` → [], else its words.

    The words are checked by catalog.validation like the API's list (no options, no
    shell characters); splitting on whitespace is all the form does.
    """
    text = (text or "").strip()
    if not text:
        return None
    if text == ENTRYPOINT_ONLY:
        return []
    return text.split()


class CatalogModelForm(forms.Form):
    """Fields shared by both forms; subclasses add the source (hub repo or local path)."""

    SOURCE_FIELDS: tuple[str, ...] = ()
    LIST_FIELDS = ("extra_engine_flags", "extra_container_args")

    key = forms.CharField(max_length=63, help_text="Catalog key, e.g. qwen3-8b")
    display_name = forms.CharField(max_length=200, required=False)
    kind = forms.ChoiceField(choices=CatalogModel.KIND_CHOICES, initial="llm")
    served_name = forms.CharField(
        max_length=200, required=False, help_text="Defaults to the hub repo id, or the key"
    )
    image = forms.CharField(max_length=255, initial=DEFAULT_IMAGE)
    command = forms.CharField(
        max_length=300,
        required=False,
        help_text=(
            "Words after the image, e.g. vllm serve; empty: the image's default; "
            "[] : the image's own entrypoint"
        ),
    )
    port = forms.IntegerField(initial=8000, help_text="Port inside the container")
    container_name = forms.CharField(
        max_length=128, initial=lambda: settings.ARBITER_CONTAINER_NAME
    )
    tensor_parallel_size = forms.IntegerField(
        initial=1, help_text="GPUs in all; on several hosts, the total over them"
    )
    tensor_parallel_hosts = forms.CharField(
        max_length=300,
        required=False,
        label="Hosts (multi-node)",
        help_text=(
            "Empty: one host. Else 2 or more hosts, the head first, e.g. spark-1, spark-2; "
            "each needs a cluster_address in the inventory"
        ),
    )
    multi_node = forms.ChoiceField(
        required=False,  # left out: native
        choices=CatalogModel.MULTI_NODE_CHOICES,
        initial=CatalogModel.MULTI_NODE_NATIVE,
        label="Multi-node mode",
        help_text="How those hosts connect",
    )
    max_model_len = forms.IntegerField(required=False)
    gpu_memory_utilization = forms.FloatField(initial=0.9)
    extra_engine_flags = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        help_text="One option per line, e.g. --enable-prefix-caching",
    )
    extra_container_args = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        help_text="One per line, allow-listed, e.g. --shm-size=16g",
    )
    estimated_vram_mib = forms.IntegerField(initial=0, label="Estimated VRAM (MiB)")
    idle_unload_seconds = forms.IntegerField(
        required=False,
        label="Unload when idle (s)",
        help_text="The broker unloads it after this long without requests; empty: never",
    )
    default_host = forms.ChoiceField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = Host.objects.filter(in_inventory=True).values_list("name", flat=True)
        self.fields["default_host"].choices = [("", "—"), *((n, n) for n in names)]
        self.order_fields(["key", "display_name", "kind", *self.SOURCE_FIELDS])
        self.catalog_values: dict[str, Any] = {}

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        # Fields Django already rejected (e.g. "abc" for a port) get a stand-in value so
        # the remaining fields are still checked, and no second error is added to them.
        payload = {
            name: data.get(name, default_value(name))
            for name in self.fields
            if name not in self.LIST_FIELDS
        }
        for name in self.LIST_FIELDS:
            payload[name] = _lines(data.get(name, ""))
        payload["command"] = command_words(data.get("command", ""))
        payload["tensor_parallel_hosts"] = host_names(data.get("tensor_parallel_hosts", ""))
        payload["multi_node"] = data.get("multi_node") or default_value("multi_node")
        for name in ("hub_repo", "local_path", "hub_revision", "served_name", "default_host"):
            payload[name] = payload.get(name) or ""
        cleaned, problems = catalog_field_problems(payload)
        if not problems:
            problems = host_problems(cleaned)
        for field, reason in problems:
            if field in self.errors:
                continue
            target = field if field in self.fields else None
            if target is None and "," in field:  # hub_repo,local_path: this form's source
                target = self.SOURCE_FIELDS[0] if self.SOURCE_FIELDS else None
            self.add_error(target, reason)
        key = cleaned.get("key")
        if key and "key" not in self.errors and CatalogModel.objects.filter(key=key).exists():
            self.add_error("key", f"a catalog model with key {key!r} already exists")
        served_name = cleaned.get("served_name")
        if served_name and "served_name" not in self.errors:
            owner = served_name_owner(served_name)
            if owner is not None:  # also when it defaulted to the hub repo or the key
                self.add_error("served_name", served_name_conflict(served_name, owner).message)
        self.catalog_values = cleaned
        return data

    def save(self, who: Any = None) -> CatalogModel:
        """Create the model; `who` (the request) audits it, as the API's create does."""
        try:
            return create_model(self.catalog_values, who=who)
        except Conflict as error:  # created concurrently since clean()
            self.add_error(error.field if error.field in self.fields else None, error.message)
            raise


class HubModelForm(CatalogModelForm):
    """A model from the hub: `org/name` and an optional revision."""

    SOURCE_FIELDS = ("hub_repo", "hub_revision")

    hub_repo = forms.CharField(max_length=200, label="Hub repo", help_text="org/name")
    hub_revision = forms.CharField(
        max_length=100, required=False, help_text="Branch, tag or commit (default: main)"
    )


class LocalModelForm(CatalogModelForm):
    """Fine-tuned weights already on the hosts, below an allowed model root."""

    SOURCE_FIELDS = ("local_path",)

    local_path = forms.CharField(
        max_length=1024,
        help_text="Absolute path on the hosts, below an allowed root; mounted read-only",
    )

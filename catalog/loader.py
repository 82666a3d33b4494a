"""The catalog seed file: validate every entry, then create the models the database lacks.

The file only *seeds*: a model already in the database (by key) is never overwritten,
so edits made in the dashboard or through the API survive restarts. Problems are all
reported at once, worded like the inventory's (`catalog.yaml: models[2].port: ...`),
and nothing is written while any remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction

from arbiter.errors import ArbiterError, Conflict, InvalidInput
from arbiter.inventory.loader import _read_yaml  # the strict YAML reader (duplicate keys)
from arbiter.inventory.problems import Problems, show, unknown_key_reason
from catalog.aliases import ALIAS_FIELDS, check_alias_fields, seed_aliases
from catalog.models import CatalogModel
from catalog.store import (
    alias_taken_problem,
    create_model,
    host_problems,
    served_name_conflict,
    served_name_owner,
)
from catalog.validation import FIELDS, catalog_field_problems


class CatalogError(ArbiterError):
    """The catalog file is missing or invalid; `.problems` lists every problem found."""

    status = 422
    error_type = "invalid_catalog"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems), problems=problems)
        self.problems = problems


@dataclass
class SeedResult:
    """What seeding did: keys created, keys already in the database (left as they are)."""

    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    aliases_created: list[str] = field(default_factory=list)
    aliases_kept: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{len(self.created)} models created, {len(self.kept)} already in the catalog (kept)"
        if self.aliases_created or self.aliases_kept:
            created, kept = len(self.aliases_created), len(self.aliases_kept)
            text += f"; {created} aliases created, {kept} kept"
        return text


@dataclass
class CatalogFile:
    """A catalog file's entries as written: `models:` and the optional `aliases:`."""

    models: list[Any]
    aliases: list[Any]


def load_catalog_file(path: str | Path) -> CatalogFile:
    """The `models:` and `aliases:` entries of a catalog file (raw); CatalogError when
    unreadable."""
    problems = Problems(str(path))
    data = _read_yaml(Path(path), problems)
    if len(problems):
        raise CatalogError(problems.messages)
    if not isinstance(data, dict) or "models" not in data:
        raise CatalogError([f"{path}: top level must be a mapping with a `models:` list"])
    sections = ["models", "aliases"]
    unknown = [key for key in data if key not in sections]
    if unknown:
        raise CatalogError(
            [f"{path}: {key}: {unknown_key_reason(key, sections)}" for key in unknown]
        )
    lists = []
    for section in sections:
        entries = data.get(section)
        if entries is not None and not isinstance(entries, list):
            raise CatalogError([f"{path}: {section}: must be a list, got {show(entries)}"])
        lists.append(entries or [])
    return CatalogFile(*lists)


def entry_problems(entries: list[Any], source: str) -> tuple[list[dict], list[str]]:
    """Validate every entry; return (cleaned entries, every problem as a message)."""
    problems = Problems(source)
    cleaned_entries: list[dict] = []
    first_index: dict[str, int] = {}
    first_served: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"models[{index}]"
        if not isinstance(entry, dict):
            problems.add(where, f"must be a mapping, got {show(entry)}")
            continue
        for key in entry:
            if key not in FIELDS:
                problems.add(f"{where}.{key}", unknown_key_reason(key, FIELDS))
        cleaned, field_problems = catalog_field_problems(entry)
        if not field_problems:
            field_problems = host_problems(cleaned)
        for name, reason in field_problems:
            problems.add(f"{where}.{name}", reason)
        key = entry.get("key")
        if isinstance(key, str) and key in first_index:
            problems.add(
                f"{where}.key", f"duplicate key {show(key)} (also models[{first_index[key]}])"
            )
        elif isinstance(key, str):
            first_index[key] = index
        served_name = cleaned.get("served_name")
        if not field_problems and served_name in first_served:
            also = f"models[{first_served[served_name]}]"
            problems.add(
                f"{where}.served_name",
                f"duplicate served name {show(served_name)} (also {also}; served names are "
                "unique, set served_name)",
            )
        elif not field_problems and served_name:
            first_served[served_name] = index
        if not field_problems:
            cleaned_entries.append(cleaned)
    return cleaned_entries, problems.messages


def alias_problems(
    entries: list[Any], models: list[dict], source: str
) -> tuple[list[dict], list[str]]:
    """Validate every alias entry (its models may be the file's own); return (cleaned
    entries, every problem as a message)."""
    problems = Problems(source)
    file_keys = frozenset(model["key"] for model in models)
    model_names = {model["served_name"]: model["key"] for model in models}
    model_names.update({model["key"]: model["key"] for model in models})
    cleaned_entries: list[dict] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"aliases[{index}]"
        if not isinstance(entry, dict):
            problems.add(where, f"must be a mapping, got {show(entry)}")
            continue
        for key in entry:
            if key not in ALIAS_FIELDS:
                problems.add(f"{where}.{key}", unknown_key_reason(key, ALIAS_FIELDS))
        try:
            cleaned = check_alias_fields(entry, also_known=file_keys)
        except InvalidInput as error:
            name = error.field or "name"
            problems.add(f"{where}.{name}", error.message.removeprefix(f"{name}: "))
            continue
        name = cleaned["name"]
        if name in first_index:
            problems.add(
                f"{where}.name", f"duplicate alias {show(name)} (also aliases[{first_index[name]}])"
            )
        elif name in model_names:
            problems.add(
                f"{where}.name",
                f"{show(name)} is the served name or key of models entry "
                f"{show(model_names[name])}: an alias may not take it",
            )
        else:
            first_index[name] = index
            cleaned_entries.append(cleaned)
    return cleaned_entries, problems.messages


def seed_catalog(
    entries: list[Any], *, source: str = "catalog", aliases: list[Any] | None = None
) -> SeedResult:
    """Create the models of `entries`, then the `aliases`, that the database lacks;
    never overwrite one."""
    cleaned_entries, messages = entry_problems(entries, source)
    cleaned_aliases, alias_messages = alias_problems(aliases or [], cleaned_entries, source)
    messages += alias_messages
    if messages:
        raise CatalogError(messages)
    result = SeedResult()
    with transaction.atomic():
        existing = set(CatalogModel.objects.values_list("key", flat=True))
        new = [cleaned for cleaned in cleaned_entries if cleaned["key"] not in existing]
        # A new entry must not take the served name of a model already in the database
        # (one kept from an earlier seed, or added through the API or the dashboard).
        taken = [
            f"{source}: model {cleaned['key']!r}: "
            f"{served_name_conflict(cleaned['served_name'], owner).message}"
            for cleaned in new
            if (owner := served_name_owner(cleaned["served_name"])) is not None
        ]
        taken += [
            f"{source}: model {cleaned['key']!r}: {conflict.message}"
            for cleaned in new
            if (conflict := alias_taken_problem(cleaned)) is not None
        ]
        if taken:
            raise CatalogError(taken)
        for cleaned in cleaned_entries:
            if cleaned["key"] in existing:
                result.kept.append(cleaned["key"])
            else:
                create_model(cleaned)
                result.created.append(cleaned["key"])
        try:
            result.aliases_created, result.aliases_kept = seed_aliases(cleaned_aliases)
        except Conflict as error:  # a new alias takes the name of a model already there
            raise CatalogError([f"{source}: aliases: {error.message}"]) from error
    return result


def seed_catalog_file(path: str | Path) -> SeedResult:
    """`load_catalog_file` then `seed_catalog`, problems named after the file."""
    sections = load_catalog_file(path)
    return seed_catalog(sections.models, source=str(path), aliases=sections.aliases)

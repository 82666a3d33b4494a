"""Catalog aliases: one name for an ordered list of catalog models (issue 16).

Clients that hard-code one model name (`chat-default`) keep working whichever of the
listed models is on a GPU: the broker routes the alias to the first listed model that
is loaded, else loads the first (`arbiter.broker.routing`). Here are the rules an
alias must keep, the writes (with their audit rows, in the write's transaction), and
what the catalog's own writers ask: is this name an alias's, which aliases list a model.

An alias name shares the namespace clients name models in, so it may equal no catalog
model's served name or key (either way, one of the two would never be reached), and a
model may not later take an alias's name (`catalog.store`).
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q

from arbiter import audit
from arbiter.errors import Conflict, InvalidInput
from catalog.models import CatalogAlias, CatalogModel
from catalog.validation import Bad, check_served_name, has_control

ALIAS_FIELDS = ("name", "model_keys", "description")
MAX_MODELS = 32  # an alias is a short preference list, not a catalog


def _bad(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field}: {reason}", field=field)


def check_alias_name(value: Any) -> str:
    """A served name's character rules (no leading '-', no whitespace or control
    characters, at most 200), and not empty."""
    try:
        name = check_served_name(value)
    except Bad as error:
        raise _bad("name", error.reason) from None
    if not name:
        raise _bad("name", "is required")
    return name


def check_model_keys(value: Any, also_known: frozenset[str] = frozenset()) -> list[str]:
    """Existing catalog keys (or `also_known`: a seed file's own), at least one, each
    once, in the order given."""
    if not isinstance(value, list) or not value:
        raise _bad("model_keys", "must be a non-empty list of catalog keys")
    if len(value) > MAX_MODELS:
        raise _bad("model_keys", f"must list at most {MAX_MODELS} models")
    seen: set[str] = set()
    for index, key in enumerate(value):
        if not isinstance(key, str) or not key:
            raise _bad("model_keys", f"item {index}: must be a catalog key (a string)")
        if key in seen:
            raise _bad("model_keys", f"item {index}: {key!r} is listed twice")
        seen.add(key)
    known = set(CatalogModel.objects.filter(key__in=value).values_list("key", flat=True))
    known |= also_known
    for index, key in enumerate(value):
        if key not in known:
            raise _bad("model_keys", f"item {index}: no catalog model with key {key!r}")
    return list(value)


def check_description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 200 or has_control(value):
        raise _bad("description", "must be text of at most 200 characters, on one line")
    return value


def check_alias_fields(
    data: dict[str, Any], also_known: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The cleaned fields of one alias, or InvalidInput naming the first bad field."""
    return {
        "name": check_alias_name(data.get("name")),
        "model_keys": check_model_keys(data.get("model_keys"), also_known),
        "description": check_description(data.get("description")),
    }


def model_taking_name(name: str) -> str | None:
    """The key of the catalog model whose served name or key is `name`, or None."""
    model = CatalogModel.objects.filter(Q(served_name=name) | Q(key=name)).first()
    return model.key if model is not None else None


def alias_named(name: str) -> str | None:
    """`name` when an alias has that name (a model may not take it), else None."""
    return CatalogAlias.objects.filter(name=name).values_list("name", flat=True).first()


def aliases_listing(key: str) -> list[str]:
    """The names of the aliases that list the catalog model `key`, sorted."""
    # JSON containment lookups differ between SQLite and PostgreSQL; aliases are few.
    return sorted(
        alias.name
        for alias in CatalogAlias.objects.only("name", "model_keys")
        if key in (alias.model_keys or [])
    )


def refuse_delete_of_listed_model(key: str) -> None:
    """409 naming the aliases when a model about to be deleted is listed by any."""
    names = aliases_listing(key)
    if names:
        raise Conflict(
            f"catalog model {key!r} is listed by alias(es) {', '.join(names)}: remove it "
            "from them (PUT /api/aliases/NAME) or delete them first",
            field="key",
            aliases=names,
        )


def _refuse_name_of_a_model(name: str) -> None:
    owner = model_taking_name(name)
    if owner is not None:
        raise Conflict(
            f"name {name!r} is the served name or key of catalog model {owner!r}: clients "
            "name models by it, so an alias may not take it",
            field="name",
            model=owner,
        )


def _taken(name: str) -> Conflict:
    return Conflict(f"an alias named {name!r} already exists", field="name")


def create_alias(cleaned: dict[str, Any], who: Any) -> CatalogAlias:
    """Create an alias from validated fields, audited in the same transaction; 409
    when the name is an alias's already or a model's."""
    name = cleaned["name"]
    try:
        with transaction.atomic():
            _refuse_name_of_a_model(name)
            if alias_named(name) is not None:
                raise _taken(name)
            alias = CatalogAlias.objects.create(**cleaned)
            audit.record(who, "catalog.alias_create", "catalog_alias", name, after=dict(cleaned))
            return alias
    except IntegrityError as error:  # a concurrent create won the race on the name
        raise _taken(name) from error


def update_alias(alias: CatalogAlias, cleaned: dict[str, Any], who: Any) -> CatalogAlias:
    """Replace the alias's models and description (its name stays), audited."""
    before = {"model_keys": alias.model_keys, "description": alias.description}
    after = {"model_keys": cleaned["model_keys"], "description": cleaned["description"]}
    with transaction.atomic():
        alias.model_keys = cleaned["model_keys"]
        alias.description = cleaned["description"]
        alias.save()
        changed = [field for field in before if before[field] != after[field]]
        audit.record(
            who,
            "catalog.alias_update",
            "catalog_alias",
            alias.name,
            before={field: before[field] for field in changed},
            after={field: after[field] for field in changed},
        )
    return alias


def delete_alias(alias: CatalogAlias, who: Any) -> None:
    with transaction.atomic():
        audit.record(
            who,
            "catalog.alias_delete",
            "catalog_alias",
            alias.name,
            before={"model_keys": alias.model_keys, "description": alias.description},
        )
        alias.delete()


def seed_aliases(entries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Create the aliases of validated `entries` that the database lacks (the seed
    file's rule: never overwrite); return (created, kept). Not audited, as seeded models."""
    created, kept = [], []
    existing = set(CatalogAlias.objects.values_list("name", flat=True))
    for cleaned in entries:
        if cleaned["name"] in existing:
            kept.append(cleaned["name"])
            continue
        _refuse_name_of_a_model(cleaned["name"])
        CatalogAlias.objects.create(**cleaned)
        created.append(cleaned["name"])
    return created, kept

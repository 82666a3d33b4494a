"""The catalog seed file's `aliases:` section: seeded after the models, never overwritten,
every problem reported at once with nothing written."""

from pathlib import Path

import pytest

from catalog.loader import CatalogError, seed_catalog_file
from catalog.models import CatalogAlias, CatalogModel
from tests.catalog.conftest import hub_model

pytestmark = pytest.mark.django_db

GOOD = """\
models:
  - key: qwen3-8b
    hub_repo: Qwen/Qwen3-8B
  - key: small
    hub_repo: Qwen/Qwen3-0.6B
aliases:
  - name: chat-default
    model_keys: [qwen3-8b, small]
    description: the team's chat model
  - name: quick
    model_keys: [small, kept]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


def test_it_seeds_aliases_of_the_files_models_and_of_models_already_there(tmp_path):
    hub_model("kept", hub_repo="org/kept")
    result = seed_catalog_file(write(tmp_path, GOOD))
    assert (result.aliases_created, result.aliases_kept) == (["chat-default", "quick"], [])
    assert "2 aliases created, 0 kept" in str(result)
    alias = CatalogAlias.objects.get(name="chat-default")
    assert (alias.model_keys, alias.description) == (
        ["qwen3-8b", "small"],
        "the team's chat model",
    )
    # A later start keeps an alias edited through the API as it is.
    CatalogAlias.objects.filter(name="quick").update(model_keys=["kept"])
    again = seed_catalog_file(write(tmp_path, GOOD))
    assert (again.aliases_created, again.aliases_kept) == ([], ["chat-default", "quick"])
    assert CatalogAlias.objects.get(name="quick").model_keys == ["kept"]


def test_it_reports_every_alias_problem_and_writes_nothing(tmp_path):
    path = write(
        tmp_path,
        """\
models:
  - key: qwen3-8b
    hub_repo: Qwen/Qwen3-8B
aliases:
  - name: ok
    model_keys: [qwen3-8b]
  - name: Qwen/Qwen3-8B
    model_keys: [qwen3-8b]
  - name: ok
    model_keys: [qwen3-8b]
  - name: empty
    model_keys: []
  - name: ghost
    model_keys: [qwen3-8b, nope]
  - name: twice
    model_keys: [qwen3-8b, qwen3-8b]
  - name: typo
    model_key: [qwen3-8b]
  - just text
""",
    )
    with pytest.raises(CatalogError) as error:
        seed_catalog_file(path)
    assert error.value.problems == [
        f'{path}: aliases[1].name: "Qwen/Qwen3-8B" is the served name or key of models entry '
        '"qwen3-8b": an alias may not take it',
        f'{path}: aliases[2].name: duplicate alias "ok" (also aliases[0])',
        f"{path}: aliases[3].model_keys: must be a non-empty list of catalog keys",
        f"{path}: aliases[4].model_keys: item 1: no catalog model with key 'nope'",
        f"{path}: aliases[5].model_keys: item 1: 'qwen3-8b' is listed twice",
        f'{path}: aliases[6].model_key: unknown key (did you mean "model_keys"?)',
        f"{path}: aliases[6].model_keys: must be a non-empty list of catalog keys",
        f'{path}: aliases[7]: must be a mapping, got "just text"',
    ]
    assert not CatalogModel.objects.exists() and not CatalogAlias.objects.exists()


def test_it_refuses_a_new_alias_named_like_a_model_already_there_and_the_reverse(tmp_path):
    hub_model("old", hub_repo="org/old", served_name="chat-default")
    hub_model("kept", hub_repo="org/kept")
    with pytest.raises(CatalogError) as error:
        seed_catalog_file(write(tmp_path, GOOD))
    assert "aliases: name 'chat-default' is the served name or key of catalog model 'old'" in str(
        error.value
    )
    assert not CatalogModel.objects.filter(key="qwen3-8b").exists()  # nothing half-written
    CatalogModel.objects.exclude(key="kept").delete()
    CatalogAlias.objects.create(name="Qwen/Qwen3-0.6B", model_keys=[])
    with pytest.raises(CatalogError) as error:
        seed_catalog_file(write(tmp_path, GOOD))
    assert "model 'small': served_name 'Qwen/Qwen3-0.6B' is the name of a catalog alias" in str(
        error.value
    )


def test_it_seeds_the_alias_of_the_example_catalog_in_docs():
    path = Path(__file__).resolve().parents[2] / "docs" / "catalog.example.yaml"
    result = seed_catalog_file(path)
    assert result.aliases_created == ["chat-default"]
    assert CatalogAlias.objects.get(name="chat-default").model_keys == [
        "qwen3-8b",
        "llama-3-1-8b",
    ]

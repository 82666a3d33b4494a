"""The catalog seed file and `manage.py load_catalog`: every problem at once, never overwrite."""

import io
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from arbiter.inventory import apply_inventory, load_inventory
from catalog.loader import CatalogError, load_catalog_file, seed_catalog, seed_catalog_file
from catalog.models import CatalogModel
from tests.catalog.conftest import hub_model

pytestmark = pytest.mark.django_db

GOOD = """\
models:
  - key: qwen3-8b
    hub_repo: Qwen/Qwen3-8B
    estimated_vram_mib: 20000
  - key: support-ft
    local_path: /models/finetunes/support-v2/
    served_name: support-v2
    extra_container_args: [--shm-size=8g]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


def test_it_creates_the_models_of_a_file(tmp_path):
    path = write(tmp_path, GOOD)
    result = seed_catalog_file(path)
    assert (result.created, result.kept) == (["qwen3-8b", "support-ft"], [])
    ft = CatalogModel.objects.get(key="support-ft")
    assert (ft.local_path, ft.served_name, ft.is_local) == (
        "/models/finetunes/support-v2",
        "support-v2",
        True,
    )
    assert CatalogModel.objects.get(key="qwen3-8b").served_name == "Qwen/Qwen3-8B"


def test_it_never_overwrites_a_model_already_in_the_database(tmp_path):
    hub_model("qwen3-8b", hub_repo="Qwen/Qwen3-8B", image="vllm/vllm-openai:v0.11.0", port=9001)
    result = seed_catalog_file(write(tmp_path, GOOD))
    assert (result.created, result.kept) == (["support-ft"], ["qwen3-8b"])
    kept = CatalogModel.objects.get(key="qwen3-8b")
    assert (kept.image, kept.port) == ("vllm/vllm-openai:v0.11.0", 9001)
    # Seeding again (the next restart) changes nothing.
    again = seed_catalog_file(write(tmp_path, GOOD))
    assert (again.created, again.kept) == ([], ["qwen3-8b", "support-ft"])


def test_it_reports_every_problem_with_file_and_key_path(tmp_path):
    path = write(
        tmp_path,
        """\
models:
  - key: ok-model
    hub_repo: Qwen/Qwen3-8B
  - key: both
    hub_repo: a/b
    local_path: /models/x
  - key: bad-port
    hub_repo: a/b
    port: "x"
    gpu_memory_utilization: 2
  - key: escape
    local_path: /models/../etc
  - key: ok-model
    hub_repo: c/d
    imagee: vllm/vllm-openai
  - just a string
""",
    )
    with pytest.raises(CatalogError) as error:
        seed_catalog_file(path)
    assert error.value.problems == [
        f"{path}: models[1].hub_repo,local_path: give exactly one of hub_repo (a hub model) "
        "or local_path (weights on the host); both were given",
        f"{path}: models[2].port: must be an integer 1-65535, got 'x'",
        f"{path}: models[2].gpu_memory_utilization: must be a number in (0, 1] or null, got 2",
        f"{path}: models[3].local_path: must not contain '..' segments",
        f'{path}: models[4].imagee: unknown key (did you mean "image"?)',
        f'{path}: models[4].key: duplicate key "ok-model" (also models[0])',
        f'{path}: models[5]: must be a mapping, got "just a string"',
    ]
    assert not CatalogModel.objects.exists()  # nothing half-written


def test_it_checks_hosts_the_entries_name(tmp_path, sim_cluster):
    apply_inventory(load_inventory(sim_cluster.config_path))
    path = write(
        tmp_path,
        "models:\n  - {key: a, hub_repo: a/b, default_host: sim-a}\n"
        "  - {key: b, hub_repo: a/b, default_host: gpu-99}\n",
    )
    with pytest.raises(CatalogError) as error:
        seed_catalog_file(path)
    assert error.value.problems == [f"{path}: models[1].default_host: unknown host 'gpu-99'"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("models: [\n", "YAML syntax error"),
        ("- key: a\n", "top level must be a mapping with a `models:` list"),
        ("models: {key: a}\n", "models: must be a list"),
        ("models: []\nmodel: []\n", 'model: unknown key (did you mean "models"?)'),
        ("models: []\nmodels: []\n", 'duplicate key "models"'),
    ],
)
def test_it_reports_a_malformed_file(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as error:
        load_catalog_file(path)
    assert problem in str(error.value)
    assert str(error.value).startswith(str(path))


def test_it_reports_a_missing_file(tmp_path):
    with pytest.raises(CatalogError) as error:
        load_catalog_file(tmp_path / "nope.yaml")
    assert str(error.value) == f"{tmp_path / 'nope.yaml'}: file not found"


def test_it_seeds_from_plain_entries_naming_the_source():
    with pytest.raises(CatalogError) as error:
        seed_catalog([{"key": "x"}], source="inline")
    assert error.value.problems[0].startswith("inline: models[0].hub_repo,local_path: ")


def test_it_loads_a_file_with_the_command(tmp_path):
    out = io.StringIO()
    call_command("load_catalog", str(write(tmp_path, GOOD)), stdout=out)
    assert "2 models created, 0 already in the catalog (kept)" in out.getvalue()


def test_it_fails_the_command_with_every_problem(tmp_path):
    path = write(tmp_path, "models:\n  - {key: a}\n  - {key: b, hub_repo: a/b, port: 0}\n")
    with pytest.raises(CommandError) as error:
        call_command("load_catalog", str(path))
    lines = str(error.value).splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [
        "models[0].hub_repo,local_path",
        "models[1].port",
    ]


def test_it_needs_a_path_for_the_command(settings):
    settings.ARBITER_CATALOG = ""
    with pytest.raises(CommandError, match="pass PATH or set ARBITER_CATALOG"):
        call_command("load_catalog")


def test_it_seeds_the_simulators_demo_catalog_cleanly(sim_cluster):
    apply_inventory(load_inventory(sim_cluster.config_path))
    path = sim_cluster.cluster.catalog_path
    assert path == sim_cluster.config_path.with_name("catalog.yaml")
    result = seed_catalog_file(path)
    keys = [m["key"] for m in yaml.safe_load(path.read_text())["models"]]
    assert result.created == keys
    assert CatalogModel.objects.filter(local_path__startswith="/models/").count() == 1


def test_it_accepts_the_example_catalog_in_docs_as_valid():
    path = Path(__file__).resolve().parents[2] / "docs" / "catalog.example.yaml"
    result = seed_catalog_file(path)
    assert result.created and not result.kept

"""Containers and images under control (issue 13, item 3): the image allow-list
(ARBITER_ALLOWED_IMAGES) and served names unique across the catalog, through the API,
the dashboard form and the seed file."""

import threading
from pathlib import Path

import pytest
from django.db import connection

from catalog.loader import CatalogError, seed_catalog, seed_catalog_file
from catalog.models import CatalogModel
from catalog.store import create_model
from catalog.validation import validate_catalog_fields
from tests.catalog.conftest import hub_model, post
from tests.catalog.test_catalog_page import HUB_FORM

HUB = {"key": "qwen", "hub_repo": "Qwen/Qwen3-0.6B"}
FOREIGN = "example.com/team/server:1"


# -- the image allow-list ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "image",
    [
        "vllm/vllm-openai:latest",
        "vllm/vllm-openai:v0.11.0",
        "vllm/vllm-openai@sha256:" + "a" * 64,
        "docker.io/vllm/vllm-openai:v0.11.0",
        "nvcr.io/nvidia/vllm:25.09-py3",
    ],
)
def test_it_takes_the_vllm_images_the_catalog_ships_with_the_default_allow_list(key_client, image):
    response = post(key_client, {**HUB, "image": image})
    assert response.status_code == 201, response.content
    assert CatalogModel.objects.get(key="qwen").image == image


@pytest.mark.django_db
@pytest.mark.parametrize(
    "image",
    [
        FOREIGN,
        "ubuntu:24.04",
        "evil/vllm-openai:latest",
        "ghcr.io/vllm/vllm-openai:latest",  # another registry than the one allowed
        "nvcr.io/nvidia/pytorch:25.09-py3",
        "localhost:5000/vllm/vllm-openai:latest",
    ],
)
def test_it_refuses_any_other_image_with_a_422_naming_the_field_and_the_setting(key_client, image):
    response = post(key_client, {**HUB, "image": image, "command": ["vllm", "serve"]})
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["field"] == "image"
    assert "ARBITER_ALLOWED_IMAGES" in error["message"]
    assert not CatalogModel.objects.exists()


@pytest.mark.django_db
def test_it_refuses_an_update_to_another_image_and_changes_nothing(key_client):
    hub_model("qwen")
    body = {**HUB, "served_name": "Qwen/Qwen3-0.6B", "image": FOREIGN, "command": []}
    response = key_client.put("/api/models/qwen", body, content_type="application/json")
    assert response.status_code == 422, response.content
    assert response.json()["error"]["field"] == "image"
    assert CatalogModel.objects.get(key="qwen").image == "vllm/vllm-openai:latest"


@pytest.mark.django_db
def test_it_admits_more_images_by_pattern_from_the_setting(key_client, settings):
    settings.ARBITER_ALLOWED_IMAGES = ["example.com/team/*"]
    response = post(key_client, {**HUB, "image": FOREIGN, "command": ["vllm", "serve"]})
    assert response.status_code == 201, response.content
    # The list replaces the default: the vLLM image is now another image.
    response = post(key_client, {**HUB, "key": "other", "served_name": "other"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "image"


@pytest.mark.django_db
def test_it_refuses_the_image_in_the_dashboard_form_next_to_the_field(alice_client):
    response = alice_client.post("/catalog/add/hub", {**HUB_FORM, "hub-image": FOREIGN})
    assert response.status_code == 422
    html = response.content.decode()
    assert 'id="id_hub-image-error"' in html and "ARBITER_ALLOWED_IMAGES" in html
    assert not CatalogModel.objects.exists()


@pytest.mark.django_db
def test_it_refuses_the_image_in_the_seed_file_and_writes_nothing(tmp_path: Path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "models:\n"
        "  - {key: good, hub_repo: Qwen/Qwen3-0.6B}\n"
        f"  - {{key: bad, hub_repo: Qwen/Qwen3-8B, image: '{FOREIGN}', command: []}}\n"
    )
    with pytest.raises(CatalogError) as error:
        seed_catalog_file(path)
    assert any(
        p.startswith(f"{path}: models[1].image:") and "ARBITER_ALLOWED_IMAGES" in p
        for p in error.value.problems
    ), error.value.problems
    assert not CatalogModel.objects.exists()


# -- unique served names -------------------------------------------------------------


@pytest.mark.django_db
def test_it_refuses_a_create_with_a_taken_served_name_with_a_409_naming_the_field(key_client):
    hub_model("qwen", served_name="qwen-chat")
    response = post(
        key_client, {"key": "other", "hub_repo": "Qwen/Qwen3-8B", "served_name": "qwen-chat"}
    )
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert (error["type"], error["field"], error["model"]) == ("conflict", "served_name", "qwen")
    assert list(CatalogModel.objects.values_list("key", flat=True)) == ["qwen"]


@pytest.mark.django_db
def test_it_counts_a_defaulted_served_name_as_taken_too(key_client):
    """Two models of one hub repo: the second must name itself."""
    hub_model("qwen")  # served as Qwen/Qwen3-0.6B
    response = post(key_client, {"key": "qwen-ngc", "hub_repo": "Qwen/Qwen3-0.6B"})
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "served_name"
    response = post(
        key_client, {"key": "qwen-ngc", "hub_repo": "Qwen/Qwen3-0.6B", "served_name": "qwen-ngc"}
    )
    assert response.status_code == 201, response.content


@pytest.mark.django_db
def test_it_refuses_an_update_to_another_models_served_name(key_client):
    hub_model("qwen", served_name="qwen-chat")
    hub_model("other", hub_repo="Qwen/Qwen3-8B", served_name="other-chat")
    body = {"hub_repo": "Qwen/Qwen3-8B", "served_name": "qwen-chat"}
    response = key_client.put("/api/models/other", body, content_type="application/json")
    assert response.status_code == 409, response.content
    assert response.json()["error"]["field"] == "served_name"
    assert CatalogModel.objects.get(key="other").served_name == "other-chat"
    # Keeping its own served name is no conflict.
    body = {"hub_repo": "Qwen/Qwen3-8B", "served_name": "other-chat", "port": 8001}
    response = key_client.put("/api/models/other", body, content_type="application/json")
    assert response.status_code == 200, response.content
    assert CatalogModel.objects.get(key="other").port == 8001


@pytest.mark.django_db
def test_it_shows_the_taken_served_name_in_the_dashboard_form(alice_client):
    hub_model("first", hub_repo="Qwen/Qwen3-8B", served_name="Qwen/Qwen3-8B")
    response = alice_client.post("/catalog/add/hub", HUB_FORM)  # defaults to the repo
    assert response.status_code == 422
    html = response.content.decode()
    assert 'id="id_hub-served_name-error"' in html and "already the served name" in html
    assert list(CatalogModel.objects.values_list("key", flat=True)) == ["first"]


@pytest.mark.django_db
def test_it_refuses_seed_file_duplicates_within_the_file_and_against_the_database():
    entries = [
        {"key": "a", "hub_repo": "Qwen/Qwen3-0.6B"},
        {"key": "b", "hub_repo": "Qwen/Qwen3-0.6B", "image": "nvcr.io/nvidia/vllm:25.09-py3"},
    ]
    with pytest.raises(CatalogError) as error:
        seed_catalog(entries, source="catalog.yaml")
    assert error.value.problems == [
        'catalog.yaml: models[1].served_name: duplicate served name "Qwen/Qwen3-0.6B" '
        "(also models[0]; served names are unique, set served_name)"
    ]
    assert not CatalogModel.objects.exists()

    hub_model("kept", served_name="b-served")
    entries = [{"key": "b", "hub_repo": "Qwen/Qwen3-8B", "served_name": "b-served"}]
    with pytest.raises(CatalogError) as error:
        seed_catalog(entries, source="catalog.yaml")
    assert "model 'b'" in error.value.problems[0] and "'kept'" in error.value.problems[0]
    assert list(CatalogModel.objects.values_list("key", flat=True)) == ["kept"]


@pytest.mark.django_db(transaction=True)
def test_it_leaves_one_model_after_two_creates_at_once_with_one_served_name():
    """On SQLite the IMMEDIATE transaction serialises the two writers, so the second's
    check sees the first's row; on PostgreSQL both checks may pass and the unique
    constraint refuses the second insert. Either way: one model, and a 409 naming
    served_name."""
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def create(key: str) -> None:
        cleaned = validate_catalog_fields(
            {"key": key, "hub_repo": "Qwen/Qwen3-0.6B", "served_name": "shared"}
        )
        start.wait()
        try:
            create_model(cleaned)
            outcomes.append("created")
        except Exception as error:  # noqa: BLE001 - the outcome is what is compared
            outcomes.append(getattr(error, "field", type(error).__name__))
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(key,)) for key in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["created", "served_name"]
    assert CatalogModel.objects.filter(served_name="shared").count() == 1

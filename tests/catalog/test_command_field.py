"""The launch command in the catalog: the add form, the model card, the API's answers."""

import pytest
from django.test import Client

from arbiter.inventory import apply_inventory, load_inventory
from catalog.loader import seed_catalog_file
from catalog.models import CatalogModel
from tests.catalog.conftest import hub_model
from tests.catalog.test_catalog_page import HUB_FORM

pytestmark = pytest.mark.django_db
NVIDIA = "nvcr.io/nvidia/vllm:25.09-py3"


@pytest.mark.parametrize(
    ("image", "typed", "stored"),
    [
        (NVIDIA, "", ["vllm", "serve"]),  # blank: the image's default
        ("vllm/vllm-openai:latest", "", []),
        (NVIDIA, "  vllm   serve ", ["vllm", "serve"]),
        (NVIDIA, "[]", []),  # the image's own entrypoint
        ("example.com/team/server:1", "python3 -m vllm.entrypoints.openai.api_server", None),
    ],
)
def test_it_stores_the_command_from_the_form(alice_client, settings, image, typed, stored):
    settings.ARBITER_ALLOWED_IMAGES = [*settings.ARBITER_ALLOWED_IMAGES, "example.com/team/*"]
    data = {**HUB_FORM, "hub-image": image, "hub-command": typed}
    response = alice_client.post("/catalog/add/hub", data)
    if stored is None:  # "-m" starts with '-': refused next to the field
        assert response.status_code == 422
        assert 'id="id_hub-command-error"' in response.content.decode()
        assert not CatalogModel.objects.exists()
        return
    assert response.status_code == 200, response.content.decode()[:2000]
    assert CatalogModel.objects.get(key="qwen3-8b").command == stored


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("vllm;id", "no spaces or shell characters"),
        ("vllm $(id)", "no spaces or shell characters"),
        ("vllm `id`", "no spaces or shell characters"),
        ("--model x", "must not start with &#x27;-&#x27;"),  # HTML-escaped
    ],
)
def test_it_refuses_a_bad_command_in_the_form_next_to_the_field(alice_client, typed, message):
    response = alice_client.post("/catalog/add/hub", {**HUB_FORM, "hub-command": typed})
    assert response.status_code == 422
    html = response.content.decode()
    error_id = 'id="id_hub-command-error"'
    assert message in html[html.index(error_id) : html.index("</span>", html.index(error_id))]
    assert not CatalogModel.objects.exists()


def test_it_refuses_an_unknown_image_without_a_command_naming_the_command(alice_client, settings):
    settings.ARBITER_ALLOWED_IMAGES = [*settings.ARBITER_ALLOWED_IMAGES, "example.com/team/*"]
    data = {**HUB_FORM, "hub-image": "example.com/team/server:1"}
    response = alice_client.post("/catalog/add/hub", data)
    assert response.status_code == 422
    html = response.content.decode()
    assert 'id="id_hub-command-error"' in html and "knows no launch command" in html
    assert not CatalogModel.objects.exists()


def test_it_shows_the_command_on_the_model_card(bob):
    hub_model("ngc", image=NVIDIA, command=["vllm", "serve"])
    hub_model("openai", command=[])
    client = Client()
    client.force_login(bob)
    html = client.get("/catalog/").content.decode()

    def card(key: str) -> str:
        start = html.index(f'id="model-{key}"')
        return html[start : html.index("</article>", start)]

    assert '<code>vllm serve</code> <span class="muted">MODEL …</span>' in card("ngc")
    assert "image entrypoint" in card("openai")
    assert "image entrypoint" not in card("ngc")


def test_it_shows_the_command_in_the_api(key_client):
    hub_model("ngc", image=NVIDIA, command=["vllm", "serve"])
    body = key_client.get("/api/models/ngc").json()
    assert body["command"] == ["vllm", "serve"]


def test_it_gives_the_demo_catalogs_nvidia_model_the_images_default_command(sim_cluster):
    apply_inventory(load_inventory(sim_cluster.config_path))
    seed_catalog_file(sim_cluster.cluster.catalog_path)
    model = CatalogModel.objects.get(key="qwen3-600m-ngc")
    assert (model.image, model.command) == (NVIDIA, ["vllm", "serve"])
    assert CatalogModel.objects.get(key="qwen3-600m").command == []  # vllm/vllm-openai


def test_it_says_on_the_model_card_who_chooses_the_utilisation(bob):
    hub_model("auto", gpu_memory_utilization=None)
    hub_model("fixed", gpu_memory_utilization=0.42)
    client = Client()
    client.force_login(bob)
    html = client.get("/catalog/").content.decode()
    assert "utilisation None" not in html
    assert "chosen per host" in html[html.index('id="model-auto"') :]
    fixed = html[html.index('id="model-fixed"') :]
    assert "utilisation 0.42" in fixed[: fixed.index("</article>")]

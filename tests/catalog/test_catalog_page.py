"""The dashboard's catalog page: list with badges, lazy disk status, add forms."""

import pytest
from django.contrib.auth.models import Group
from django.test import AsyncClient, Client

from arbiter.engine.ssh import get_pool
from catalog.models import CatalogModel
from tests.catalog.conftest import acreate_local, hub_model, local_model

HUB_FORM = {
    "hub-key": "qwen3-8b",
    "hub-kind": "llm",
    "hub-hub_repo": "Qwen/Qwen3-8B",
    "hub-image": "vllm/vllm-openai:latest",
    "hub-port": "8000",
    "hub-container_name": "arbiter-vllm",
    "hub-tensor_parallel_size": "1",
    "hub-gpu_memory_utilization": "0.9",
    "hub-estimated_vram_mib": "20000",
    "hub-extra_engine_flags": "--enable-prefix-caching\r\n--kv-cache-dtype=fp8\r\n",
}
LOCAL_FORM = {
    "local-key": "ft",
    "local-kind": "llm",
    "local-local_path": "/models/team/run-1",
    "local-image": "vllm/vllm-openai:latest",
    "local-port": "8000",
    "local-container_name": "arbiter-vllm",
    "local-tensor_parallel_size": "1",
    "local-gpu_memory_utilization": "0.9",
    "local-estimated_vram_mib": "0",
}


@pytest.fixture
def alice_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.mark.django_db
def test_it_lists_models_with_the_local_badge(bob):
    hub_model("qwen", display_name="Qwen small")
    local_model("ft", display_name="Our fine-tune")
    client = Client()
    # An operator: the swap and add forms are not shown to viewers (dashboard/roles.py).
    bob.groups.add(Group.objects.get_or_create(name="operator")[0])
    client.force_login(bob)
    response = client.get("/catalog/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="model-qwen"' in html and 'id="model-ft"' in html
    ft = html[html.index('id="model-ft"') : html.index("</article>", html.index('id="model-ft"'))]
    assert '<span class="badge badge-local">local</span>' in ft
    assert "badge-local" not in html[html.index('id="model-qwen"') :]
    assert 'hx-get="/catalog/ft/disk"' in html
    assert 'data-model="ft"' in html and 'action="/api/swap"' in html
    assert "+ Add model" in html and "+ Add local model" in html
    assert 'href="/catalog/"' in html  # the top bar links here


@pytest.mark.django_db
def test_it_sends_anonymous_visitors_to_the_login_page():
    response = Client().get("/catalog/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


@pytest.mark.django_db
def test_it_adds_a_hub_model_from_the_form(alice_client):
    response = alice_client.post("/catalog/add/hub", HUB_FORM)
    assert response.status_code == 302
    assert response["Location"] == "/catalog/#model-qwen3-8b"
    model = CatalogModel.objects.get(key="qwen3-8b")
    assert model.extra_engine_flags == ["--enable-prefix-caching", "--kv-cache-dtype=fp8"]
    assert (model.served_name, model.estimated_vram_mib) == ("Qwen/Qwen3-8B", 20000)


@pytest.mark.django_db
def test_it_adds_a_local_model_from_the_form(alice_client):
    response = alice_client.post("/catalog/add/local", LOCAL_FORM)
    assert response.status_code == 302
    model = CatalogModel.objects.get(key="ft")
    assert (model.local_path, model.is_local, model.served_name) == (
        "/models/team/run-1",
        True,
        "ft",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("source", "changes", "field", "message"),
    [
        ("local", {"local-local_path": "/models/../etc"}, "local_path", "must not contain"),
        ("local", {"local-local_path": "/models-evil/x"}, "local_path", "allowed model root"),
        ("local", {"local-local_path": "/models/x%2e%2e"}, "local_path", "URL-encoded"),
        ("hub", {"hub-hub_repo": "noslash"}, "hub_repo", "must be `org/name`"),
        ("hub", {"hub-port": "70000"}, "port", "1-65535"),
        ("hub", {"hub-port": "abc"}, "port", "Enter a whole number"),
        ("hub", {"hub-image": "Vllm"}, "image", "docker image reference"),
        (
            "hub",
            {"hub-extra_container_args": "--privileged"},
            "extra_container_args",
            "not an allowed",
        ),
        ("hub", {"hub-served_name": "-x"}, "served_name", "must not start with"),
        ("hub", {"hub-key": "bad key"}, "key", "letters, digits"),
    ],
)
def test_it_shows_each_problem_next_to_its_field(alice_client, source, changes, field, message):
    data = {**(HUB_FORM if source == "hub" else LOCAL_FORM), **changes}
    response = alice_client.post(f"/catalog/add/{source}", data)
    assert response.status_code == 422
    html = response.content.decode()
    error_id = f'id="id_{source}-{field}-error"'
    assert error_id in html
    error_text = html[html.index(error_id) : html.index("</span>", html.index(error_id))]
    assert message in error_text
    assert f'id="add-{source}" open' in html  # the form stays open with what was typed
    assert not CatalogModel.objects.exists()


@pytest.mark.django_db
def test_it_refuses_a_duplicate_key_in_the_form(alice_client):
    hub_model("qwen3-8b")
    response = alice_client.post("/catalog/add/hub", HUB_FORM)
    assert response.status_code == 422
    assert "already exists" in response.content.decode()
    assert CatalogModel.objects.get(key="qwen3-8b").hub_repo == "Qwen/Qwen3-0.6B"


@pytest.mark.django_db(transaction=True)
async def test_it_renders_the_disk_status_fragment(sim_hosts, alice):
    sim_hosts.hosts["sim-b"].fs.add_file("/models/team/run-1/model.safetensors", size=2048)
    await acreate_local("ft", "/models/team/run-1")
    client = AsyncClient()
    await client.aforce_login(alice)
    try:
        response = await client.get("/catalog/ft/disk")
    finally:
        await get_pool().close()
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="disk-ft"' in html
    assert 'class="disk-present" data-host="sim-b"' in html
    assert 'class="disk-absent" data-host="sim-a"' in html
    assert "6.0\xa0KB" in html  # 4096 (directory) + 2048
    assert "<button" not in html  # a local model is neither downloaded nor deleted


@pytest.mark.django_db
def test_the_disk_fragment_needs_a_login():
    response = Client().get("/catalog/ft/disk")
    assert response.status_code == 302

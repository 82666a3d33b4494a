"""The catalog page (dashboard/catalog.py): list with badges, lazy disk status, and its htmx
writes (add forms, Swap in, Download, Delete from disk), each answering a fragment."""

import asyncio
from html import unescape

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, User
from django.test import AsyncClient, Client

from arbiter.engine.ssh import get_pool
from arbiter.models import AuditEvent, Service, Swap
from catalog.models import CatalogModel
from tests.catalog.conftest import acreate_hub, acreate_local, hub_model, local_model

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
    assert 'id="swap-ft"' in html and 'hx-post="/catalog/ft/swap"' in html
    assert 'hx-post="/catalog/add/hub"' in html and 'hx-post="/catalog/add/local"' in html
    assert "catalog.js" not in html  # no hand-written client: htmx posts the forms
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
    assert response.status_code == 200
    html = response.content.decode()
    # A fresh form with the notice, and the list with the new card, swapped out of band.
    assert 'id="add-hub" open' in html and "Added qwen3-8b to the catalog." in html
    assert 'id="id_hub-key"' in html and 'value="qwen3-8b"' not in html
    assert '<section id="catalog-models" class="catalog-models" hx-swap-oob="true">' in html
    assert 'id="model-qwen3-8b"' in html
    model = CatalogModel.objects.get(key="qwen3-8b")
    assert model.extra_engine_flags == ["--enable-prefix-caching", "--kv-cache-dtype=fp8"]
    assert (model.served_name, model.estimated_vram_mib) == ("Qwen/Qwen3-8B", 20000)


@pytest.mark.django_db
def test_it_adds_a_local_model_from_the_form(alice_client):
    response = alice_client.post("/catalog/add/local", LOCAL_FORM)
    assert response.status_code == 200
    assert 'id="model-ft"' in response.content.decode()
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
def test_it_needs_a_login_for_the_disk_fragment():
    response = Client().get("/catalog/ft/disk")
    assert response.status_code == 302


# -- the page's htmx writes: the API's checks, audit rows and messages ------------------


def _person(role: str) -> Client:
    from tests.conftest import grant

    user = User.objects.create_user(f"{role}-person", password="pw-12345")
    client = Client()
    client.force_login(grant(user, role))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/catalog/add/hub",
        "/catalog/qwen/swap",
        "/catalog/qwen/download",
        "/catalog/qwen/disk/delete",
    ],
)
def test_it_answers_403_to_a_viewer_on_every_write(path):
    hub_model("qwen")
    response = _person("viewer").post(path, {**HUB_FORM, "host": "sim-a"})
    assert response.status_code == 403
    assert "needs the operator role" in response.content.decode()
    assert not AuditEvent.objects.exists()
    assert not Swap.objects.exists()
    assert list(CatalogModel.objects.values_list("key", flat=True)) == ["qwen"]


@pytest.mark.django_db
def test_it_audits_a_model_added_from_the_form(alice_client):
    alice_client.post("/catalog/add/hub", HUB_FORM)
    event = AuditEvent.objects.get(action="catalog.create")
    assert (event.actor_name, event.object_id) == ("alice", "qwen3-8b")
    assert event.after["hub_repo"] == "Qwen/Qwen3-8B"


@pytest.mark.django_db
def test_it_swaps_a_model_in_and_sends_the_browser_to_the_dashboard(sim_hosts, alice_client):
    hub_model("qwen")
    response = alice_client.post("/catalog/qwen/swap", {"host": "sim-b"})
    assert response.status_code == 204
    assert response["HX-Redirect"] == "/"
    swap = Swap.objects.get()
    assert (swap.model_key, swap.host.name, swap.dry_run) == ("qwen", "sim-b", False)
    assert swap.requested_by == "alice"
    event = AuditEvent.objects.get(action="swap.start")
    assert event.object_id == str(swap.pk) and event.after["host"] == "sim-b"


@pytest.mark.django_db
def test_it_shows_why_a_swap_was_refused_by_its_form(sim_hosts, alice_client):
    hub_model("qwen")
    response = alice_client.post("/catalog/qwen/swap", {"host": "nope"})
    assert response.status_code == 404
    html = response.content.decode()
    assert 'id="swap-qwen"' in html
    error = html[html.index('class="swap-error') : html.index("</span>", html.index("swap-error"))]
    assert unescape(error).endswith("no host named 'nope' in the inventory")
    assert not Swap.objects.exists() and not AuditEvent.objects.exists()


async def _poll_download(client: AsyncClient, key: str) -> str:
    """The card's log polled as the page does, until it answers 286 (nothing runs)."""
    for _ in range(300):
        response = await client.get(f"/catalog/{key}/downloads")
        if response.status_code == 286:
            return response.content.decode()
        assert response.status_code == 200
        assert 'hx-trigger="every 300ms"' in response.content.decode()
        await asyncio.sleep(0.1)
    raise AssertionError("the download did not end")


@pytest.fixture
async def alice_async(alice):
    client = AsyncClient()
    await client.aforce_login(alice)
    yield client
    await get_pool().close()


@pytest.mark.django_db(transaction=True)
async def test_it_downloads_from_the_page_with_a_log_then_deletes(sim_hosts, alice_async):
    await acreate_hub("qwen")
    response = await alice_async.post("/catalog/qwen/download", {"host": "sim-a"})
    assert response.status_code == 200
    html = response.content.decode()
    # The log polls while it runs; the host's button is disabled (out of band).
    assert 'id="disk-progress-qwen"' in html and 'hx-get="/catalog/qwen/downloads"' in html
    assert "Downloading Qwen/Qwen3-0.6B to sim-a…" in html
    button = html[html.index('id="disk-button-qwen-sim-a"') :]
    assert 'hx-swap-oob="true"' in button.split(">")[0] and " disabled" in button.split(">")[0]

    final = await _poll_download(alice_async, "qwen")
    assert "Fetching 4 files: 100%" in final and 'hx-trigger="every' not in final
    assert '<div id="disk-qwen" class="model-disk" hx-swap-oob="true">' in final
    assert 'class="disk-present" data-host="sim-a"' in final
    assert 'class="disk-absent" data-host="sim-b"' in final
    assert (
        'id="disk-error-qwen" class="disk-error error" role="alert" hx-swap-oob="true"></p>'
        in final
    )
    folder = "/home/arbiter/.cache/huggingface/hub/models--Qwen--Qwen3-0.6B"
    assert sim_hosts.hosts["sim-a"].fs.kind(folder) == "dir"
    event = await AuditEvent.objects.aget(action="catalog.download")
    assert (event.actor_name, event.object_id, event.after["host"]) == ("alice", "qwen", "sim-a")

    response = await alice_async.post("/catalog/qwen/disk/delete", {"host": "sim-a"})
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="disk-qwen"')  # the swap's target, asked again
    assert 'class="disk-absent" data-host="sim-a"' in html
    assert sim_hosts.hosts["sim-a"].fs.kind(folder) is None
    event = await AuditEvent.objects.aget(action="catalog.disk_delete")
    assert event.before == {"host": "sim-a", "present": True}


@pytest.mark.django_db(transaction=True)
async def test_it_names_the_host_a_download_was_refused_for(sim_hosts, alice_async):
    await acreate_hub("qwen")
    response = await alice_async.post("/catalog/qwen/download", {"host": "nope"})
    assert response.status_code == 404
    html = response.content.decode()
    assert "nope: no host named 'nope' in the inventory" in unescape(html)
    assert 'hx-trigger="every' not in html  # nothing runs, nothing polls
    assert not await AuditEvent.objects.filter(action="catalog.download").aexists()


@pytest.mark.django_db(transaction=True)
async def test_it_shows_why_a_delete_was_refused(sim_hosts, alice_async):
    await acreate_hub("qwen")
    await sync_to_async(Service.objects.filter(name="sim-a-vllm").update)(
        loaded_model="Qwen/Qwen3-0.6B"
    )
    response = await alice_async.post("/catalog/qwen/disk/delete", {"host": "sim-a"})
    assert response.status_code == 409
    html = response.content.decode()
    assert 'id="disk-qwen"' in html
    assert "sim-a: 'qwen' is being served on sim-a" in unescape(html)
    assert not any(c.argv[:1] == ["rm"] for c in sim_hosts.commands("sim-a"))
    assert not await AuditEvent.objects.filter(action="catalog.disk_delete").aexists()

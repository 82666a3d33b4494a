"""Every catalog field's rules, through the API: 422 naming the field, nothing written."""

import pytest

from catalog.models import CatalogModel
from catalog.validation import catalog_field_problems, validate_catalog_fields
from tests.catalog.conftest import post

pytestmark = pytest.mark.django_db

HUB = {"key": "qwen", "hub_repo": "Qwen/Qwen3-0.6B"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"key": ""}, "key"),
        ({"key": "has space"}, "key"),
        ({"key": "-lead"}, "key"),
        ({"key": "a.b"}, "key"),
        ({"key": "k" * 64}, "key"),
        ({"display_name": "x\x00"}, "display_name"),
        ({"kind": "video"}, "kind"),
        ({"hub_repo": "noslash"}, "hub_repo"),
        ({"hub_repo": "a/b/c"}, "hub_repo"),
        ({"hub_repo": "-org/name"}, "hub_repo"),
        ({"hub_repo": "org/-name"}, "hub_repo"),
        ({"hub_repo": "org/na me"}, "hub_repo"),
        ({"hub_repo": "org/na--me"}, "hub_repo"),
        ({"hub_repo": "org/..name"}, "hub_repo"),
        ({"hub_repo": "org/" + "n" * 97}, "hub_repo"),
        ({"hub_repo": "org/name;rm -rf /"}, "hub_repo"),
        ({"hub_revision": "--upload"}, "hub_revision"),
        ({"hub_revision": "main branch"}, "hub_revision"),
        ({"hub_revision": "../x"}, "hub_revision"),
        ({"served_name": "-served"}, "served_name"),
        ({"served_name": "a b"}, "served_name"),
        ({"served_name": "a\nb"}, "served_name"),
        ({"served_name": "s" * 201}, "served_name"),
        ({"image": "Vllm"}, "image"),
        ({"image": "vllm/vllm-openai:latest --privileged"}, "image"),
        ({"image": "--rm"}, "image"),
        ({"image": "vllm/vllm-openai:"}, "image"),
        ({"image": "vllm/vllm-openai@sha256:abc"}, "image"),
        ({"image": ""}, "image"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "8000"}, "port"),
        ({"port": True}, "port"),
        ({"container_name": "a"}, "container_name"),
        ({"container_name": "-name"}, "container_name"),
        ({"container_name": "na me"}, "container_name"),
        ({"container_name": "name/x"}, "container_name"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"tensor_parallel_size": 65}, "tensor_parallel_size"),
        ({"tensor_parallel_hosts": ["a b"]}, "tensor_parallel_hosts"),
        ({"tensor_parallel_hosts": ["a", "a"], "tensor_parallel_size": 2}, "tensor_parallel_hosts"),
        ({"tensor_parallel_hosts": ["a"]}, "tensor_parallel_hosts"),
        ({"tensor_parallel_hosts": ["a", "b"], "tensor_parallel_size": 3}, "tensor_parallel_size"),
        ({"multi_node": "mpi"}, "multi_node"),
        ({"multi_node": None}, "multi_node"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"max_model_len": -5}, "max_model_len"),
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 1.01}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": -0.5}, "gpu_memory_utilization"),
        ({"extra_engine_flags": ["enable-prefix-caching"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["-x"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--a b"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--kv=fp8 --x"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--x=\n"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--port=9"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--served-model-name=other"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--nnodes=2"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--headless"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--distributed-executor-backend=mp"]}, "extra_engine_flags"),
        ({"extra_engine_flags": "--x"}, "extra_engine_flags"),
        ({"extra_container_args": ["--privileged"]}, "extra_container_args"),
        ({"extra_container_args": ["--env=HF_TOKEN=x"]}, "extra_container_args"),
        ({"extra_container_args": ["-e", "A=1"]}, "extra_container_args"),
        ({"extra_container_args": ["--volume=/:/host"]}, "extra_container_args"),
        ({"extra_container_args": ["--network=host"]}, "extra_container_args"),
        ({"extra_container_args": ["--env=VLLM_HOST_IP=10.0.0.1"]}, "extra_container_args"),
        ({"extra_container_args": ["--env=VLLM_API_KEY=k"]}, "extra_container_args"),
        ({"extra_container_args": ["--env=NCCL_DEBUG=$(id)"]}, "extra_container_args"),
        ({"extra_container_args": ["--device=/dev/nvidia0"]}, "extra_container_args"),
        ({"extra_container_args": ["--shm-size"]}, "extra_container_args"),
        ({"extra_container_args": ["--shm-size=16 g"]}, "extra_container_args"),
        ({"extra_container_args": ["--ipc=container:other"]}, "extra_container_args"),
        ({"extra_container_args": ["--ulimit=rtprio=99"]}, "extra_container_args"),
        ({"extra_container_args": ["--cap-add=SYS_ADMIN"]}, "extra_container_args"),
        ({"extra_container_args": ["--ipc=host\n"]}, "extra_container_args"),
        ({"extra_container_args": ["--shm-size=16g\n--privileged"]}, "extra_container_args"),
        ({"extra_engine_flags": ["--enforce-eager\n"]}, "extra_engine_flags"),
        ({"extra_engine_flags": ["--chat-template=caf\u00e9"]}, "extra_engine_flags"),
        ({"container_name": "arbiter\n"}, "container_name"),
        ({"image": "vllm/vllm-openai:latest\n"}, "image"),
        ({"hub_repo": "org/name\n"}, "hub_repo"),
        ({"hub_revision": "main\n"}, "hub_revision"),
        ({"estimated_vram_mib": -1}, "estimated_vram_mib"),
        ({"idle_unload_seconds": 59}, "idle_unload_seconds"),
        ({"idle_unload_seconds": 0}, "idle_unload_seconds"),
        ({"idle_unload_seconds": "600"}, "idle_unload_seconds"),
        ({"idle_unload_seconds": 1.5}, "idle_unload_seconds"),
        ({"restart": 3}, "restart"),
        ({"restart": {"max": 0, "window_seconds": 600}}, "restart.max"),
        ({"restart": {"max": 101, "window_seconds": 600}}, "restart.max"),
        ({"restart": {"max": "3", "window_seconds": 600}}, "restart.max"),
        ({"restart": {"window_seconds": 600}}, "restart.max"),
        ({"restart": {"max": 3}}, "restart.window_seconds"),
        ({"restart": {"max": 3, "window_seconds": 59}}, "restart.window_seconds"),
        ({"restart": {"max": 3, "window_seconds": True}}, "restart.window_seconds"),
        ({"restart": {"max": 3, "window_seconds": 600, "backoff": 5}}, "restart.backoff"),
        ({"default_host": "no-such-host"}, "default_host"),
        ({"local_path": "/models/x"}, "hub_repo,local_path"),
        ({"hub_repo": None}, "hub_repo,local_path"),
        ({"hub_rep": "x/y"}, "hub_rep"),
    ],
)
def test_it_names_the_bad_field(key_client, changes, field):
    body = {**HUB, **changes}
    response = post(key_client, body)
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["field"] == field
    assert error["type"] == "validation_error"
    assert not CatalogModel.objects.exists()


def test_it_rejects_a_local_path_with_traversal_through_the_api(key_client):
    response = post(key_client, {"key": "ft", "local_path": "/models/%2e%2e%2fetc"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "local_path"
    assert not CatalogModel.objects.exists()


def test_it_rejects_a_revision_on_a_local_model(key_client):
    response = post(key_client, {"key": "ft", "local_path": "/models/a", "hub_revision": "main"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "hub_revision"


def test_it_lists_every_problem_in_the_error_body(key_client):
    response = post(key_client, {**HUB, "port": 0, "image": "BAD", "container_name": "x"})
    error = response.json()["error"]
    assert [e["field"] for e in error["errors"]] == ["image", "port", "container_name"]


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        ({"image": "nvcr.io/nvidia/vllm:25.09-py3"}, "image", "nvcr.io/nvidia/vllm:25.09-py3"),
        (
            {"image": "localhost:5000/team/vllm@sha256:" + "a" * 64, "command": ["vllm", "serve"]},
            "image",
            None,
        ),
        ({"image": "vllm/vllm-openai"}, "image", "vllm/vllm-openai"),
        ({"hub_revision": "refs/pr/12"}, "hub_revision", "refs/pr/12"),
        ({"hub_revision": "a" * 40}, "hub_revision", "a" * 40),
        ({"gpu_memory_utilization": 1}, "gpu_memory_utilization", 1.0),
        ({"max_model_len": None}, "max_model_len", None),
        ({"idle_unload_seconds": None}, "idle_unload_seconds", None),
        ({"idle_unload_seconds": 60}, "idle_unload_seconds", 60),
        ({"restart": None}, "restart", None),
        (
            {"restart": {"max": 3, "window_seconds": 600}},
            "restart",
            {"max": 3, "window_seconds": 600},
        ),
        ({"port": 65535}, "port", 65535),
        ({"container_name": "vllm.main_1-a"}, "container_name", "vllm.main_1-a"),
        (
            {"extra_engine_flags": ["--enable-prefix-caching", "--kv-cache-dtype=fp8"]},
            "extra_engine_flags",
            ["--enable-prefix-caching", "--kv-cache-dtype=fp8"],
        ),
        (
            {"extra_container_args": ["--shm-size=16g", "--ipc=host", "--ulimit=memlock=-1"]},
            "extra_container_args",
            ["--shm-size=16g", "--ipc=host", "--ulimit=memlock=-1"],
        ),
        (
            {"extra_container_args": ["--device=/dev/infiniband", "--env=NCCL_IB_DISABLE=0"]},
            "extra_container_args",
            ["--device=/dev/infiniband", "--env=NCCL_IB_DISABLE=0"],
        ),
        ({"multi_node": "ray"}, "multi_node", "ray"),
        ({}, "multi_node", "native"),
        (
            {"tensor_parallel_hosts": ["a", "b"], "tensor_parallel_size": 2},
            "tensor_parallel_hosts",
            ["a", "b"],
        ),
    ],
)
def test_it_accepts_a_good_value(settings, changes, field, value):
    # A private registry image is well-formed; the deployment must also allow it.
    settings.ARBITER_ALLOWED_IMAGES = [*settings.ARBITER_ALLOWED_IMAGES, "localhost:5000/team/*"]
    cleaned = validate_catalog_fields({**HUB, **changes})
    assert cleaned[field] == (value if value is not None else changes[field])


def test_it_defaults_the_served_name_to_the_repo_or_the_key():
    assert validate_catalog_fields(HUB)["served_name"] == "Qwen/Qwen3-0.6B"
    local = validate_catalog_fields({"key": "ft", "local_path": "/models/ft"})
    assert local["served_name"] == "ft"


def test_it_reports_both_source_fields_when_neither_is_given():
    _cleaned, problems = catalog_field_problems({"key": "x"})
    assert problems[0][0] == "hub_repo,local_path"
    assert "neither" in problems[0][1]


def test_it_stores_and_shows_the_restart_policy(key_client):
    policy = {"max": 3, "window_seconds": 900}
    response = post(key_client, {**HUB, "restart": policy})
    assert response.status_code == 201, response.content
    assert response.json()["restart"] == policy
    model = CatalogModel.objects.get(key="qwen")
    assert (model.restart_max, model.restart_window_seconds) == (3, 900)
    assert key_client.get("/api/models/qwen").json()["restart"] == policy
    off = post(key_client, {**HUB, "key": "other", "served_name": "other"})
    assert off.json()["restart"] is None

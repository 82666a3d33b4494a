"""How a service's load and unload routes are called: a method and an optional JSON body.

Ollama unloads a model with `POST /api/generate {"model": ..., "keep_alive": 0}`
(ollama docs/api.md, "Unload a model"), ComfyUI with `POST /free {"unload_models": true,
"free_memory": true}` (ComfyUI server.py): the inventory carries the method and body,
validated like every other field, and the documented example file loads as shipped.
"""

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from arbiter.inventory import InventoryError, load_inventory
from arbiter.models import Service

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "cluster.example.yaml"

OLLAMA = """\
hosts:
  - name: ws
    address: 127.0.0.1
services:
  - name: ollama
    host: ws
    kind: http
    base_url: http://127.0.0.1:11434
    health_path: /api/version
    capabilities: [llm]
"""


def load(tmp_path, extra: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(OLLAMA + extra)
    return load_inventory(path)


def problems(tmp_path, extra: str) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        load(tmp_path, extra)
    return caught.value.problems


def test_it_reads_ollamas_unload_call(tmp_path):
    lines = (
        "    unload_route: /api/generate\n"
        '    unload_body: {model: "llama3.2", keep_alive: 0}\n'
        "    load_route: /api/generate\n"
        "    load_method: POST\n"
        '    load_body: {model: "llama3.2"}\n'
    )
    inventory = load(tmp_path, lines)
    [service] = inventory.services
    assert service.unload_method == "POST"
    assert service.unload_body == {"model": "llama3.2", "keep_alive": 0}
    assert service.load_body == {"model": "llama3.2"}


def test_it_defaults_the_method_to_post_and_the_body_to_none(tmp_path):
    [service] = load(tmp_path, "    unload_route: /unload\n").services
    assert (service.unload_method, service.unload_body) == ("POST", None)
    assert (service.load_method, service.load_body) == ("POST", None)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            "    unload_route: /x\n    unload_method: post\n",
            'services[0].unload_method: must be one of "GET", "POST", "PUT", "PATCH", '
            '"DELETE", got "post"',
        ),
        (
            "    unload_route: /x\n    unload_body: keep_alive=0\n",
            "services[0].unload_body: must be a mapping or a list (sent as JSON), "
            'got "keep_alive=0"',
        ),
        (
            "    unload_body: {keep_alive: 0}\n",
            "services[0].unload_body: needs unload_route (the body is sent there)",
        ),
        (
            "    load_route: /x\n    load_method: GET\n    load_body: {a: 1}\n",
            "services[0].load_body: a GET request carries no body",
        ),
        (
            "    load_route: /x\n    load_body: {at: 2024-01-01}\n",
            "services[0].load_body: must hold only JSON values",
        ),
    ],
)
def test_it_names_bad_calls_by_field(tmp_path, lines, expected):
    found = problems(tmp_path, lines)
    assert any(expected in problem for problem in found), found


@pytest.mark.django_db
def test_it_loads_the_documented_example_with_manage_py_load_inventory():
    out = StringIO()
    call_command("load_inventory", str(EXAMPLE), stdout=out)
    services = {s.name: s for s in Service.objects.all()}
    assert {"vllm-spark-1", "ollama", "comfyui", "stt-whisper"} <= set(services)
    ollama, comfy, whisper = services["ollama"], services["comfyui"], services["stt-whisper"]
    assert (ollama.kind, ollama.health_path) == ("http", "/api/version")
    assert (ollama.unload_route, ollama.unload_method) == ("/api/generate", "POST")
    assert ollama.unload_body == {"model": "llama3.2", "keep_alive": 0}
    assert ollama.load_body == {"model": "llama3.2"}
    assert (comfy.health_path, comfy.unload_route) == ("/system_stats", "/free")
    assert comfy.unload_body == {"unload_models": True, "free_memory": True}
    assert (whisper.health_path, whisper.unload_route, whisper.load_route) == ("/health", "", "")
    assert services["vllm-spark-1"].health_path == "/health"

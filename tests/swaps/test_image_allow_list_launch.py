"""A catalog model stored before ARBITER_ALLOWED_IMAGES changed: pre-flight's catalog
check names the image and the setting, and a swap of it fails before any container
is stopped or started (issue 13, item 3)."""

import pytest
from asgiref.sync import sync_to_async

from tests.swaps.conftest import make_model, start_swap, wait_for_state

pytestmark = pytest.mark.django_db(transaction=True)
FINAL = ["complete", "failed", "cancelled"]


async def test_it_fails_preflight_for_a_model_whose_image_is_no_longer_allowed(
    cluster, dispatcher, aclient, settings
):
    # Stored while the default list allowed it; then the deployment narrowed the list.
    await sync_to_async(make_model)("pinned", served_name="pinned")
    settings.ARBITER_ALLOWED_IMAGES = ["vllm/vllm-openai:v0.11.*"]

    response = await aclient.post(
        "/api/swap/pinned/validate", {"host": "sim-b"}, "application/json"
    )
    assert response.status_code == 200, response.content
    checks = {check["name"]: check for check in response.json()["checks"]}
    assert checks["catalog"]["ok"] is False
    assert checks["catalog"]["detail"].startswith("image: 'vllm/vllm-openai:latest' is not allowed")
    assert "ARBITER_ALLOWED_IMAGES (vllm/vllm-openai:v0.11.*)" in checks["catalog"]["detail"]

    before = len(cluster.commands("sim-b"))
    swap = await wait_for_state((await start_swap(aclient, "pinned")).json()["id"], FINAL)
    assert swap.state == "failed"
    assert "ARBITER_ALLOWED_IMAGES" in swap.error
    sent = [c.argv for c in cluster.commands("sim-b")[before:]]
    assert not any(argv[:2] in (["docker", "run"], ["docker", "stop"]) for argv in sent)

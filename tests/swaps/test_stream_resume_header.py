"""Last-Event-ID values that are not plain ASCII digits: the stream starts from the
beginning (or `after`), never a 500 (issue 13, item 8)."""

import pytest

from tests.swaps.conftest import log_lines, start_swap, wait_for_state
from tests.swaps.test_swap_stream import read_stream

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "header",
    [
        "\u00b2",  # str.isdigit() is true for it; int() refuses it
        "9" * 5000,  # int() refuses strings this long (int_max_str_digits)
        "-1",
    ],
)
async def test_it_streams_everything_for_a_last_event_id_that_is_not_ascii_digits(
    cluster, dispatcher, aclient, header
):
    cluster.inject("sim-b", fail_start=True)
    swap_id = (await start_swap(aclient, "qwen3-small")).json()["id"]
    await wait_for_state(swap_id, "failed")
    response = await aclient.get(f"/api/swap/{swap_id}/stream", headers={"Last-Event-ID": header})
    assert response.status_code == 200
    received = await read_stream(response, deadline=5)
    lines = [data["text"] for _, name, data in received if name == "line"]
    assert lines == await log_lines(swap_id)
    assert received[-1][1] == "state"

"""A new swap is picked up at once: its creation wakes the dispatcher instead of waiting
for the next poll (issue 17, item 5). The dispatchers here poll every 30 s, so only the
wake-up can start a swap within the bound."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from arbiter.engine.leader import own_connection_params
from arbiter.engine.swaps.dispatch import SwapDispatcher
from arbiter.engine.swaps.wakeup import CHANNEL, SwapWakeup
from tests.swaps.conftest import start_swap, swap_row, wait_for_state

SLOW_POLL = 30.0


async def test_it_claims_a_swap_created_through_the_api_at_once(cluster, aclient):
    dispatcher = SwapDispatcher(interval=SLOW_POLL)
    task = asyncio.create_task(dispatcher.run_forever())
    try:
        await asyncio.sleep(0.5)  # its first round is done; the next poll is 30 s away
        created = time.monotonic()
        response = await start_swap(aclient, "qwen3-small")
        assert response.status_code == 202, response.content
        answered = time.monotonic()
        swap_id = response.json()["id"]
        while (await swap_row(swap_id)).state == "pending":
            assert time.monotonic() - answered < 1.0, "the swap waited for the poll"
            await asyncio.sleep(0.01)
        print(
            f"\nanswered in {answered - created:.3f} s; claimed "
            f"{time.monotonic() - answered:.3f} s after the answer"
        )
        swap = await wait_for_state(swap_id, ["complete", "failed"], timeout=60)
        assert swap.state == "complete", swap.error
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.django_db(transaction=True)
async def test_it_wakes_the_dispatcher_on_a_notify_from_another_connection():
    """The path between processes: NOTIFY on PostgreSQL, sent on a connection of its own
    (as another serve process would), reaches the listening dispatcher."""
    if connection.vendor != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; on SQLite the in-process wake-up only")
    import psycopg

    wakeup = SwapWakeup()
    wakeup.start()
    try:
        await wakeup.wait(5.0)  # the listener sets the event once it listens: consume it
        params = await sync_to_async(own_connection_params)("arbiter-test notifier")
        with psycopg.connect(**params) as other:
            with other.transaction():
                other.execute("SELECT pg_notify(%s, '')", [CHANNEL])
                sent = time.monotonic()
                waited = asyncio.create_task(wakeup.wait(SLOW_POLL))
                await asyncio.sleep(0.3)
                assert not waited.done(), "woken before the notifying transaction committed"
                sent = time.monotonic()
            await waited
        took = time.monotonic() - sent
        assert took < 2.0, f"the notification took {took:.2f} s"
    finally:
        await wakeup.close()


def test_it_polls_health_often_at_first_and_once_a_second_in_a_long_load():
    from datetime import timedelta

    from arbiter.engine.swaps.machine import health_poll_interval

    seconds = [health_poll_interval(timedelta(seconds=s)) for s in (0, 1, 5, 9, 600)]
    assert seconds == pytest.approx([0.1, 0.2, 0.6, 1.0, 1.0])
    assert health_poll_interval(timedelta(seconds=-3)) == pytest.approx(0.1)  # clock skew

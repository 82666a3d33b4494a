"""Swap outcomes are written to the webhook outbox in the final state's transaction."""

import pytest
from django.db import transaction

from arbiter.engine.swaps.store import record_transition
from arbiter.models import Host, Swap
from coordination.models import WebhookEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def swap():
    host = Host.objects.create(name="spark-1", address="10.0.0.1")
    return Swap.objects.create(model_key="qwen", host=host, state=Swap.WAITING_HEALTHY)


@pytest.mark.parametrize(
    ("state", "event_type"), [(Swap.COMPLETE, "swap_complete"), (Swap.FAILED, "swap_failed")]
)
def test_it_writes_the_outcome_event(swap, state, event_type):
    record_transition(swap.pk, state, error="boom" if state == Swap.FAILED else "")
    event = WebhookEvent.objects.get()
    assert event.event_type == event_type
    assert event.payload["swap_id"] == swap.pk
    assert event.payload["model"] == "qwen"
    assert event.payload["host"] == "spark-1"
    assert event.payload["state"] == state
    assert event.payload["finished_at"] is not None


def test_it_fires_nothing_for_a_cancelled_swap(swap):
    record_transition(swap.pk, Swap.CANCELLED)
    assert not WebhookEvent.objects.exists()


def test_it_fires_nothing_for_a_dry_run(swap):
    Swap.objects.filter(pk=swap.pk).update(dry_run=True)
    record_transition(swap.pk, Swap.COMPLETE)
    assert not WebhookEvent.objects.exists()


def test_it_writes_no_event_when_the_final_state_rolls_back(swap):
    with pytest.raises(RuntimeError), transaction.atomic():
        record_transition(swap.pk, Swap.COMPLETE)
        raise RuntimeError("the transaction fails after the state was written")
    assert not WebhookEvent.objects.exists()
    assert Swap.objects.get(pk=swap.pk).state == Swap.WAITING_HEALTHY

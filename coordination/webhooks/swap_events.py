"""Swap outcomes become webhook events, written in the transaction of the final state."""

from arbiter.models import Swap
from coordination.webhooks import emit_event

EVENT_FOR_STATE = {Swap.COMPLETE: "swap_complete", Swap.FAILED: "swap_failed"}


def swap_payload(swap: Swap) -> dict:
    return {
        "swap_id": swap.pk,
        "model": swap.model_key,
        "host": swap.host.name,
        "state": swap.state,
        "kind": swap.kind,  # "swap", or "restart" (the model's restart policy)
        "error": swap.error,
        "requested_by": swap.requested_by,
        "lock_generation": swap.lock_generation,
        "created_at": swap.created_at,
        "started_at": swap.started_at,
        "finished_at": swap.finished_at,
    }


def on_swap_finished(sender, *, swap_id: int, state: str, dry_run: bool, **kwargs) -> None:
    """Emit swap_complete / swap_failed (a cancelled swap and a dry run fire nothing)."""
    event_type = EVENT_FOR_STATE.get(state)
    if event_type is None or dry_run:
        return
    swap = Swap.objects.select_related("host").get(pk=swap_id)
    emit_event(event_type, swap_payload(swap))

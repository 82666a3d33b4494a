"""The one helper publishers call to push live updates to dashboards."""

from typing import TypedDict

from channels.layers import get_channel_layer

DASHBOARD_GROUP = "dashboard"


class DashboardMessage(TypedDict):
    type: str  # always "dashboard.fragment"
    html: str  # a fragment whose root element has a stable id and hx-swap-oob


async def publish_fragment(html: str) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    await layer.group_send(DASHBOARD_GROUP, DashboardMessage(type="dashboard.fragment", html=html))


# -- swaps -----------------------------------------------------------------------------
# Swap progress goes to two groups: one per swap (a page following that swap) and one
# for every swap (the dashboard's swap panel). Consumers joined to them handle the
# message types "swap.line" (method `swap_line`) and "swap.state" (method `swap_state`).
SWAPS_GROUP = "swaps"


def swap_group(swap_id: int) -> str:
    return f"swap.{swap_id}"


class SwapLineMessage(TypedDict):
    type: str  # always "swap.line"
    swap_id: int
    seq: int
    at: str  # ISO 8601
    stream: str  # stdout / stderr / arbiter
    text: str


class SwapStateMessage(TypedDict):
    type: str  # always "swap.state"
    swap_id: int
    state: str
    at: str  # ISO 8601
    detail: str
    error: str
    final: bool


async def publish_swap_event(swap_id: int, message: SwapLineMessage | SwapStateMessage) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    await layer.group_send(swap_group(swap_id), message)
    await layer.group_send(SWAPS_GROUP, message)

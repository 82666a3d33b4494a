"""The dashboard socket: one group, fragments pushed by `dashboard/live.py`.

Pushed fragments are rendered once for every viewer; each socket cuts out the actions its
person may not take before sending (dashboard/roles.py). The level is read when the
socket connects: a changed role shows after a reload.
"""

import asyncio

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from arbiter.roles import level_of
from dashboard.auth import session_group
from dashboard.live import DASHBOARD_GROUP, DashboardMessage, remember_socket_loop
from dashboard.panels.cluster import clients_panel, hosts_panel, services_panel
from dashboard.panels.coordination import coordination_panels
from dashboard.panels.swaps import swap_panel
from dashboard.roles import for_level


def full_state() -> str:
    """Every panel, each marked for an out-of-band swap by its id."""
    return (
        hosts_panel(oob=True)
        + services_panel(oob=True)
        + clients_panel(oob=True)
        + swap_panel(oob=True)
        + coordination_panels(oob=True)
    )


class DashboardConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.level = await sync_to_async(level_of)(user)
        self.groups_joined = [DASHBOARD_GROUP]
        session_key = self.scope["session"].session_key
        if session_key:
            self.groups_joined.append(session_group(session_key))
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        remember_socket_loop(asyncio.get_running_loop())
        # A (re)connect always starts from the full current state.
        await self.send(text_data=for_level(await sync_to_async(full_state)(), self.level))

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def session_ended(self, message: dict) -> None:
        """The user logged out: this socket must not keep showing the cluster."""
        await self.close(code=4401)

    async def dashboard_fragment(self, message: DashboardMessage) -> None:
        """Forward a rendered fragment; htmx swaps it out-of-band by its id."""
        await self.send(text_data=for_level(message["html"], self.level))

"""The "chat" delivery format: one plain message for a Slack-compatible incoming webhook.

An incoming webhook takes a JSON POST with a `text` field and posts it to its channel
(Slack: docs.slack.dev/messaging/sending-messages-using-incoming-webhooks, answering
200 `ok`, or 400 `invalid_payload` / `no_text`, 403 `action_prohibited`, 404
`channel_not_found` / `no_service`, 410 `channel_is_archived`, 500 `rollup_error`; the
status codes: api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks).
Mattermost's incoming webhooks take the same `{"text": ...}` with `Content-Type:
application/json` (without it they expect Slack's form-encoded `payload=`) and answer
200 `ok` (developers.mattermost.com/integrate/webhooks/incoming), and Discord accepts
Slack's payload at `<webhook url>/slack`
(discord.com/developers/docs/resources/webhook#execute-slackcompatible-webhook). The
text uses no markup beyond plain words and one emoji, so it reads the same in all three
(Mattermost renders Markdown, Slack its own mrkdwn: plain words mean the same in both).

Delivery is the same as for Standard Webhooks (retries, Retry-After, the delivery log,
410 disables the endpoint); the signature headers are sent too: chat services ignore
headers they do not know, and a relay in between can still verify the message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from coordination.models import WebhookEvent

Payload = dict[str, Any]


def _when(value: Any) -> str:
    """An ISO timestamp from the payload as `HH:MM:SS UTC`; anything else as given."""
    if not isinstance(value, str) or not value:
        return "?"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _with(detail: Any) -> str:
    return f": {detail}" if detail else ""


MESSAGES: dict[str, Callable[[Payload], str]] = {
    "swap_complete": lambda p: (
        f"✅ {'Restart' if p.get('kind') == 'restart' else 'Swap'} {p.get('swap_id')} "
        f"complete: {p.get('model')} is served on {p.get('host')}"
        f" (requested by {p.get('requested_by') or 'nobody'})"
    ),
    "swap_failed": lambda p: (
        f"❌ {'Restart' if p.get('kind') == 'restart' else 'Swap'} {p.get('swap_id')} of "
        f"{p.get('model')} on {p.get('host')} failed{_with(p.get('error'))}"
    ),
    "lock.force_released": lambda p: (
        f"🔓 The swap lock held by {p.get('old_holder') or '?'} was force-released by "
        f"{p.get('actor') or '?'}{_with(p.get('reason'))}"
    ),
    "lease.force_released": lambda p: (
        f"🔓 The lease on {p.get('model')} at {p.get('host')} held by "
        f"{p.get('old_holder') or '?'} was force-released by "
        f"{p.get('actor') or '?'}{_with(p.get('reason'))}"
    ),
    "warm_up_missed": lambda p: (
        f"⚠️ Warm-up of {p.get('model')} on {p.get('host')} for job {p.get('job_id')} "
        f"(run at {_when(p.get('run_at'))}) was missed{_with(p.get('reason'))}"
    ),
    "service_down": lambda p: (
        f"🔴 Service {p.get('service')} on {p.get('host')} is down"
        f"{_with(p.get('detail'))} (since {_when(p.get('since'))})"
    ),
    "service_recovered": lambda p: (
        f"🟢 Service {p.get('service')} on {p.get('host')} is up again "
        f"(since {_when(p.get('since'))})"
    ),
    "host_offline": lambda p: (
        f"🔴 Host {p.get('host')} is offline: {p.get('missed_samples')} samples missed"
        f"{_with(p.get('last_error'))} (last sample {_when(p.get('last_sample_at'))})"
    ),
    "host_online": lambda p: f"🟢 Host {p.get('host')} is online again",
    "restart_gave_up": lambda p: (
        f"🛑 Arbiter gave up restarting {p.get('model')} on {p.get('host')} "
        f"(service {p.get('service')}){_with(p.get('reason'))}"
    ),
    "webhook.test": lambda p: "Arbiter test message: this endpoint receives Arbiter's alerts",
}


def escape_control_characters(text: str) -> str:
    """Slack reads `&`, `<` and `>` as control characters (`<!channel>` notifies the
    whole channel, `<url|label>` is a link) and asks for them as `&amp;`, `&lt;`, `&gt;`
    (api.slack.com/reference/surfaces/formatting#escaping). The messages carry text from
    outside (a backend's error answer, a force release's reason), so they are escaped.
    Mattermost renders Markdown, which decodes these entities, and would otherwise turn
    `<!channel>` into `@channel` (mattermost/mattermost server/channels/app/slack.go,
    expandAnnouncement). Discord's /slack endpoint may show the entities as written
    (github.com/ppy/osu-web/pull/10043): a rare, readable blemish, where a silent
    channel-wide ping would not be."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chat_text(event_type: str, payload: Payload) -> str:
    render = MESSAGES.get(event_type)
    if render is None:  # a future event type still reaches people, if plainly
        text = f"Arbiter event {event_type}: {json.dumps(payload, sort_keys=True)}"
    else:
        text = render(payload)
    return escape_control_characters(text)


def chat_body(event: WebhookEvent) -> bytes:
    """The exact bytes POSTed for `event` to a chat endpoint."""
    text = chat_text(event.event_type, event.payload)
    return json.dumps({"text": text}, ensure_ascii=False).encode()

"""push_channel(): a mobile push channel chosen by name ("sns" or "outbox") with its options."""

from __future__ import annotations

import inspect
from typing import Any, Literal, get_args

from airflow_campaign.channels.base import Channel
from airflow_campaign.errors import CampaignError

PushChannelKind = Literal["sns", "outbox"]
PUSH_CHANNELS: tuple[str, ...] = get_args(PushChannelKind)


def _class(kind: str) -> type:
    from airflow_campaign.channels.outbox import OutboxChannel
    from airflow_campaign.channels.sns import SnsPushChannel

    classes: dict[str, type] = {"sns": SnsPushChannel, "outbox": OutboxChannel}
    if kind not in classes:
        raise CampaignError(
            f"channel={kind!r}: not a push channel; choose one of {', '.join(PUSH_CHANNELS)}."
        )
    return classes[kind]


def push_channel_options(kind: str) -> list[str]:
    """The options a push channel takes (the outbox's file extension is set by the delivery)."""
    return [p for p in inspect.signature(_class(kind)).parameters if p != "extension"]


def push_channel(kind: PushChannelKind, **options: Any) -> Channel:
    """A new, unopened channel: sns ``aws_conn_id``, ``threads``, ``region_name``, ``on_uncertain``;
    outbox ``folder``, ``null`` (one ``<log id>.json`` file per device)."""
    cls = _class(kind)
    allowed = push_channel_options(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise CampaignError(
            f"channel={kind!r}: unknown option(s) {', '.join(unknown)}; the {kind} channel takes {', '.join(allowed)}."
        )
    if kind == "outbox":
        options["extension"] = "json"
    channel: Channel = cls(**options)
    return channel

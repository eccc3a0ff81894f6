"""push_channel(): a mobile push channel chosen by name ("sns" or "outbox") with its options."""

from __future__ import annotations

from typing import Any, Literal, get_args

from airflow_campaign.channels.base import Channel
from airflow_campaign.channels.choose import build, options_of, pick

PushChannelKind = Literal["sns", "outbox"]
PUSH_CHANNELS: tuple[str, ...] = get_args(PushChannelKind)


def _class(kind: str) -> type:
    from airflow_campaign.channels.outbox import OutboxChannel
    from airflow_campaign.channels.sns import SnsPushChannel

    return pick(kind, {"sns": SnsPushChannel, "outbox": OutboxChannel}, "a push")


def push_channel_options(kind: str) -> list[str]:
    """The options a push channel takes (the outbox's file extension is set by the delivery)."""
    return options_of(_class(kind))


def push_channel(kind: PushChannelKind, **options: Any) -> Channel:
    """A new, unopened channel: sns ``aws_conn_id``, ``threads``, ``region_name``, ``on_uncertain``;
    outbox ``folder``, ``null`` (one ``<log id>.json`` file per device)."""
    return build(_class(kind), kind, options, extension="json")

"""sms_channel(): an SMS channel chosen by name ("sns" or "outbox") with its options.

Amazon's newer AWS End User Messaging SMS (``pinpoint-sms-voice-v2 SendTextMessage``) is not
offered yet: the test server this project tests against (moto) does not emulate it, and a
channel that was never run against anything is not shipped.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from airflow_campaign.channels.base import Channel
from airflow_campaign.channels.choose import build, options_of, pick

SmsChannelKind = Literal["sns", "outbox"]
SMS_CHANNELS: tuple[str, ...] = get_args(SmsChannelKind)


def _class(kind: str) -> type:
    from airflow_campaign.channels.outbox import OutboxChannel
    from airflow_campaign.channels.sns import SnsSmsChannel

    return pick(kind, {"sns": SnsSmsChannel, "outbox": OutboxChannel}, "an SMS")


def sms_channel_options(kind: str) -> list[str]:
    """The options an SMS channel takes (the outbox's file extension is set by the delivery)."""
    return options_of(_class(kind))


def sms_channel(kind: SmsChannelKind, **options: Any) -> Channel:
    """A new, unopened channel: ``sms_channel("sns", aws_conn_id="aws_default", threads=8)``.

    sns: ``aws_conn_id``, ``threads``, ``region_name``, ``max_price``, ``on_uncertain``;
    outbox: ``folder``, ``null`` (one ``<log id>.json`` file per message).
    """
    return build(_class(kind), kind, options, extension="json")

"""email_channel(): an email channel chosen by name ("smtp", "ses" or "outbox") with its options."""

from __future__ import annotations

from typing import Any, Literal, get_args

from airflow_campaign.channels.base import Channel
from airflow_campaign.channels.choose import build, options_of, pick

EmailChannelKind = Literal["smtp", "ses", "outbox"]
EMAIL_CHANNELS: tuple[str, ...] = get_args(EmailChannelKind)


def _class(kind: str) -> type:
    from airflow_campaign.channels.outbox import OutboxChannel
    from airflow_campaign.channels.ses import SesChannel
    from airflow_campaign.channels.smtp import SmtpChannel

    return pick(kind, {"smtp": SmtpChannel, "ses": SesChannel, "outbox": OutboxChannel}, "an email")


def email_channel_options(kind: str) -> list[str]:
    """The options an email channel takes (its constructor's parameters)."""
    return options_of(_class(kind))


def email_channel(kind: EmailChannelKind, **options: Any) -> Channel:
    """A new, unopened channel: ``email_channel("smtp", smtp_conn_id="smtp_relay", connections=4)``.

    smtp: ``smtp_conn_id``, ``connections``, ``timeout``, ``max_messages_per_connection``,
    ``on_uncertain``; ses: ``aws_conn_id``, ``threads``, ``configuration_set``, ``region_name``,
    ``on_uncertain``; outbox: ``folder``, ``null``.
    """
    return build(_class(kind), kind, options)

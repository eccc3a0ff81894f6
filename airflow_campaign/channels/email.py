"""email_channel(): an email channel chosen by name ("smtp", "ses" or "outbox") with its options."""

from __future__ import annotations

import inspect
from typing import Any, Literal, get_args

from airflow_campaign.channels.base import Channel
from airflow_campaign.errors import CampaignError

EmailChannelKind = Literal["smtp", "ses", "outbox"]
EMAIL_CHANNELS: tuple[str, ...] = get_args(EmailChannelKind)


def _classes() -> dict[str, type]:
    from airflow_campaign.channels.outbox import OutboxChannel
    from airflow_campaign.channels.ses import SesChannel
    from airflow_campaign.channels.smtp import SmtpChannel

    return {"smtp": SmtpChannel, "ses": SesChannel, "outbox": OutboxChannel}


def email_channel_options(kind: str) -> list[str]:
    """The options an email channel takes (its constructor's parameters)."""
    # the outbox's file extension is the delivery's to set (eml for email), not an option
    return [p for p in inspect.signature(_class(kind)).parameters if p != "extension"]


def _class(kind: str) -> type:
    classes = _classes()
    if kind not in classes:
        raise CampaignError(
            f"channel={kind!r}: not an email channel; choose one of {', '.join(EMAIL_CHANNELS)}."
        )
    return classes[kind]


def email_channel(kind: EmailChannelKind, **options: Any) -> Channel:
    """A new, unopened channel: ``email_channel("smtp", smtp_conn_id="smtp_relay", connections=4)``.

    smtp: ``smtp_conn_id``, ``connections``, ``timeout``, ``max_messages_per_connection``,
    ``on_uncertain``; ses: ``aws_conn_id``, ``threads``, ``configuration_set``, ``region_name``,
    ``on_uncertain``; outbox: ``folder``, ``null``.
    """
    cls = _class(kind)
    allowed = email_channel_options(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise CampaignError(
            f"channel={kind!r}: unknown option(s) {', '.join(unknown)}; the {kind} channel takes "
            f"{', '.join(allowed)}."
        )
    channel: Channel = cls(**options)
    return channel

"""Choosing a channel by name: the one lookup, option check and construction behind
``email_channel``, ``sms_channel`` and ``push_channel``."""

from __future__ import annotations

import inspect
from typing import Any

from airflow_campaign.channels.base import Channel
from airflow_campaign.errors import CampaignError


def pick(kind: str, classes: dict[str, type], what: str) -> type:
    """The channel class named ``kind`` among ``classes`` (``what``: "an email", "an SMS", "a push")."""
    if kind not in classes:
        raise CampaignError(f"channel={kind!r}: not {what} channel; choose one of {', '.join(classes)}.")
    return classes[kind]


def options_of(cls: type) -> list[str]:
    """The options a channel takes: its constructor's parameters. The outbox's file extension
    is the delivery's to set (eml for email, json for SMS and push), not an option."""
    return [p for p in inspect.signature(cls).parameters if p != "extension"]


def build(cls: type, kind: str, options: dict[str, Any], extension: str | None = None) -> Channel:
    """A new, unopened channel of ``cls``; an option it does not take is a CampaignError."""
    allowed = options_of(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise CampaignError(
            f"channel={kind!r}: unknown option(s) {', '.join(unknown)}; the {kind} channel takes {', '.join(allowed)}."
        )
    if extension is not None and "extension" in inspect.signature(cls).parameters:
        options = {**options, "extension": extension}
    channel: Channel = cls(**options)
    return channel

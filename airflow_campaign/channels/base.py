"""The channel protocol: open, send a batch of rendered messages, return a result per message, close."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Outcome = Literal["sent", "transient", "permanent"]


@dataclass(frozen=True)
class Envelope:
    """One rendered message, ready for a channel.

    :param log_id: the delivery log row it belongs to (results are matched on it).
    :param recipient: the address: an email address, a phone number or a push endpoint.
    :param message: the whole message: RFC 5322 bytes for email, a payload for SMS or push.
    :param sender: the envelope sender (email: the MAIL FROM / SES from address).
    """

    log_id: int
    recipient: str
    message: bytes
    sender: str = ""


@dataclass(frozen=True)
class Result:
    """What became of one envelope.

    ``sent`` (with the provider's message id when it gives one); ``transient`` (worth retrying
    later: SMTP 4xx, throttling, a dropped connection); ``permanent`` (the provider refused this
    recipient or message: SMTP 5xx, an invalid address), with the provider's words in ``error``.
    """

    log_id: int
    outcome: Outcome
    provider_id: str | None = None
    error: str | None = None


# Called before each message is handed to the provider; blocks until the global rate allows it.
Throttle = Callable[[], None]


class Channel(Protocol):
    """A transport. One instance serves one task try; it may use several connections inside."""

    name: str

    def open(self) -> None:
        """Connect (or check the destination); raise a CampaignError naming the connection on failure."""

    def send_batch(self, envelopes: Sequence[Envelope], throttle: Throttle | None = None) -> list[Result]:
        """Send ``envelopes``; one Result per envelope, in any order. Never raises for one message's fault."""

    def close(self) -> None:
        """Release connections (safe to call twice)."""

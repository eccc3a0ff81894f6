"""The channel protocol: open, send a batch of rendered messages, return a result per message, close."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Outcome = Literal["sent", "transient", "permanent", "held"]


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
    recipient or message: SMTP 5xx, an invalid address), with the provider's words in ``error``;
    ``held`` (the engine's gate kept it back: never handed to the provider).
    """

    log_id: int
    outcome: Outcome
    provider_id: str | None = None
    error: str | None = None


class Gate(Protocol):
    """What the delivery engine puts around each message a channel sends.

    ``before`` is called right before a message is handed to the provider: it blocks until the
    global rate allows it and its ledger row is recorded as ``sending``, and returns False when
    the message must not go (the task is stopping, or another try took the row over): the
    channel then skips it and reports it ``held``. ``after`` is called as soon as a message's
    result is known, so the ledger records it at once. Both are thread-safe.
    """

    def before(self, envelope: Envelope) -> bool: ...

    def after(self, result: Result) -> None: ...


class OpenGate:
    """A gate that lets every message through (a channel used on its own, a proof)."""

    def before(self, envelope: Envelope) -> bool:
        return True

    def after(self, result: Result) -> None:
        pass


OPEN = OpenGate()


def held(envelope: Envelope) -> Result:
    """The result of a message the gate held back: never handed to the provider."""
    return Result(envelope.log_id, "held", error="not sent: held back by the delivery engine")


class Channel(Protocol):
    """A transport. One instance serves one task try; it may use several connections inside.

    ``concurrency``: how many messages it may have in the provider's hands at once (its
    connections or threads). ``resend_safe``: sending a message again replaces it rather than
    delivering it twice (the outbox's files), so a message left in doubt by a killed try is
    sent again instead of being recorded ``unknown``.
    """

    name: str
    concurrency: int
    resend_safe: bool

    def check(self) -> None:
        """Check the configuration (the connection exists, the folder can be made) without
        sending or connecting; raise a CampaignError naming the option. Called before the
        delivery writes anything."""

    def open(self) -> None:
        """Connect (or check the destination); raise a CampaignError naming the connection on failure."""

    def send_batch(self, envelopes: Sequence[Envelope], gate: Gate = OPEN) -> list[Result]:
        """Send ``envelopes``; one Result per envelope, in any order. Never raises for one message's fault."""

    def close(self) -> None:
        """Release connections (safe to call twice)."""

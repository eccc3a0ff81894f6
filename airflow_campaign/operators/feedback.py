"""FeedbackOperator: bounces, complaints, STOP/START replies and push failures from SQS, applied to quarantine."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from airflow_campaign import options as opt
from airflow_campaign.durations import parse_duration
from airflow_campaign.errors import CampaignError, shown
from airflow_campaign.operators.base import CampaignBaseOperator, run_identity

Kind = Literal[
    "hard_bounce",
    "soft_bounce",
    "complaint",
    "delivery",
    "email_event",
    "stop",
    "start",
    "inbound",
    "push_failure",
    "push_event",
    "malformed",
]
Applied = Literal[
    "quarantined",
    "counted",
    "released",
    "not released",
    "superseded",
    "stored",
    "invalid address",
    "malformed",
]

DEFAULT_STOP_KEYWORDS = ("STOP", "ARRET", "STOPP", "UNSUBSCRIBE")
DEFAULT_START_KEYWORDS = ("START",)
#: SNS push ``DeliveryFailure`` types that mean the endpoint will never take a message again.
DISABLING_FAILURES = frozenset({"EndpointDisabled", "InvalidPlatformToken"})
#: The quarantine reason each kind of event gives its address.
REASONS: dict[str, str] = {
    "hard_bounce": "hard_bounce",
    "soft_bounce": "soft_bounces",
    "complaint": "complaint",
    "stop": "denylist",
    "push_failure": "invalid",
}
#: Quarantine reasons from weakest to strongest: an address keeps the strongest it was given. A
#: complaint is never lifted; a hard bounce is a fact about the address; a STOP is the person's
#: choice, which their START lifts; a soft bounce is temporary.
REASON_STRENGTH = ("soft_bounces", "invalid", "denylist", "hard_bounce", "complaint")
SQS_BATCH = 10  # ReceiveMessage and DeleteMessageBatch take at most 10
MAX_WAIT_SECONDS = 20  # SQS long polling
MAX_VISIBILITY_TIMEOUT = 43_200  # 12 hours
PROGRESS_EVERY = 10.0  # seconds between progress lines in the task log

_NEW = sql.Identifier("pg_temp", "feedback_new")
_EMAIL = re.compile(r"[^@\s<>\"(),;:\[\]\\]+@[^@\s<>\"(),;:\[\]\\]+\.[^@\s<>\"(),;:\[\]\\]+")
_PHONE = re.compile(r"\+[0-9]{3,15}")
_ARN = re.compile(r"arn:[\x21-\x7e]+")
_MAX_EMAIL = 254
_MAX_ARN = 512
_MAX_KEY = 200  # a longer identity is stored as its hash (the unique index holds it)
_MAX_TEXT = 2000  # detail, and an address refused as invalid, are cut to this


# ---- what arrives -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Event:
    """One row of ``campaign.feedback_events``, before the database decides what it did."""

    message_key: str
    item: int
    channel: str | None
    kind: Kind
    address: str | None
    detail: str | None
    applied: Applied
    sqs_message_id: str
    provider_message_id: str | None
    raw: Any
    occurred_at: str | None

    def record(self, seq: int) -> dict[str, Any]:
        """The row as one element of the batch's ``jsonb_to_recordset`` (``raw`` not copied)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "seq": seq}


@dataclasses.dataclass(frozen=True)
class Keywords:
    """The folded first words that opt a number out (``stop``) and back in (``start``)."""

    stop: frozenset[str]
    start: frozenset[str]

    @classmethod
    def of(cls, stop: Iterable[str], start: Iterable[str]) -> Keywords:
        return cls(frozenset(fold(w) for w in stop), frozenset(fold(w) for w in start))

    def kind(self, body: str) -> Kind:
        word = fold(first_word(body))
        if word and word in self.stop:
            return "stop"
        if word and word in self.start:
            return "start"
        return "inbound"


def fold(word: str) -> str:
    """``word`` without case, accents or surrounding punctuation: ``"Arrêt!"`` -> ``"arret"``."""
    decomposed = unicodedata.normalize("NFKD", word)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    start, end = 0, len(bare)
    while start < end and not bare[start].isalnum():
        start += 1
    while end > start and not bare[end - 1].isalnum():
        end -= 1
    return bare[start:end]


def first_word(text: str) -> str:
    words = text.split(maxsplit=1)
    return words[0] if words else ""


@dataclasses.dataclass(frozen=True)
class _Message:
    """What every event of one SQS message shares."""

    sqs_message_id: str
    key: str  # the SNS MessageId when enveloped, else the SQS MessageId
    raw: Any  # the body as stored: its JSON, or the text itself
    occurred_at: dt.datetime | None  # the SNS Timestamp, else SQS SentTimestamp

    def event(
        self,
        kind: Kind,
        applied: Applied,
        *,
        channel: str | None = None,
        address: str | None = None,
        detail: str | None = None,
        key: str | None = None,
        item: int = 0,
        provider_message_id: str | None = None,
        occurred_at: dt.datetime | None = None,
    ) -> Event:
        when = occurred_at or self.occurred_at
        return Event(
            message_key=key or self.key,
            item=item,
            channel=channel,
            kind=kind,
            address=address,
            detail=_cut(detail),
            applied=applied,
            sqs_message_id=self.sqs_message_id,
            provider_message_id=_cut(provider_message_id, _MAX_KEY),
            raw=self.raw,
            occurred_at=when.isoformat() if when else None,
        )

    def malformed(self, why: str) -> list[Event]:
        return [self.event("malformed", "malformed", detail=why)]


def read_message(message: Mapping[str, Any], keywords: Keywords) -> list[Event]:
    """The events one SQS message carries; an unreadable one is a single ``malformed`` event.

    Nothing in the message is trusted: a value of the wrong type, an address that is not one,
    a string PostgreSQL cannot store make the message (or the address) stored but not applied.
    """
    sqs_id = _text(message.get("MessageId")) or ""
    body = message.get("Body")
    body = _text(body, None) if isinstance(body, str) else ""
    attributes = message.get("Attributes") or {}
    sent_at = _epoch_ms(attributes.get("SentTimestamp")) if isinstance(attributes, Mapping) else None
    base = _Message(sqs_id, f"sqs:{sqs_id}", body, sent_at)
    try:
        doc = _loads(body or "")
    except ValueError as exc:
        return base.malformed(f"not JSON ({_cut(str(exc), 200)})")
    if not _storable(doc):
        return base.malformed("JSON holding a \\u0000 or a lone surrogate, which PostgreSQL cannot store")
    base = dataclasses.replace(base, raw=doc)
    if not isinstance(doc, dict):
        return base.malformed(f"a JSON {type(doc).__name__}, not an object")
    payload: Any = doc
    if isinstance(doc.get("Type"), str) and ("TopicArn" in doc or "Message" in doc):
        if doc["Type"] != "Notification":
            hint = " (confirm it: open its SubscribeURL)" if doc["Type"] == "SubscriptionConfirmation" else ""
            return base.malformed(f"an SNS {_cut(doc['Type'], 80)} message, not a notification{hint}")
        envelope_id = _text(doc.get("MessageId"))
        base = dataclasses.replace(
            base,
            key=_key("sns", envelope_id) or base.key,
            occurred_at=_timestamp(doc.get("Timestamp")) or base.occurred_at,
        )
        if not isinstance(doc.get("Message"), str):
            return base.malformed("an SNS notification whose Message is not text")
        try:
            payload = _loads(doc["Message"])
        except ValueError as exc:
            return base.malformed(f"an SNS notification whose Message is not JSON ({_cut(str(exc), 200)})")
        if not _storable(payload):
            return base.malformed("an SNS Message holding a \\u0000 or a lone surrogate")
        if not isinstance(payload, dict):
            return base.malformed(f"an SNS notification whose Message is a JSON {type(payload).__name__}")
    ses_type = payload.get("notificationType", payload.get("eventType"))
    if isinstance(ses_type, str):
        return _ses_events(base, ses_type, payload)
    if "originationNumber" in payload and "messageBody" in payload:
        return _sms_events(base, payload, keywords)
    if "EventType" in payload and "EndpointArn" in payload:
        return _push_events(base, payload)
    return base.malformed(
        "unknown shape: not an SES notification (notificationType/eventType), an inbound SMS"
        " (originationNumber, messageBody) or a push event (EventType, EndpointArn)"
    )


def _ses_events(base: _Message, ses_type: str, payload: dict[str, Any]) -> list[Event]:
    mail = _object(payload.get("mail"))
    provider_id = _text(mail.get("messageId"))
    if ses_type == "Bounce":
        return _ses_bounce(base, payload.get("bounce"), provider_id)
    if ses_type == "Complaint":
        complaint = payload.get("complaint")
        if not isinstance(complaint, dict):
            return base.malformed("an SES Complaint without a complaint object")
        recipients = _recipients(complaint.get("complainedRecipients"))
        if not recipients:
            return base.malformed("an SES Complaint without complainedRecipients")
        key = _key("ses", _text(complaint.get("feedbackId"))) or base.key
        when = _timestamp(complaint.get("timestamp"))
        detail = " ".join(
            f"{k}={_text(complaint.get(k))}"
            for k in ("complaintFeedbackType", "complaintSubType")
            if _text(complaint.get(k))
        )
        return [
            _email_event(base, "complaint", "quarantined", address, i, key, detail, provider_id, when)
            for i, address in enumerate(recipients)
        ]
    if ses_type == "Delivery":
        delivery = _object(payload.get("delivery"))
        listed = delivery.get("recipients")
        recipients = _unique([r for r in listed if isinstance(r, str)] if isinstance(listed, list) else [])
        when = _timestamp(delivery.get("timestamp"))
        response = _text(delivery.get("smtpResponse"))
        if not recipients:
            return [base.event("delivery", "stored", channel="email", provider_message_id=provider_id)]
        return [
            _email_event(base, "delivery", "stored", address, i, None, response, provider_id, when)
            for i, address in enumerate(recipients)
        ]
    return [
        base.event("email_event", "stored", channel="email", detail=ses_type, provider_message_id=provider_id)
    ]


def _ses_bounce(base: _Message, bounce: Any, provider_id: str | None) -> list[Event]:
    if not isinstance(bounce, dict):
        return base.malformed("an SES Bounce without a bounce object")
    bounce_type = bounce.get("bounceType")
    if bounce_type == "Permanent":
        kind: Kind = "hard_bounce"
        applied: Applied = "quarantined"
    elif bounce_type in ("Transient", "Undetermined"):
        kind, applied = "soft_bounce", "counted"
    else:
        return base.malformed(
            f"an SES Bounce of bounceType {shown(bounce_type, 80)}, not Permanent, Transient or Undetermined"
        )
    listed = bounce.get("bouncedRecipients")
    entries = [r for r in listed if isinstance(r, dict)] if isinstance(listed, list) else []
    recipients = _recipients(entries)
    if not recipients:
        return base.malformed("an SES Bounce without bouncedRecipients")
    by_address = {_normal_email(r.get("emailAddress")): r for r in reversed(entries)}
    key = _key("ses", _text(bounce.get("feedbackId"))) or base.key
    when = _timestamp(bounce.get("timestamp"))
    subtype = _text(bounce.get("bounceSubType")) or ""
    events = []
    for i, address in enumerate(recipients):
        entry = by_address.get(address, {})
        reply = " ".join(t for t in (_text(entry.get("status")), _text(entry.get("diagnosticCode"))) if t)
        detail = f"{bounce_type}/{subtype}" + (f": {reply}" if reply else "")
        events.append(_email_event(base, kind, applied, address, i, key, detail, provider_id, when))
    return events


def _email_event(
    base: _Message,
    kind: Kind,
    applied: Applied,
    address: str | None,
    item: int,
    key: str | None,
    detail: str | None,
    provider_id: str | None,
    when: dt.datetime | None,
) -> Event:
    valid = address is not None and len(address) <= _MAX_EMAIL and _EMAIL.fullmatch(address) is not None
    return base.event(
        kind,
        applied if valid else "invalid address",
        channel="email",
        address=address if valid else _cut(address),
        detail=detail,
        key=key,
        item=item,
        provider_message_id=provider_id,
        occurred_at=when,
    )


def _sms_events(base: _Message, payload: dict[str, Any], keywords: Keywords) -> list[Event]:
    body = payload.get("messageBody")
    if not isinstance(body, str):
        return base.malformed("an inbound SMS whose messageBody is not text")
    number = (_text(payload.get("originationNumber")) or "").strip()
    kind = keywords.kind(body)
    valid = _PHONE.fullmatch(number) is not None
    applied: Applied = "quarantined" if kind == "stop" else "not released" if kind == "start" else "stored"
    inbound_id = _text(payload.get("inboundMessageId"))
    return [
        base.event(
            kind,
            applied if valid else "invalid address",
            channel="sms",
            address=number if valid else _cut(number) or None,
            detail=body,
            key=_key("sms", inbound_id) if inbound_id else None,
            provider_message_id=inbound_id,
        )
    ]


def _push_events(base: _Message, payload: dict[str, Any]) -> list[Event]:
    arn = (_text(payload.get("EndpointArn")) or "").strip()
    event_type = _text(payload.get("EventType")) or ""
    failure = _text(payload.get("FailureType")) or ""
    disabling = event_type == "DeliveryFailure" and failure in DISABLING_FAILURES
    valid = len(arn) <= _MAX_ARN and _ARN.fullmatch(arn) is not None
    kind: Kind = "push_failure" if disabling else "push_event"
    applied: Applied = "quarantined" if disabling else "stored"
    message_id = _text(payload.get("MessageId"))
    detail = ": ".join(t for t in (event_type, failure, _text(payload.get("FailureMessage"))) if t)
    return [
        base.event(
            kind,
            applied if valid else "invalid address",
            channel="push",
            address=arn if valid else _cut(arn) or None,
            detail=detail,
            key=_key("push", message_id, event_type, arn) if message_id else None,
            provider_message_id=message_id,
            occurred_at=_timestamp(payload.get("Time")),
        )
    ]


def _recipients(listed: Any) -> list[str | None]:
    """The lowercased ``emailAddress`` of each recipient entry, each once (None: not text)."""
    if not isinstance(listed, list):
        return []
    return _unique([_normal_email(r.get("emailAddress")) for r in listed if isinstance(r, dict)])


def _object(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _normal_email(value: Any) -> str | None:
    text = _text(value)
    return text.strip().lower() if text is not None else None


def _unique(values: Iterable[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for v in values:
        seen.setdefault(v.strip().lower() if isinstance(v, str) else v, None)
    return list(seen)


def _loads(text: str) -> Any:
    """``json.loads`` refusing what JSON (and PostgreSQL's jsonb) has no number for: NaN, infinities."""

    def finite(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise ValueError(f"number {literal[:40]!r} is out of range")
        return value

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_float=finite, parse_constant=constant)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _storable(value: Any) -> bool:
    """Whether jsonb holds ``value``: no NUL character and no lone surrogate in any string."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _text(value: Any, limit: int | None = _MAX_TEXT) -> str | None:
    """A string from the message, storable in PostgreSQL (None when it is not a string)."""
    if not isinstance(value, str):
        return None
    clean = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return clean if limit is None else clean[:limit]


def _cut(value: str | None, limit: int = _MAX_TEXT) -> str | None:
    return None if value is None else value[:limit]


def _key(namespace: str, *parts: str | None) -> str | None:
    """The identity ``namespace:part:...``, or its hash when too long for the unique index."""
    if not parts or parts[0] is None or not parts[0]:
        return None
    key = ":".join([namespace, *(p or "" for p in parts)])
    if len(key) <= _MAX_KEY:
        return key
    return f"{namespace}#{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def _timestamp(value: Any) -> dt.datetime | None:
    """An ISO 8601 time (``2026-01-27T14:59:38.237Z``), or None when it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _epoch_ms(value: Any) -> dt.datetime | None:
    """SQS ``SentTimestamp`` (milliseconds since the epoch, as text)."""
    try:
        return dt.datetime.fromtimestamp(int(str(value)) / 1000, tz=dt.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# ---- options ------------------------------------------------------------------------------


def keywords(option: str, value: Any) -> list[str]:
    """A list of single words (letters or digits; case, accents and punctuation are ignored)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise CampaignError(
            f"{option}={shown(value)}: give a list of words, e.g. ['STOP', 'ARRET'] "
            f"(got a {type(value).__name__}); wrap one word in [...]."
        )
    out = []
    for i, word in enumerate(value):
        if not isinstance(word, str) or len(word.split()) != 1 or not fold(word):
            raise CampaignError(
                f"{option}[{i}]={shown(word)}: give one word with a letter or a digit, e.g. 'STOP'; a "
                "message matches when its first word is one of them (case and accents ignored)."
            )
        out.append(word)
    return out


def _check_disjoint(stop: Sequence[str], start: Sequence[str]) -> None:
    both = sorted({fold(w) for w in stop} & {fold(w) for w in start})
    if both:
        raise CampaignError(
            f"stop_keywords={list(stop)!r}, start_keywords={list(start)!r}: {both} in both (case and accents "
            "ignored); a word can only opt out or opt in: remove it from one of them."
        )


def queue_option(option: str, value: Any) -> str:
    """An SQS queue URL (``https://sqs.<region>.amazonaws.com/<account>/<name>``) or a queue name."""
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise CampaignError(
            f"{option}={shown(value)}: give the queue's URL, e.g. "
            "'https://sqs.eu-west-1.amazonaws.com/123456789012/campaign-feedback', or its name."
        )
    return value


# ---- the operator -------------------------------------------------------------------------


class FeedbackOperator(CampaignBaseOperator):
    """Read channel feedback from an Amazon SQS queue and apply it to the campaign database.

    The queue receives, usually through SNS topics: SES bounce, complaint and delivery
    notifications (or SES event publishing); two-way SMS replies; SNS push platform events.

    - a permanent bounce quarantines the address (``hard_bounce``); transient and undetermined
      bounces are counted, and ``soft_bounce_limit`` of them within ``soft_bounce_window``
      quarantine it (``soft_bounces``); a complaint quarantines it (``complaint``);
    - an SMS whose first word is a ``stop_keywords`` word quarantines the number
      (``denylist``); a ``start_keywords`` word lifts that denylist entry (no other reason);
    - a push ``DeliveryFailure`` of type ``EndpointDisabled`` or ``InvalidPlatformToken``
      disables the endpoint's ``campaign.app_subscriptions`` rows and quarantines it
      (``invalid``).

    Every event, with its raw message, is stored in ``campaign.feedback_events`` once: a
    message delivered again is recognised by its identity and not counted twice. A batch of up
    to 10 messages is applied in one transaction, and deleted from the queue only after it
    commits. A message that cannot be read is stored as ``malformed`` and deleted.

    :param queue: the SQS queue's URL, or its name (looked up with ``GetQueueUrl``). Templated.
    :param aws_conn_id: the amazon provider's AWS connection (credentials, region, endpoint).
    :param region_name: the AWS region, when the connection does not name one.
    :param max_messages: stop after receiving this many messages (the rest wait for the next run).
    :param wait_time_seconds: SQS long polling: how long a receive waits for messages (0 to 20);
        the run ends at the first receive that gets none.
    :param visibility_timeout: seconds a received message stays hidden from other readers
        (``None``: the queue's own setting); a message not deleted by then is received again.
    :param soft_bounce_limit: this many soft bounces of an address within ``soft_bounce_window``
        quarantine it.
    :param soft_bounce_window: e.g. ``"7d"``, ``"48h"`` or a timedelta.
    :param stop_keywords: first words of an SMS that opt its number out (case, accents and
        punctuation ignored: ``"Arrêt."`` is ``ARRET``).
    :param start_keywords: first words that opt it back in.
    :param on_empty: when the queue has no message: ``"continue"`` (zero counts), ``"skip"``
        or ``"fail"``.

    Returns the counts ``{"received", "events", "duplicates", "applied": {kind: n},
    "quarantined", "quarantine_updated", "released", "disabled_endpoints", "invalid",
    "malformed", "not_deleted"}``.
    """

    template_fields: Sequence[str] = ("queue",)
    ui_color = "#fbe3d5"

    option_checks: ClassVar[dict[str, opt.Check]] = {
        "queue": queue_option,
        "aws_conn_id": opt.optional(opt.name),
        "region_name": opt.optional(opt.name),
        "max_messages": opt.integer(1),
        "wait_time_seconds": opt.integer(0, MAX_WAIT_SECONDS),
        "visibility_timeout": opt.optional(opt.integer(0, MAX_VISIBILITY_TIMEOUT)),
        "soft_bounce_limit": opt.integer(1, 1000),
        "soft_bounce_window": opt.duration,
        "stop_keywords": keywords,
        "start_keywords": keywords,
    }

    def __init__(
        self,
        *,
        queue: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        max_messages: int = 10_000,
        wait_time_seconds: int = 1,
        visibility_timeout: int | None = None,
        soft_bounce_limit: int = 3,
        soft_bounce_window: str | dt.timedelta = "7d",
        stop_keywords: Sequence[str] = DEFAULT_STOP_KEYWORDS,
        start_keywords: Sequence[str] = DEFAULT_START_KEYWORDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_disjoint(stop_keywords, start_keywords)
        self.queue = queue
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.max_messages = max_messages
        self.wait_time_seconds = wait_time_seconds
        self.visibility_timeout = visibility_timeout
        self.soft_bounce_limit = soft_bounce_limit
        self.soft_bounce_window = soft_bounce_window
        self.stop_keywords = stop_keywords
        self.start_keywords = start_keywords

    def execute(self, context: Any) -> dict[str, Any]:
        identity = run_identity(context)
        window = dt.timedelta(seconds=parse_duration(self.soft_bounce_window, "soft_bounce_window"))
        words = Keywords.of(self.stop_keywords, self.start_keywords)
        totals: Counter[str] = Counter()
        applied: Counter[str] = Counter()
        client = self._sqs_client()
        try:
            url = self._queue_url(client)
            with self.autocommit_connection() as conn:
                self.require_schema(conn)
                conn.execute(
                    sql.SQL(
                        "CREATE TEMP TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY) ON COMMIT DELETE ROWS"
                    ).format(_NEW)
                )
                started = last_log = time.monotonic()
                while totals["received"] < self.max_messages:
                    messages = self._receive(client, url, self.max_messages - totals["received"])
                    if not messages:
                        break
                    events = [e for m in messages for e in read_message(m, words)]
                    with conn.transaction():
                        batch, by_kind = self._apply(conn, events, identity, window)
                    totals["not_deleted"] += self._delete(client, url, messages)
                    totals["received"] += len(messages)
                    totals.update(batch)
                    applied.update(by_kind)
                    if time.monotonic() - last_log >= PROGRESS_EVERY or totals["received"] == len(messages):
                        last_log = time.monotonic()
                        self._log_progress(totals, last_log - started)
        finally:
            client.close()
        result = _result(totals, applied)
        self._log_progress(totals, time.monotonic() - started, final=True)
        if not totals["received"]:
            self.check_empty_queue()
        return result

    def check_empty_queue(self) -> None:
        """Apply ``on_empty`` to a run that received no message (nothing was written)."""
        from airflow.sdk.exceptions import AirflowSkipException

        if self.on_empty == "skip":
            raise AirflowSkipException(f"{self.task_id}: queue {self.queue!r} is empty (on_empty='skip').")
        if self.on_empty == "fail":
            raise CampaignError(f"{self.task_id}: queue {self.queue!r} is empty and on_empty='fail'.")

    # ---- SQS ------------------------------------------------------------------------------

    def _sqs_client(self) -> Any:
        """The SQS client of the AWS connection (the SDK's retries off unless the connection sets
        some: a failed call fails the task, and its messages wait in the queue for the retry)."""
        from airflow_campaign.channels.ses import make_client

        feature = f"FeedbackOperator(aws_conn_id={self.aws_conn_id!r})"
        return make_client("sqs", self.aws_conn_id, self.region_name, 1, feature)

    def _queue_url(self, client: Any) -> str:
        queue = self.queue.strip()
        if queue.startswith(("https://", "http://")):
            return queue
        from botocore.exceptions import ClientError

        try:
            return str(client.get_queue_url(QueueName=queue)["QueueUrl"])
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise CampaignError(
                f"queue={self.queue!r}: no such queue for aws_conn_id={self.aws_conn_id!r} in "
                f"{client.meta.region_name} ({error.get('Code')}: {error.get('Message')}). Create it and "
                "subscribe it to the SNS topics, or give its URL."
            ) from exc

    def _receive(self, client: Any, url: str, left: int) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "QueueUrl": url,
            "MaxNumberOfMessages": min(SQS_BATCH, left),
            "WaitTimeSeconds": self.wait_time_seconds,
            "MessageSystemAttributeNames": ["SentTimestamp", "ApproximateReceiveCount"],
        }
        if self.visibility_timeout is not None:
            request["VisibilityTimeout"] = self.visibility_timeout
        return list(client.receive_message(**request).get("Messages") or [])

    def _delete(self, client: Any, url: str, messages: Sequence[Mapping[str, Any]]) -> int:
        """Delete a committed batch from the queue; return how many SQS could not delete."""
        from botocore.exceptions import BotoCoreError, ClientError

        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        try:
            failed = client.delete_message_batch(QueueUrl=url, Entries=entries).get("Failed") or []
        except (ClientError, BotoCoreError) as exc:
            raise CampaignError(
                f"queue={self.queue!r}: deleting {len(entries)} message(s) failed after their events were "
                f"committed ({exc}). They will be received again and skipped as already stored; if SQS "
                f"denied it, allow sqs:DeleteMessage on the queue to aws_conn_id={self.aws_conn_id!r}."
            ) from exc
        for entry in failed:
            self.log.warning(
                "could not delete message %s from the queue (%s: %s); it will be received again and skipped "
                "as already stored",
                messages[int(entry["Id"])].get("MessageId"),
                entry.get("Code"),
                entry.get("Message"),
            )
        return len(failed)

    def _log_progress(self, totals: Counter[str], elapsed: float, *, final: bool = False) -> None:
        self.log.info(
            "%s%d message(s) received%s: %d event(s) stored, %d already stored, %d address(es) quarantined "
            "(%d already), %d released, %d endpoint(s) disabled, %d invalid address(es), %d malformed; %.0f/s",
            "done: " if final else "",
            totals["received"],
            f" of at most {self.max_messages}" if not final else "",
            totals["events"],
            totals["duplicates"],
            totals["quarantined"],
            totals["quarantine_updated"],
            totals["released"],
            totals["disabled_endpoints"],
            totals["invalid"],
            totals["malformed"],
            totals["received"] / elapsed if elapsed > 0 else 0.0,
        )

    # ---- one batch, one transaction ---------------------------------------------------------

    def _apply(
        self,
        conn: psycopg.Connection,
        events: Sequence[Event],
        identity: Mapping[str, Any],
        window: dt.timedelta,
    ) -> tuple[Counter[str], Counter[str]]:
        """Store the batch's events and apply the new ones, set-based; (counts, new events by kind)."""
        store_events(conn, events, identity)
        supersede_keywords(conn)
        count_soft_bounces(conn, window, self.soft_bounce_limit)
        inserted, updated = quarantine(conn)
        released = release(conn)
        disabled = disable_endpoints(conn)
        rows = conn.execute(
            sql.SQL(
                "SELECT e.kind, e.applied, count(*) FROM campaign.feedback_events e JOIN {} n ON n.id = e.id"
                " GROUP BY 1, 2"
            ).format(_NEW)
        ).fetchall()
        by_kind: Counter[str] = Counter()
        counts: Counter[str] = Counter(
            quarantined=inserted,
            quarantine_updated=updated,
            released=released,
            disabled_endpoints=disabled,
        )
        for kind, applied, n in rows:
            counts["events"] += n
            if applied in ("malformed", "invalid address"):
                counts["malformed" if applied == "malformed" else "invalid"] += n
            else:
                by_kind[kind] += n
        counts["duplicates"] = len(events) - counts["events"]
        return counts, by_kind


def store_events(conn: psycopg.Connection, events: Sequence[Event], identity: Mapping[str, Any]) -> None:
    """Insert the events not stored yet (one statement); ``feedback_new`` lists them."""
    conn.execute(
        sql.SQL(
            "WITH stored AS (INSERT INTO campaign.feedback_events (message_key, item, channel, kind, address,"
            " detail, applied, sqs_message_id, provider_message_id, raw, occurred_at, dag_id, run_id, task_id)"
            " SELECT x.message_key, x.item, x.channel, x.kind, x.address, x.detail, x.applied,"
            " x.sqs_message_id, x.provider_message_id, x.raw, least(coalesce(x.occurred_at, now()), now()),"
            " %(dag_id)s, %(run_id)s, %(task_id)s"
            " FROM jsonb_to_recordset(%(events)s) AS x(seq integer, message_key text, item integer,"
            " channel text, kind text, address text, detail text, applied text, sqs_message_id text,"
            " provider_message_id text, raw jsonb, occurred_at timestamptz)"
            " ORDER BY x.seq"
            " ON CONFLICT (message_key, item) DO NOTHING RETURNING id)"
            " INSERT INTO {} (id) SELECT id FROM stored"
        ).format(_NEW),
        {
            "events": Jsonb([e.record(i) for i, e in enumerate(events)]),
            "dag_id": identity["dag_id"],
            "run_id": identity["run_id"],
            "task_id": identity["task_id"],
        },
    )


def supersede_keywords(conn: psycopg.Connection) -> None:
    """A new STOP or START older than another one of the same number does nothing: the latest wins
    (SQS does not keep order, and a batch can hold both)."""
    conn.execute(
        sql.SQL(
            "UPDATE campaign.feedback_events e SET applied = 'superseded', updated_at = now() FROM {} n"
            " WHERE e.id = n.id AND e.kind IN ('stop', 'start') AND e.applied <> 'invalid address'"
            " AND EXISTS (SELECT 1 FROM campaign.feedback_events f WHERE f.channel = 'sms'"
            " AND f.address = e.address AND f.kind IN ('stop', 'start') AND f.applied <> 'invalid address'"
            " AND (f.occurred_at, f.id) > (e.occurred_at, e.id))"
        ).format(_NEW)
    )


def count_soft_bounces(conn: psycopg.Connection, window: dt.timedelta, limit: int) -> None:
    """A new soft bounce quarantines its address when, counting the address's soft bounces stored
    up to it, ``limit`` of them fall within one ``window`` that contains it.

    Windows are read on when the bounces occurred, so bounces that arrive out of order still
    add up; of several in one batch, the one that reaches the limit quarantines.
    """
    soft = sql.SQL(
        "{alias}.channel = 'email' AND {alias}.address = e.address AND {alias}.kind = 'soft_bounce'"
        " AND {alias}.applied <> 'invalid address' AND {alias}.id <= e.id"
    )
    conn.execute(
        sql.SQL(
            "UPDATE campaign.feedback_events e SET applied = 'quarantined', updated_at = now() FROM {new} n"
            " WHERE e.id = n.id AND e.kind = 'soft_bounce' AND e.applied = 'counted'"
            " AND EXISTS (SELECT 1 FROM campaign.feedback_events s WHERE {soft_s}"
            " AND s.occurred_at BETWEEN e.occurred_at - %(window)s AND e.occurred_at"
            " AND (SELECT count(*) FROM campaign.feedback_events f WHERE {soft_f}"
            " AND f.occurred_at BETWEEN s.occurred_at AND s.occurred_at + %(window)s) >= %(limit)s)"
        ).format(
            new=_NEW,
            soft_s=soft.format(alias=sql.Identifier("s")),
            soft_f=soft.format(alias=sql.Identifier("f")),
        ),
        {"window": window, "limit": limit},
    )


def _strength(value: sql.Composable) -> sql.Composable:
    ranks = sql.SQL(", ").join(sql.Literal(r) for r in REASON_STRENGTH)
    return sql.SQL("array_position(ARRAY[{}]::text[], {})").format(ranks, value)


def quarantine(conn: psycopg.Connection) -> tuple[int, int]:
    """Upsert the addresses of the new ``quarantined`` events; (addresses added, already there).

    Addresses are stored lowercased (the Quarantined rule compares ``lower(address)``); an
    address keeps the strongest reason it was given, and ``event_count`` grows by its events.
    """
    reason = sql.SQL("CASE e.kind {} END").format(
        sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.Literal(k), sql.Literal(r)) for k, r in REASONS.items()
        )
    )
    ranks = sql.SQL(", ").join(sql.Literal(r) for r in REASON_STRENGTH)
    rows = conn.execute(
        sql.SQL(
            "WITH hits AS (SELECT e.channel, lower(e.address) AS address,"
            " (ARRAY[{ranks}]::text[])[max({strength})] AS reason, count(*) AS n, min(e.occurred_at) AS since"
            " FROM campaign.feedback_events e JOIN {new} n ON n.id = e.id"
            " WHERE e.applied = 'quarantined' GROUP BY 1, 2)"
            " INSERT INTO campaign.quarantine AS q (channel, address, reason, since, event_count)"
            " SELECT channel, address, reason, since, n FROM hits ORDER BY channel, address"
            " ON CONFLICT (channel, address) DO UPDATE SET"
            " reason = CASE WHEN {new_rank} > {old_rank} THEN EXCLUDED.reason ELSE q.reason END,"
            " event_count = q.event_count + EXCLUDED.event_count, updated_at = now()"
            " RETURNING (xmax = 0) AS inserted"
        ).format(
            ranks=ranks,
            strength=_strength(reason),
            new=_NEW,
            new_rank=_strength(sql.SQL("EXCLUDED.reason")),
            old_rank=_strength(sql.SQL("q.reason")),
        )
    ).fetchall()
    inserted = sum(1 for (new,) in rows if new)
    return inserted, len(rows) - inserted


def release(conn: psycopg.Connection) -> int:
    """A new START deletes its number's ``sms`` quarantine entry when its reason is ``denylist``."""
    cur = conn.execute(
        sql.SQL(
            "WITH starts AS (SELECT e.id, e.address FROM campaign.feedback_events e JOIN {} n ON n.id = e.id"
            " WHERE e.kind = 'start' AND e.applied = 'not released'),"
            " released AS (DELETE FROM campaign.quarantine q USING starts s WHERE q.channel = 'sms'"
            " AND q.address = lower(s.address) AND q.reason = 'denylist' RETURNING q.address)"
            " UPDATE campaign.feedback_events e SET applied = 'released', updated_at = now() FROM starts s"
            " WHERE e.id = s.id AND lower(s.address) IN (SELECT address FROM released)"
        ).format(_NEW)
    )
    return cur.rowcount


def disable_endpoints(conn: psycopg.Connection) -> int:
    """The app subscriptions whose endpoint a new push failure names are disabled; how many."""
    cur = conn.execute(
        sql.SQL(
            "UPDATE campaign.app_subscriptions a SET enabled = false, updated_at = now()"
            " FROM (SELECT DISTINCT e.address FROM campaign.feedback_events e JOIN {} n ON n.id = e.id"
            " WHERE e.kind = 'push_failure' AND e.applied = 'quarantined') d"
            " WHERE a.endpoint = d.address AND a.enabled"
        ).format(_NEW)
    )
    return cur.rowcount


def _result(totals: Counter[str], applied: Counter[str]) -> dict[str, Any]:
    names = (
        "received",
        "events",
        "duplicates",
        "quarantined",
        "quarantine_updated",
        "released",
        "disabled_endpoints",
        "invalid",
        "malformed",
        "not_deleted",
    )
    result: dict[str, Any] = {name: int(totals[name]) for name in names}
    result["applied"] = dict(sorted(applied.items()))
    return result

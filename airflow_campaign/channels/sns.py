"""SnsSmsChannel: SMS through Amazon SNS ``Publish`` to a phone number, on the amazon provider's AWS connection.

The amazon provider's ``SnsHook.publish_to_target`` publishes to topics and endpoints only, so the
channel calls the SNS client of the connection (``AwsBaseHook(client_type="sns")``) itself:
``Publish(PhoneNumber=<E.164>, Message=<text>)`` with the SMS attributes of the delivery:
``AWS.SNS.SMS.SMSType`` (``Promotional`` / ``Transactional``), ``AWS.SNS.SMS.SenderID`` and
``AWS.MM.SMS.OriginationNumber`` when given, and ``AWS.SNS.SMS.MaxPrice`` when set. A few
threads share one client; the SDK's own retries are off (a retried call after a timeout could
send twice), errors become results by their code as for SES.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow_campaign.channels.base import OPEN, Envelope, Gate, Result
from airflow_campaign.channels.pool import OnUncertain, WorkerPool, check_count, check_on_uncertain, drain
from airflow_campaign.channels.ses import make_client, outcome_of
from airflow_campaign.errors import CampaignError

DEFAULT_THREADS = 8
MAX_THREADS = 64


def sms_attributes(payload: dict[str, Any], max_price: float | None = None) -> dict[str, dict[str, str]]:
    """The ``MessageAttributes`` of one SMS publish."""
    attributes = {
        "AWS.SNS.SMS.SMSType": {
            "DataType": "String",
            "StringValue": "Transactional"
            if payload.get("message_type") == "transactional"
            else "Promotional",
        }
    }
    if payload.get("sender_id"):
        attributes["AWS.SNS.SMS.SenderID"] = {"DataType": "String", "StringValue": str(payload["sender_id"])}
    if payload.get("origination_number"):
        attributes["AWS.MM.SMS.OriginationNumber"] = {
            "DataType": "String",
            "StringValue": str(payload["origination_number"]),
        }
    if max_price is not None:
        attributes["AWS.SNS.SMS.MaxPrice"] = {"DataType": "Number", "StringValue": f"{max_price:.5f}"}
    return attributes


class SnsSmsChannel:
    """SMS through Amazon SNS, ``threads`` publishes in flight at a time.

    :param aws_conn_id: the amazon provider's AWS connection (credentials, region, endpoint).
    :param threads: how many messages are published in parallel.
    :param region_name: the AWS region, when the connection does not name one.
    :param max_price: the most to pay for one message, in USD (``AWS.SNS.SMS.MaxPrice``).
    :param on_uncertain: a publish that got no answer may have sent its message: ``skip`` reports
        it ``permanent`` (never sent twice), ``resend`` ``transient``.
    """

    name = "sns"
    resend_safe = False

    def __init__(
        self,
        aws_conn_id: str | None = "aws_default",
        threads: int = DEFAULT_THREADS,
        region_name: str | None = None,
        max_price: float | None = None,
        on_uncertain: OnUncertain = "skip",
    ) -> None:
        if max_price is not None and (
            isinstance(max_price, bool) or not isinstance(max_price, (int, float)) or max_price <= 0
        ):
            raise CampaignError(
                f"max_price={max_price!r}: give the most one SMS may cost in USD (> 0), or None."
            )
        self.aws_conn_id = aws_conn_id
        self.threads = check_count("threads", threads, MAX_THREADS)
        self.region_name = region_name
        self.max_price = max_price
        self.on_uncertain = check_on_uncertain(on_uncertain)
        self.client: Any = None
        self._pool: WorkerPool | None = None

    @property
    def concurrency(self) -> int:
        return self.threads

    def check(self) -> None:
        if self.client is None:
            self.client = make_client(
                "sns", self.aws_conn_id, self.region_name, self.threads, "channel='sns'"
            )

    def open(self) -> None:
        if self._pool is not None:
            return
        self.check()
        self._pool = WorkerPool(self.threads, "sns")

    def send_batch(self, envelopes: Sequence[Envelope], gate: Gate = OPEN) -> list[Result]:
        if self._pool is None:
            raise RuntimeError("SnsSmsChannel.send_batch() before open()")
        results, left = self._pool.run(envelopes, lambda _i, queue: drain(queue, gate, self._send))
        return results + [Result(e.log_id, "transient", error="not sent") for e in left]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> SnsSmsChannel:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, envelope: Envelope) -> Result:
        payload = json.loads(envelope.message)
        try:
            response = self.client.publish(
                PhoneNumber=envelope.recipient,
                Message=payload["text"],
                MessageAttributes=sms_attributes(payload, self.max_price),
            )
        except Exception as exc:  # one message's fault, or the service's: never raised
            return outcome_of(exc, envelope.log_id, self.on_uncertain, "SNS")
        return Result(envelope.log_id, "sent", provider_id=response.get("MessageId"))


def push_attributes(ttl: int | None) -> dict[str, dict[str, str]]:
    """The ``MessageAttributes`` of one push publish: the TTL of each push service, when set."""
    if ttl is None:
        return {}
    value = {"DataType": "String", "StringValue": str(ttl)}
    return {
        name: dict(value)
        for name in ("AWS.SNS.MOBILE.APNS.TTL", "AWS.SNS.MOBILE.APNS_SANDBOX.TTL", "AWS.SNS.MOBILE.FCM.TTL")
    }


class SnsPushChannel(SnsSmsChannel):
    """Mobile push through Amazon SNS platform endpoints: ``Publish(TargetArn=<endpoint>,
    MessageStructure="json")`` with the APNs and FCM payloads (see ``delivery/push.py``).

    A disabled endpoint (``EndpointDisabled``) or an unknown one (``NotFound``) is a permanent
    failure of that device; the push delivery then disables its subscription and quarantines
    the endpoint.
    """

    name = "sns"

    def __init__(
        self,
        aws_conn_id: str | None = "aws_default",
        threads: int = DEFAULT_THREADS,
        region_name: str | None = None,
        on_uncertain: OnUncertain = "skip",
    ) -> None:
        super().__init__(aws_conn_id, threads, region_name, None, on_uncertain)

    def _send(self, envelope: Envelope) -> Result:
        message = json.loads(envelope.message)
        try:
            response = self.client.publish(
                TargetArn=envelope.recipient,
                Message=message["sns_message"],
                MessageStructure="json",
                MessageAttributes=push_attributes(message.get("ttl")),
            )
        except Exception as exc:  # one message's fault, or the service's: never raised
            return outcome_of(exc, envelope.log_id, self.on_uncertain, "SNS")
        return Result(envelope.log_id, "sent", provider_id=response.get("MessageId"))

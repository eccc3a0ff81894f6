"""FeedbackOperator on a real SQS queue (a moto server over HTTP) and a private campaign database:
bounces, complaints, STOP/START and push failures end in quarantine once each, what cannot be
trusted is stored and not applied, and a message leaves the queue only after its batch committed."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.feedback import FeedbackOperator
from tests.conftest import count

BASE = 970_000
NOW = dt.datetime.now(dt.timezone.utc)
DOC = Path(__file__).parents[2] / "docs" / "operators" / "feedback.md"


# ---- the queue, and an independent client to fill and read it ------------------------------------


@pytest.fixture
def sqs(s3_endpoint: str) -> Any:
    """A boto3 SQS client on the moto server, independent of the code under test."""
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing-access-key",
        aws_secret_access_key="testing-secret-key",
    )


@pytest.fixture
def queue(sqs: Any) -> Iterator[str]:
    """A fresh queue's URL; its messages are hidden 2 s after a receive unless the reader says otherwise."""
    url = sqs.create_queue(
        QueueName=f"feedback-{uuid.uuid4().hex[:12]}", Attributes={"VisibilityTimeout": "2"}
    )["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


def send(sqs: Any, url: str, *bodies: str) -> None:
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)


def in_queue(sqs: Any, url: str) -> int:
    """Messages in the queue, visible or in flight."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def receive_all(sqs: Any, url: str, expected: int, within: float = 10.0) -> list[dict[str, Any]]:
    """Receive until ``expected`` distinct messages came (or ``within`` seconds), leaving them visible."""
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + within
    while len(got) < expected and time.monotonic() < deadline:
        for m in sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=0
        ).get("Messages", []):
            got[m["MessageId"]] = m
    return list(got.values())


def sns(message: dict[str, Any], *, message_id: str | None = None, at: dt.datetime | None = None) -> str:
    """``message`` in the SNS envelope SQS receives from a topic (raw message delivery off)."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": message_id or str(uuid.uuid4()),
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:campaign-feedback",
            "Message": json.dumps(message),
            "Timestamp": (at or NOW).isoformat().replace("+00:00", "Z"),
        }
    )


def bounce(
    *addresses: str, kind: str = "Permanent", at: dt.datetime | None = None, event: bool = False
) -> dict[str, Any]:
    """An SES bounce: a notification, or with ``event`` what event publishing sends."""
    return {
        "eventType" if event else "notificationType": "Bounce",
        "bounce": {
            "bounceType": kind,
            "bounceSubType": "General" if kind == "Permanent" else "MailboxFull",
            "bouncedRecipients": [
                {
                    "emailAddress": a,
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 no such user",
                }
                for a in addresses
            ],
            "timestamp": (at or NOW).isoformat().replace("+00:00", "Z"),
            "feedbackId": f"0100-{uuid.uuid4()}-000000",
        },
        "mail": {"messageId": f"ses-{uuid.uuid4().hex[:16]}", "destination": list(addresses)},
    }


def complaint(address: str) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": address}],
            "complaintFeedbackType": "abuse",
            "timestamp": NOW.isoformat().replace("+00:00", "Z"),
            "feedbackId": f"0100-{uuid.uuid4()}-000000",
        },
        "mail": {"messageId": f"ses-{uuid.uuid4().hex[:16]}"},
    }


def sms(number: str, text: str, at: dt.datetime | None = None) -> str:
    """An inbound SMS as SNS delivers two-way SMS to the queue."""
    return sns(
        {
            "originationNumber": number,
            "destinationNumber": "+33700000000",
            "messageKeyword": "KEYWORD_123456789012",
            "messageBody": text,
            "inboundMessageId": str(uuid.uuid4()),
        },
        at=at,
    )


def push_failure(arn: str, failure: str = "EndpointDisabled") -> str:
    return sns(
        {
            "DeliveryAttempts": 1,
            "EndpointArn": arn,
            "EventType": "DeliveryFailure",
            "FailureMessage": "Endpoint is disabled",
            "FailureType": failure,
            "MessageId": str(uuid.uuid4()),
            "Resource": "arn:aws:sns:us-east-1:123456789012:app/GCM/shop",
            "Service": "SNS",
            "Time": NOW.isoformat().replace("+00:00", "Z"),
        }
    )


def feedback(scratch: Any, url: str, **kwargs: Any) -> FeedbackOperator:
    options: dict[str, Any] = {
        "task_id": "feedback",
        "queue": url,
        "campaign_conn_id": scratch.conn_id,
        "wait_time_seconds": 0,
        **kwargs,
    }
    return FeedbackOperator(**options)


def run(scratch: Any, url: str, context: Any, **kwargs: Any) -> dict[str, Any]:
    return feedback(scratch, url, **kwargs).execute(context("feedback"))


def quarantined(db: psycopg.Connection, channel: str, address: str) -> tuple[str, int] | None:
    return db.execute(
        "SELECT reason, event_count FROM campaign.quarantine WHERE channel = %s AND address = %s",
        (channel, address),
    ).fetchone()


def events(db: psycopg.Connection, where: str = "true", *params: Any) -> list[tuple[Any, ...]]:
    return db.execute(
        f"SELECT kind, address, applied FROM campaign.feedback_events WHERE {where} ORDER BY id",
        params or None,
    ).fetchall()


# ---- email --------------------------------------------------------------------------------------


def test_a_hard_bounce_quarantines_the_address_lowercased_and_stores_the_raw_message(
    scratch, sqs, queue, context
):
    notification = bounce("Hard.Bounce@Example.ORG")
    send(sqs, queue, sns(notification), json.dumps(bounce("raw.event@example.org", event=True)))

    result = run(scratch, queue, context)

    assert quarantined(scratch.db, "email", "hard.bounce@example.org") == ("hard_bounce", 1)
    assert quarantined(scratch.db, "email", "raw.event@example.org") == ("hard_bounce", 1)
    row = scratch.db.execute(
        "SELECT channel, applied, provider_message_id, detail, raw, message_key, sqs_message_id, dag_id, run_id"
        " FROM campaign.feedback_events WHERE address = 'hard.bounce@example.org'"
    ).fetchone()
    assert row[:4] == (
        "email",
        "quarantined",
        notification["mail"]["messageId"],  # links the event to the delivery log's provider message id
        "Permanent/General: 5.1.1 smtp; 550 5.1.1 no such user",
    )
    assert (
        row[4]["Type"] == "Notification" and json.loads(row[4]["Message"]) == notification
    )  # raw, as received
    assert row[5] == f"ses:{notification['bounce']['feedbackId']}"
    assert row[6] and row[7:] == ("test_dag", context("feedback")["run_id"])
    assert result["received"] == 2 and result["events"] == 2
    assert result["applied"] == {"hard_bounce": 2}
    assert result["quarantined"] == 2 and result["malformed"] == 0
    assert in_queue(sqs, queue) == 0


def test_soft_bounces_quarantine_at_the_limit_within_the_window_and_not_before(scratch, sqs, queue, context):
    day = dt.timedelta(days=1)
    send(
        sqs,
        queue,
        sns(bounce("soft@example.org", kind="Transient", at=NOW - 2 * day)),
        sns(bounce("soft@example.org", kind="Undetermined", at=NOW - day)),
        # three soft bounces, but never three within 7 days
        *(sns(bounce("slow@example.org", kind="Transient", at=NOW - n * 5 * day)) for n in range(3)),
    )
    first = run(scratch, queue, context)
    assert quarantined(scratch.db, "email", "soft@example.org") is None  # two are not enough
    assert quarantined(scratch.db, "email", "slow@example.org") is None
    assert (
        events(scratch.db, "address = 'soft@example.org'")
        == [("soft_bounce", "soft@example.org", "counted")] * 2
    )
    assert first["applied"] == {"soft_bounce": 5} and first["quarantined"] == 0

    send(sqs, queue, sns(bounce("Soft@Example.org", kind="Transient")))
    second = run(scratch, queue, context)
    assert quarantined(scratch.db, "email", "soft@example.org") == ("soft_bounces", 1)
    assert [a for *_, a in events(scratch.db, "address = 'soft@example.org'")] == [
        "counted",
        "counted",
        "quarantined",
    ]
    assert second["quarantined"] == 1
    assert in_queue(sqs, queue) == 0


def test_the_soft_bounce_limit_and_window_are_options_and_late_arrivals_add_up(scratch, sqs, queue, context):
    options = {"soft_bounce_limit": 2, "soft_bounce_window": "1h"}
    minute = dt.timedelta(minutes=1)
    send(sqs, queue, sns(bounce("late@example.org", kind="Transient", at=NOW - 60 * minute)))
    run(scratch, queue, context, **options)
    assert quarantined(scratch.db, "email", "late@example.org") is None
    send(sqs, queue, sns(bounce("late@example.org", kind="Transient", at=NOW - 180 * minute)))  # 2 h before
    run(scratch, queue, context, **options)
    assert quarantined(scratch.db, "email", "late@example.org") is None
    # 30 minutes before the first one read: the window is read on when they occurred
    send(sqs, queue, sns(bounce("late@example.org", kind="Transient", at=NOW - 90 * minute)))
    run(scratch, queue, context, **options)
    assert quarantined(scratch.db, "email", "late@example.org") == ("soft_bounces", 1)


def test_a_complaint_quarantines_and_an_address_keeps_its_strongest_reason(scratch, sqs, queue, context):
    scratch.db.execute(
        "INSERT INTO campaign.quarantine (channel, address, reason, event_count)"
        " VALUES ('email', 'angry@example.org', 'soft_bounces', 3)"
    )
    send(sqs, queue, sns(complaint("Angry@Example.org")), sns(complaint("new.angry@example.org")))
    result = run(scratch, queue, context)
    assert quarantined(scratch.db, "email", "angry@example.org") == ("complaint", 4)
    assert quarantined(scratch.db, "email", "new.angry@example.org") == ("complaint", 1)
    assert result["quarantined"] == 1 and result["quarantine_updated"] == 1

    send(sqs, queue, sns(bounce("angry@example.org")))  # weaker than a complaint
    run(scratch, queue, context)
    assert quarantined(scratch.db, "email", "angry@example.org") == ("complaint", 5)
    assert events(scratch.db, "kind = 'complaint' AND address = 'new.angry@example.org'") == [
        ("complaint", "new.angry@example.org", "quarantined")
    ]


def test_a_delivery_and_other_ses_events_are_stored_with_no_action(scratch, sqs, queue, context):
    before = count(scratch.db, "SELECT count(*) FROM campaign.quarantine")
    delivery = {
        "notificationType": "Delivery",
        "delivery": {
            "recipients": ["Ok@Example.org"],
            "smtpResponse": "250 2.0.0 OK",
            "timestamp": "2026-01-02T03:04:05.678Z",
        },
        "mail": {"messageId": "ses-delivered"},
    }
    send(sqs, queue, sns(delivery), json.dumps({"eventType": "Open", "mail": {"messageId": "ses-opened"}}))
    result = run(scratch, queue, context)
    assert sorted(events(scratch.db), key=str) == [
        ("delivery", "ok@example.org", "stored"),
        ("email_event", None, "stored"),
    ]
    assert scratch.db.execute(
        "SELECT occurred_at FROM campaign.feedback_events WHERE kind = 'delivery'"
    ).fetchone() == (dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc),)
    assert result["applied"] == {"delivery": 1, "email_event": 1}
    assert count(scratch.db, "SELECT count(*) FROM campaign.quarantine") == before


# ---- SMS ----------------------------------------------------------------------------------------


def test_stop_keywords_quarantine_the_number_case_and_accent_insensitively(scratch, sqs, queue, context):
    stops = {
        "+33611111101": "STOP",
        "+33611111102": "arrêt",
        "+33611111103": "Stop please",
        "+33611111104": "  ARRÊT.",
        "+49611111105": "stopp",
        "+14155550106": "Unsubscribe me",
    }
    replies = {"+33611111107": "Hello, stop sending me this", "+33611111108": "Stopping by tomorrow"}
    send(sqs, queue, *(sms(n, t) for n, t in {**stops, **replies}.items()))

    result = run(scratch, queue, context)

    for number in stops:
        assert quarantined(scratch.db, "sms", number) == ("denylist", 1), number
    for number in replies:
        assert quarantined(scratch.db, "sms", number) is None, number
    stored = dict(
        scratch.db.execute(
            "SELECT address, detail FROM campaign.feedback_events WHERE kind = 'inbound'"
        ).fetchall()
    )
    assert stored == replies  # every inbound message is kept, with its text
    assert result["applied"] == {"inbound": 2, "stop": 6} and result["quarantined"] == 6
    assert in_queue(sqs, queue) == 0


def test_start_lifts_a_denylist_entry_and_nothing_else(scratch, sqs, queue, context):
    send(sqs, queue, sms("+33622222201", "STOP"))
    run(scratch, queue, context)
    assert quarantined(scratch.db, "sms", "+33622222201") == ("denylist", 1)
    scratch.db.execute(
        "INSERT INTO campaign.quarantine (channel, address, reason) VALUES ('sms', '+33622222202', 'hard_bounce')"
    )

    send(sqs, queue, sms("+33622222201", "start"), sms("+33622222202", "START"), sms("+33622222203", "Start"))
    result = run(scratch, queue, context)

    assert quarantined(scratch.db, "sms", "+33622222201") is None
    assert quarantined(scratch.db, "sms", "+33622222202") == ("hard_bounce", 1)  # not a STOP: kept
    assert sorted(events(scratch.db, "kind = 'start'")) == [
        ("start", "+33622222201", "released"),
        ("start", "+33622222202", "not released"),
        ("start", "+33622222203", "not released"),
    ]
    assert result["released"] == 1 and result["applied"] == {"start": 3}


def test_of_a_stop_and_a_start_from_one_number_the_latest_wins_whatever_the_arrival_order(
    scratch, sqs, queue, context
):
    minute = dt.timedelta(minutes=1)
    send(
        sqs,
        queue,
        sms("+33633333301", "STOP", at=NOW - 2 * minute),
        sms("+33633333301", "START", at=NOW - minute),
        sms("+33633333302", "START", at=NOW - 2 * minute),
        sms("+33633333302", "STOP", at=NOW - minute),
    )
    run(scratch, queue, context)
    assert quarantined(scratch.db, "sms", "+33633333301") is None
    assert quarantined(scratch.db, "sms", "+33633333302") == ("denylist", 1)

    # a STOP older than the START already applied arrives late: it changes nothing
    send(sqs, queue, sms("+33633333301", "STOP", at=NOW - 3 * minute))
    run(scratch, queue, context)
    assert quarantined(scratch.db, "sms", "+33633333301") is None
    assert events(scratch.db, "address = '+33633333301'")[-1] == ("stop", "+33633333301", "superseded")


def test_the_keywords_are_options(scratch, sqs, queue, context):
    send(sqs, queue, sms("+33644444401", "Halte!"), sms("+33644444402", "STOP"))
    run(scratch, queue, context, stop_keywords=["HALTE"], start_keywords=["REPRISE"])
    assert quarantined(scratch.db, "sms", "+33644444401") == ("denylist", 1)
    assert quarantined(scratch.db, "sms", "+33644444402") is None
    send(sqs, queue, sms("+33644444401", "reprise"))
    run(scratch, queue, context, stop_keywords=["HALTE"], start_keywords=["REPRISE"])
    assert quarantined(scratch.db, "sms", "+33644444401") is None


# ---- push ---------------------------------------------------------------------------------------


def test_a_push_failure_disables_the_endpoint_and_quarantines_it(scratch, sqs, queue, context):
    arns = {i: f"arn:aws:sns:us-east-1:123456789012:endpoint/GCM/shop/{uuid.uuid4()}" for i in (1, 2, 3)}
    ids = [r[0] for r in scratch.db.execute("SELECT id FROM campaign.app_subscriptions ORDER BY id LIMIT 3")]
    for i, sub_id in zip(arns, ids, strict=True):
        scratch.db.execute(
            "UPDATE campaign.app_subscriptions SET endpoint = %s WHERE id = %s", (arns[i], sub_id)
        )
    send(
        sqs,
        queue,
        push_failure(arns[1]),
        push_failure(arns[2], "InvalidPlatformToken"),
        push_failure(arns[3], "MessageTooLarge"),  # this message's fault, not the endpoint's
    )
    result = run(scratch, queue, context)

    enabled = dict(
        scratch.db.execute(
            "SELECT endpoint, enabled FROM campaign.app_subscriptions WHERE id = ANY(%s)", (ids,)
        )
    )
    assert enabled == {arns[1]: False, arns[2]: False, arns[3]: True}
    assert quarantined(scratch.db, "push", arns[1].lower()) == ("invalid", 1)
    assert quarantined(scratch.db, "push", arns[2].lower()) == ("invalid", 1)
    assert quarantined(scratch.db, "push", arns[3].lower()) is None
    assert result["disabled_endpoints"] == 2
    assert result["applied"] == {"push_event": 1, "push_failure": 2}


# ---- what cannot be trusted ---------------------------------------------------------------------


def test_addresses_that_are_not_addresses_are_stored_and_never_quarantined(scratch, sqs, queue, context):
    before = scratch.db.execute("SELECT count(*), sum(event_count) FROM campaign.quarantine").fetchone()
    send(
        sqs,
        queue,
        sns(bounce("no-at-sign")),
        sns(complaint("two@@example.org")),
        sms("0612345678", "STOP"),
        sms("+33 6 12 34 56 78", "STOP"),
        push_failure("endpoint/GCM/shop/abc"),
        sns(bounce("x" * 300 + "@example.org")),
    )
    result = run(scratch, queue, context)
    assert {a for *_, a in events(scratch.db)} == {"invalid address"}
    assert (
        scratch.db.execute("SELECT count(*), sum(event_count) FROM campaign.quarantine").fetchone() == before
    )
    assert result["invalid"] == 6 and result["applied"] == {} and result["events"] == 6
    assert in_queue(sqs, queue) == 0


def test_a_malformed_message_is_stored_with_its_body_and_deleted(scratch, sqs, queue, context):
    before = count(scratch.db, "SELECT count(*) FROM campaign.quarantine")
    confirmation = json.dumps(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "c-1",
            "TopicArn": "arn:aws:sns:x",
            "Message": "confirm",
        }
    )
    bodies = [
        "not json at all",
        "[1, 2]",
        json.dumps({"hello": "world"}),
        json.dumps(
            {"Type": "Notification", "MessageId": "n-1", "TopicArn": "arn:aws:sns:x", "Message": "<xml/>"}
        ),
        confirmation,
        json.dumps({**bounce("weird@example.org"), "bounce": {"bounceType": "Weird"}}),
        '{"notificationType": "Bounce", "bounce": {"bounceType": "Permanent", "bouncedRecipients": NaN}}',
        json.dumps({"originationNumber": "+33655555501", "messageBody": "STOP\u0000"}),
    ]
    send(sqs, queue, *bodies)

    result = run(scratch, queue, context)

    rows = scratch.db.execute(
        "SELECT kind, applied, raw, detail FROM campaign.feedback_events ORDER BY id"
    ).fetchall()
    assert [(k, a) for k, a, *_ in rows] == [("malformed", "malformed")] * len(bodies)
    raws = {json.dumps(r[2], sort_keys=True) for r in rows}
    assert json.dumps("not json at all") in raws  # a body that is not JSON is kept as text
    assert json.dumps(json.loads(confirmation), sort_keys=True) in raws
    assert any("SubscribeURL" in r[3] for r in rows)
    assert result["malformed"] == len(bodies) and result["received"] == len(bodies)
    assert count(scratch.db, "SELECT count(*) FROM campaign.quarantine") == before
    assert in_queue(sqs, queue) == 0


# ---- redelivery and crashes ---------------------------------------------------------------------


class _RefuseDeletes(BaseHTTPRequestHandler):
    """Forwards SQS calls to the moto server, but answers DeleteMessage(Batch) with AccessDenied:
    the queue keeps the messages, as when a task dies between its commit and its delete."""

    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("X-Amz-Target", "").startswith("AmazonSQS.DeleteMessage"):
            reply = json.dumps({"__type": "AccessDenied", "message": "not allowed to delete"}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        conn.request("POST", self.path, body, {k: v for k, v in self.headers.items() if k.lower() != "host"})
        answer = conn.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def no_delete_conn(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An AWS connection whose SQS endpoint refuses to delete messages."""
    target = urllib.parse.urlsplit(s3_endpoint)
    handler = type("Handler", (_RefuseDeletes,), {"upstream": (target.hostname, target.port)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_NO_DELETE",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing-access-key",
                "password": "testing-secret-key",
                "extra": {
                    "endpoint_url": f"http://127.0.0.1:{server.server_port}",
                    "region_name": "us-east-1",
                },
            }
        ),
    )
    yield "aws_no_delete"
    server.shutdown()
    server.server_close()


def test_a_message_received_again_after_its_commit_is_not_counted_twice(
    scratch, sqs, queue, context, no_delete_conn
):
    duplicate_sns = sns(bounce("twice.sns@example.org"), message_id="sns-duplicate-1")
    send(sqs, queue, sns(bounce("again@example.org")), sms("+33666666601", "STOP"), duplicate_sns)

    # the batch commits, then the delete fails: the task fails, the messages stay in the queue
    with pytest.raises(
        CampaignError, match=r"deleting 3 message\(s\) failed after their events were committed"
    ):
        run(scratch, queue, context, aws_conn_id=no_delete_conn, visibility_timeout=1)
    assert quarantined(scratch.db, "email", "again@example.org") == ("hard_bounce", 1)
    assert quarantined(scratch.db, "sms", "+33666666601") == ("denylist", 1)
    first_ids = {r[0] for r in scratch.db.execute("SELECT sqs_message_id FROM campaign.feedback_events")}
    assert len(first_ids) == 3

    time.sleep(1.5)  # the visibility timeout passes: SQS delivers the same messages again
    send(sqs, queue, duplicate_sns)  # and SNS, at least once, delivered one of them twice
    again = run(scratch, queue, context)

    assert again["received"] == 4 and again["events"] == 0 and again["duplicates"] == 4
    assert again["quarantined"] == 0 and again["quarantine_updated"] == 0
    assert quarantined(scratch.db, "email", "again@example.org") == ("hard_bounce", 1)
    assert quarantined(scratch.db, "sms", "+33666666601") == ("denylist", 1)
    assert quarantined(scratch.db, "email", "twice.sns@example.org") == ("hard_bounce", 1)
    assert count(scratch.db, "SELECT count(*) FROM campaign.feedback_events") == 3
    assert {
        r[0] for r in scratch.db.execute("SELECT sqs_message_id FROM campaign.feedback_events")
    } == first_ids
    assert in_queue(sqs, queue) == 0


def test_a_failure_before_the_commit_leaves_every_message_in_the_queue(scratch, sqs, queue, context):
    scratch.db.execute(
        "CREATE FUNCTION campaign.refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION 'the disk is full'; END$$"
    )
    scratch.db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON campaign.quarantine"
        " FOR EACH STATEMENT EXECUTE FUNCTION campaign.refuse()"
    )
    before = count(scratch.db, "SELECT count(*) FROM campaign.quarantine")
    bodies = [sns(bounce("crash@example.org")), sms("+33677777701", "STOP"), "not json"]
    send(sqs, queue, *bodies)

    with pytest.raises(psycopg.errors.RaiseException, match="the disk is full"):
        run(scratch, queue, context, visibility_timeout=1)

    # nothing of the batch was written: not the events stored before the failing statement either
    assert count(scratch.db, "SELECT count(*) FROM campaign.feedback_events") == 0
    assert count(scratch.db, "SELECT count(*) FROM campaign.quarantine") == before
    # and every message is received again once its visibility timeout passed
    assert sorted(m["Body"] for m in receive_all(sqs, queue, len(bodies))) == sorted(bodies)

    scratch.db.execute("DROP TRIGGER refuse ON campaign.quarantine")
    result = run(scratch, queue, context)
    assert result["received"] == 3 and result["quarantined"] == 2 and result["malformed"] == 1
    assert quarantined(scratch.db, "email", "crash@example.org") == ("hard_bounce", 1)
    assert in_queue(sqs, queue) == 0


def test_many_messages_go_in_batches_up_to_max_messages(scratch, sqs, queue, context, caplog, capsys):
    for start in range(0, 25, 10):
        sqs.send_message_batch(
            QueueUrl=queue,
            Entries=[
                {"Id": str(i), "MessageBody": sns(bounce(f"many{i}@example.org"))}
                for i in range(start, min(start + 10, 25))
            ],
        )
    first = run(scratch, queue, context, max_messages=15)
    assert first["received"] == 15 and first["quarantined"] == 15
    assert in_queue(sqs, queue) == 10
    rest = run(scratch, queue, context)
    assert rest["received"] == 10
    assert (
        count(scratch.db, "SELECT count(*) FROM campaign.quarantine WHERE address LIKE 'many%%@example.org'")
        == 25
    )
    logged = caplog.text + "".join(capsys.readouterr())  # the task log, wherever Airflow sends it
    assert re.search(r"done: 10 message\(s\) received: 10 event\(s\) stored, 0 already stored", logged)
    assert in_queue(sqs, queue) == 0


# ---- the next delivery ----------------------------------------------------------------------------


def test_the_next_preparation_excludes_a_bounced_address(scratch, sqs, queue, context, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "feedback-tests-unsubscribe-signing-key")
    people = {
        BASE + 1: "Bounced.Reader@Example.org",
        BASE + 2: "reader@example.org",
        BASE + 3: "other@example.org",
    }
    for pid, address in people.items():
        scratch.db.execute(
            "INSERT INTO campaign.profiles (id, email, first_name) VALUES (%s, %s, 'Reader')", (pid, address)
        )
    send(sqs, queue, sns(bounce("bounced.reader@example.org")))
    run(scratch, queue, context)

    ctx = context("newsletter", run_id="after_feedback")
    EmailDeliveryOperator(
        task_id="newsletter",
        population=[{"id": pid} for pid in people],
        subject="News",
        html='<p>Hello</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>',
        from_addr="news@example.com",
        unsubscribe_url="https://example.com/unsubscribe",
        channel="outbox",
        channel_options={"folder": str(tmp_path / "outbox")},
        campaign_conn_id=scratch.conn_id,
    ).execute(ctx)

    logged = dict(
        (int(k), (s, r))
        for k, s, r in scratch.db.execute(
            "SELECT recipient_key, status, exclusion_reason FROM campaign.delivery_logs WHERE recipient_key = ANY(%s)",
            ([str(p) for p in people],),
        )
    )
    assert logged == {
        BASE + 1: ("excluded", "quarantined"),
        BASE + 2: ("sent", None),
        BASE + 3: ("sent", None),
    }
    assert ctx["ti"].xcoms["report"]["excluded"] == {"quarantined": 1}
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 2


# ---- options, the empty queue, the documented DAG -------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": ""}, r"queue='': give the queue's URL"),
        ({"queue": "my queue"}, r"queue='my queue': give the queue's URL"),
        (
            {"stop_keywords": "STOP"},
            r"stop_keywords='STOP': give a list of words, e\.g\. \['STOP', 'ARRET'\]",
        ),
        ({"stop_keywords": ["two words"]}, r"stop_keywords\[0\]='two words': give one word"),
        ({"start_keywords": ["!!"]}, r"start_keywords\[0\]='!!': give one word with a letter or a digit"),
        ({"start_keywords": ["Arrêt"]}, r"\['arret'\] in both .*remove it from one of them"),
        ({"soft_bounce_limit": 0}, r"soft_bounce_limit=0: give a whole number from 1 to 1000"),
        ({"soft_bounce_window": "1 week"}, r"soft_bounce_window='1 week' is not a duration"),
        ({"wait_time_seconds": 30}, r"wait_time_seconds=30: give a whole number from 0 to 20"),
        ({"max_messages": "100"}, r"max_messages='100': give a whole number .*write 100 without quotes"),
        ({"visibility_timeout": -1}, r"visibility_timeout=-1: give a whole number from 0 to 43200"),
        ({"on_empty": "ignore"}, r"on_empty='ignore' is not valid"),
    ],
)
def test_options_are_checked_when_the_dag_is_parsed(options, message):
    with pytest.raises(CampaignError, match=message):
        FeedbackOperator(**{"task_id": "feedback", "queue": "campaign-feedback", **options})


def test_a_templated_queue_waits_for_its_value():
    op = FeedbackOperator(task_id="feedback", queue="{{ var.value.feedback_queue }}")
    assert op.queue == "{{ var.value.feedback_queue }}"


def test_an_empty_queue_and_on_empty(scratch, sqs, queue, context):
    assert run(scratch, queue, context) == {
        "received": 0,
        "events": 0,
        "duplicates": 0,
        "quarantined": 0,
        "quarantine_updated": 0,
        "released": 0,
        "disabled_endpoints": 0,
        "invalid": 0,
        "malformed": 0,
        "not_deleted": 0,
        "applied": {},
    }
    with pytest.raises(AirflowSkipException):
        run(scratch, queue, context, on_empty="skip")
    with pytest.raises(CampaignError, match="is empty and on_empty='fail'"):
        run(scratch, queue, context, on_empty="fail")


def test_a_queue_named_but_missing_names_the_fix(scratch, sqs, context):
    with pytest.raises(CampaignError, match=r"queue='no-such-feedback-queue': no such queue .* Create it"):
        run(scratch, "no-such-feedback-queue", context)


def test_the_documented_dag_runs(scratch, sqs, context):
    """The DAG on docs/operators/feedback.md parses, and its task applies a bounce from the queue it names."""
    text = DOC.read_text(encoding="utf-8")
    (dag_code,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if "with DAG(" in b]
    namespace: dict[str, Any] = {}
    exec(compile(dag_code, str(DOC), "exec"), namespace)  # noqa: S102 - the page's own example
    task = namespace["dag"].get_task("apply_feedback")
    url = sqs.create_queue(QueueName=task.queue)["QueueUrl"]
    try:
        send(sqs, url, sns(bounce("documented@example.org")))
        task.campaign_conn_id = scratch.conn_id
        task.wait_time_seconds = 0
        result = task.execute(context("apply_feedback"))
        assert result["quarantined"] == 1
        assert quarantined(scratch.db, "email", "documented@example.org") == ("hard_bounce", 1)
    finally:
        sqs.delete_queue(QueueUrl=url)

"""SesChannel over real HTTP: moto's SES v2 in server mode, and a small stub for the failures moto never gives."""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, ParamValidationError, ReadTimeoutError

from airflow_campaign.channels.base import Envelope
from airflow_campaign.channels.ses import SesChannel, classify
from airflow_campaign.errors import CampaignError
from tests.channels.conftest import RecordingGate, envelopes

CREDENTIALS = {"login": "testing-access-key", "password": "testing-secret-key"}


def aws_connection(monkeypatch: pytest.MonkeyPatch, endpoint: str, region: str | None = "us-east-1") -> str:
    conn_id = f"aws_{uuid.uuid4().hex[:8]}"
    extra: dict[str, Any] = {"endpoint_url": endpoint}
    if region:
        extra["region_name"] = region
    fields = {"conn_type": "aws", **CREDENTIALS, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
    return conn_id


@pytest.fixture
def ses(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An AWS connection to the moto server (``.conn_id``) with the domain shop.example verified."""
    client = boto3.client(
        "sesv2",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["login"],
        aws_secret_access_key=CREDENTIALS["password"],
    )
    client.create_email_identity(EmailIdentity="shop.example")
    conn_id = aws_connection(monkeypatch, s3_endpoint)
    return type("Ses", (), {"conn_id": conn_id, "endpoint": s3_endpoint})


def recorded(endpoint: str) -> dict[str, dict[str, Any]]:
    """The raw messages moto's SES has accepted, by message id (read over HTTP from its API)."""
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json") as response:  # noqa: S310 (local server)
        data = json.load(response)
    return {m["id"]: m for m in data.get("ses", {}).get("RawMessage", [])}


def test_sends_raw_messages_through_moto(ses: Any) -> None:
    batch = envelopes(40, domain="example.org")
    gate = RecordingGate(refuse=(7,))
    with SesChannel(ses.conn_id, threads=4) as channel:
        results = channel.send_batch(batch, gate)

    assert sorted(r.log_id for r in results) == [e.log_id for e in batch]
    assert all(r.outcome == "sent" and r.provider_id for r in results if r.log_id != 7)
    assert [r.outcome for r in results if r.log_id == 7] == ["held"]
    gate.check(results)
    results = [r for r in results if r.log_id != 7]
    messages = recorded(ses.endpoint)
    by_log_id = {e.log_id: e for e in batch}
    for result in results:
        message = messages[result.provider_id]  # type: ignore[index]
        envelope = by_log_id[result.log_id]
        assert message["source"] == envelope.sender
        assert envelope.recipient in message["destinations"]
        assert message["raw_data"].encode() == envelope.message


def test_unverified_sender_is_permanent(ses: Any) -> None:
    good = envelopes(2)
    bad = Envelope(99, "someone@example.org", good[0].message, sender="spoof@elsewhere.example")
    with SesChannel(ses.conn_id) as channel:
        results = {r.log_id: r for r in channel.send_batch([*good, bad])}
    assert results[99].outcome == "permanent"
    assert (
        results[99].error
        == "MessageRejected: Did not have authority to send from email spoof@elsewhere.example"
    )
    assert [results[e.log_id].outcome for e in good] == ["sent", "sent"]
    assert results[99].provider_id is None


def test_no_region_names_the_fix(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    conn_id = aws_connection(monkeypatch, s3_endpoint, region=None)
    with pytest.raises(CampaignError, match=rf"aws_conn_id='{conn_id}': no AWS region"):
        SesChannel(conn_id).open()


# ---- failures moto does not produce: a stub SES over real HTTP -----------------------------------


class _StubSes(BaseHTTPRequestHandler):
    """Answers SendEmail by the recipient's local part: throttle, busy, reject, hangup, else accepted."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        local = body["Destination"]["ToAddresses"][0].split("@")[0]
        if local == "hangup":  # the request arrived; the answer never comes
            self.close_connection = True
            self.connection.shutdown(2)
            return
        status, code, text = {
            "throttle": (429, "TooManyRequestsException", "Maximum sending rate exceeded."),
            "busy": (503, "ServiceUnavailable", "Service unavailable"),
            "limit": (400, "LimitExceededException", "Daily message quota exceeded"),
            "reject": (400, "MessageRejected", "Email address is on the suppression list"),
            "notverified": (400, "MailFromDomainNotVerifiedException", "MAIL FROM domain not verified"),
        }.get(local, (200, "", ""))
        payload = {"message": text} if code else {"MessageId": f"stub-{local}"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        if code:
            self.send_header("x-amzn-ErrorType", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub_ses(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubSes)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield aws_connection(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("on_uncertain", ["skip", "resend"])
def test_errors_over_http_are_classified(stub_ses: str, on_uncertain: str) -> None:
    names = ["ok1", "throttle", "busy", "limit", "reject", "notverified", "hangup", "ok2"]
    batch = [
        Envelope(i, f"{name}@example.org", b"Subject: x\r\n\r\nx\r\n", sender="news@shop.example")
        for i, name in enumerate(names)
    ]
    with SesChannel(stub_ses, threads=3, on_uncertain=on_uncertain) as channel:  # type: ignore[arg-type]
        results = {names[r.log_id]: r for r in channel.send_batch(batch)}
    assert len(results) == len(names)
    assert {n: r.outcome for n, r in results.items()} == {
        "ok1": "sent",
        "throttle": "transient",
        "busy": "transient",
        "limit": "transient",
        "reject": "permanent",
        "notverified": "permanent",
        "hangup": "permanent" if on_uncertain == "skip" else "transient",
        "ok2": "sent",
    }
    assert results["ok1"].provider_id == "stub-ok1"
    assert results["throttle"].error == "TooManyRequestsException: Maximum sending rate exceeded."
    assert results["reject"].error == "MessageRejected: Email address is on the suppression list"
    assert (results["hangup"].error or "").startswith("uncertain: no answer from SES")


def _client_error(code: str, status: int, message: str = "words") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "SendEmail",
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_client_error("Throttling", 400), "transient"),
        (_client_error("SendingPausedException", 400), "transient"),
        (_client_error("InternalFailure", 500), "transient"),
        (_client_error("SomethingNew", 502), "transient"),
        (_client_error("BadRequestException", 400), "permanent"),
        (_client_error("SomethingNew", 400), "permanent"),
        (ReadTimeoutError(endpoint_url="https://email.example"), "uncertain"),
        (ConnectTimeoutError(endpoint_url="https://email.example"), "transient"),
        (ParamValidationError(report="Destination is required"), "permanent"),
    ],
)
def test_classification(error: Exception, kind: str) -> None:
    assert classify(error)[0] == kind

"""SmtpChannel against real SMTP servers (aiosmtpd): what arrives, what each envelope's result says."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_campaign.channels.base import Envelope, Result
from airflow_campaign.channels.smtp import SmtpChannel, data_block, queue_id, settings_from_connection
from airflow_campaign.errors import CampaignError
from tests.channels.conftest import RecordingGate, SmtpConnection, envelopes
from tests.channels.servers import Certificate, Inbox, authenticator, smtp_server

FAST = {"timeout": 5}


def send(conn_id: str, batch: list[Envelope], **options: Any) -> dict[int, Result]:
    """Open a channel, send one batch, close; the results by log id (exactly one per envelope)."""
    with SmtpChannel(conn_id, **options) as channel:
        results = channel.send_batch(batch)
    assert sorted(r.log_id for r in results) == sorted(e.log_id for e in batch)
    return {r.log_id: r for r in results}


def assert_received(handler: Inbox, batch: list[Envelope]) -> None:
    """Every envelope of ``batch`` arrived exactly once, byte for byte, with its envelope addresses."""
    received = handler.by_recipient()
    assert len(received) == len([m for m in handler.messages if m.rcpt_tos[0] in received])
    for envelope in batch:
        message = received[envelope.recipient]
        assert message.rcpt_tos == [envelope.recipient]
        assert message.mail_from == envelope.sender
        assert message.content == envelope.message


def recipients(handler: Inbox) -> list[str]:
    return sorted(m.rcpt_tos[0] for m in handler.messages)


# ---- a well-behaved server -------------------------------------------------------------------


def test_sends_every_message_on_reused_connections(inbox: Any, smtp_connection: SmtpConnection) -> None:
    handler, port = inbox
    batch = envelopes(300)
    results = send(smtp_connection(port, **FAST), batch, connections=3)

    assert all(r.outcome == "sent" for r in results.values())
    assert_received(handler, batch)
    assert len(handler.messages) == 300
    assert handler.connections() == 3  # three connections, each used for many messages
    queue_ids = {m.rcpt_tos[0]: m.queue_id for m in handler.messages}
    assert all(results[e.log_id].provider_id == queue_ids[e.recipient] for e in batch)


def test_several_batches_reuse_the_same_connections(inbox: Any, smtp_connection: SmtpConnection) -> None:
    handler, port = inbox
    with SmtpChannel(smtp_connection(port, **FAST), connections=2) as channel:
        for start in (1, 51, 101):
            results = channel.send_batch(envelopes(50, start=start))
            assert [r.outcome for r in results] == ["sent"] * 50
        assert channel.send_batch([]) == []
    assert len(handler.messages) == 150
    assert handler.connections() == 2


def test_the_gate_is_passed_once_per_message(inbox: Any, smtp_connection: SmtpConnection) -> None:
    handler, port = inbox
    gate = RecordingGate(refuse=(5, 77))
    with SmtpChannel(smtp_connection(port, **FAST), connections=4) as channel:
        results = channel.send_batch(envelopes(120), gate)
    gate.check(results)
    assert len(handler.messages) == 118  # the two held back never reached the server
    assert {m.rcpt_tos[0] for m in handler.messages} == {
        f"customer{i}@example.org" for i in range(1, 121) if i not in (5, 77)
    }
    assert {r.log_id for r in results if r.outcome == "held"} == {5, 77}
    assert len({c[1] for c in gate.calls if c[0] == "before"}) == 4  # from each connection's thread


def test_sender_from_the_connection_and_non_ascii_addresses(
    inbox: Any, smtp_connection: SmtpConnection
) -> None:
    handler, port = inbox
    conn_id = smtp_connection(port, from_email="shop@shop.example", **FAST)
    batch = [
        Envelope(1, "plain@example.org", b"Subject: a\r\n\r\nA\r\n"),
        Envelope(2, "j\u00f6rg@ex\u00e4mple.org", "Subject: b\r\n\r\nB \u00e9t\u00e9\r\n".encode()),
        Envelope(3, "lf@example.org", b"Subject: c\n\n.dot\nbody\n", sender="other@shop.example"),
    ]
    results = send(conn_id, batch)
    assert [results[i].outcome for i in (1, 2, 3)] == ["sent"] * 3
    received = handler.by_recipient()
    assert received["plain@example.org"].mail_from == "shop@shop.example"
    assert received["j\u00f6rg@ex\u00e4mple.org"].content == batch[1].message
    assert received["lf@example.org"].mail_from == "other@shop.example"
    assert received["lf@example.org"].content == b"Subject: c\r\n\r\n.dot\r\nbody\r\n"  # CRLF on the wire


def test_a_message_without_any_sender_is_refused_before_sending(
    inbox: Any, smtp_connection: SmtpConnection
) -> None:
    handler, port = inbox
    with SmtpChannel(smtp_connection(port, **FAST)) as channel:
        with pytest.raises(CampaignError, match="from_email"):
            channel.send_batch([Envelope(1, "a@example.org", b"Subject: x\r\n\r\nx\r\n")])
    assert handler.messages == []


def test_new_connection_after_max_messages(inbox: Any, smtp_connection: SmtpConnection) -> None:
    handler, port = inbox
    results = send(smtp_connection(port, **FAST), envelopes(10), connections=1, max_messages_per_connection=4)
    assert all(r.outcome == "sent" for r in results.values())
    assert handler.connections() == 3  # 4 + 4 + 2


# ---- faults --------------------------------------------------------------------------------------


def test_451_on_rcpt_is_transient_and_the_connection_is_kept(smtp_connection: SmtpConnection) -> None:
    handler = Inbox(rcpt_faults=5)
    batch = envelopes(20)
    with smtp_server(handler) as server:
        conn_id = smtp_connection(server.port, **FAST)
        results = send(conn_id, batch, connections=1)
        transient = sorted(i for i, r in results.items() if r.outcome == "transient")
        assert len(transient) == 5
        assert all("451 4.3.0 Temporary lookup failure" in (results[i].error or "") for i in transient)
        assert len(handler.messages) == 15
        assert handler.connections() == 1

        retried = send(conn_id, [e for e in batch if e.log_id in transient], connections=1)
    assert all(r.outcome == "sent" for r in retried.values())
    assert_received(handler, batch)
    assert len(handler.messages) == 20


def test_421_on_data_is_transient_and_the_connection_is_reopened(smtp_connection: SmtpConnection) -> None:
    handler = Inbox(data_faults=2)
    batch = envelopes(10)
    with smtp_server(handler) as server:
        results = send(smtp_connection(server.port, **FAST), batch, connections=1)
    transient = [r for r in results.values() if r.outcome == "transient"]
    assert [r.log_id for r in sorted(transient, key=lambda r: r.log_id)] == [1, 2]
    assert all("421 4.7.0 Too busy" in (r.error or "") for r in transient)
    assert recipients(handler) == sorted(e.recipient for e in batch[2:])


def test_dropped_connection_between_messages(smtp_connection: SmtpConnection) -> None:
    handler = Inbox(drop_after=4)  # the server hangs up after every 4th message it stored
    batch = envelopes(30)
    with smtp_server(handler) as server:
        conn_id = smtp_connection(server.port, **FAST)
        results = send(conn_id, batch, connections=2)
        transient = [r for r in results.values() if r.outcome == "transient"]
        sent = {i for i, r in results.items() if r.outcome == "sent"}
        assert transient and handler.drops >= 2
        assert all("connection lost" in (r.error or "") and "MAIL FROM" in (r.error or "") for r in transient)
        # what was reported sent is exactly what arrived; nothing reported transient arrived
        assert recipients(handler) == sorted(e.recipient for e in batch if e.log_id in sent)
        assert len(sent) + len(transient) == 30

        handler.drop_after = None
        retried = send(conn_id, [e for e in batch if e.log_id not in sent], connections=2)
    assert all(r.outcome == "sent" for r in retried.values())
    assert_received(handler, batch)
    assert len(handler.messages) == 30


@pytest.mark.parametrize("on_uncertain", ["skip", "resend"])
def test_dropped_connection_after_the_message_was_sent(
    on_uncertain: str, smtp_connection: SmtpConnection
) -> None:
    # the server stores the 3rd message, then hangs up before saying so
    handler = Inbox(drop_after=3, drop_before_reply=True)
    batch = envelopes(5)
    with smtp_server(handler) as server:
        results = send(smtp_connection(server.port, **FAST), batch, connections=1, on_uncertain=on_uncertain)
    assert recipients(handler) == sorted(e.recipient for e in batch)  # it did arrive
    third = results[3]
    assert third.outcome == ("permanent" if on_uncertain == "skip" else "transient")
    assert (third.error or "").startswith("uncertain: connection lost")
    assert all(results[i].outcome == "sent" for i in (1, 2, 4, 5))
    assert handler.connections() == 2


def test_550_rejections_are_permanent_with_the_servers_words(smtp_connection: SmtpConnection) -> None:
    handler = Inbox(reject=("customer3@", "customer7@"))
    batch = envelopes(10)
    with smtp_server(handler) as server:
        results = send(smtp_connection(server.port, **FAST), batch, connections=2)
    assert {i for i, r in results.items() if r.outcome == "permanent"} == {3, 7}
    assert results[3].error == (
        "recipient refused: 550 5.1.1 <customer3@example.org>: Recipient address rejected: "
        "User unknown in local recipient table"
    )
    assert recipients(handler) == sorted(e.recipient for e in batch if e.log_id not in (3, 7))
    assert handler.connections() == 2  # a refusal does not cost the connection


def test_server_gone_mid_send(smtp_connection: SmtpConnection) -> None:
    handler = Inbox()
    with smtp_server(handler) as server:
        channel = SmtpChannel(smtp_connection(server.port, **FAST), connections=2)
        channel.open()
        first = channel.send_batch(envelopes(4))
    # the server is gone: every envelope still gets a result, and none raises
    try:
        results = channel.send_batch(envelopes(6, start=5))
    finally:
        channel.close()
        channel.close()  # twice is fine
    assert [r.outcome for r in first] == ["sent"] * 4
    assert sorted(r.log_id for r in results) == list(range(5, 11))
    assert all(r.outcome == "transient" for r in results)


# ---- TLS and AUTH -------------------------------------------------------------------------------


def test_starttls_verified_with_a_private_ca(
    certificate: Certificate, smtp_connection: SmtpConnection
) -> None:
    handler = Inbox()
    tls = certificate.server_context()
    with smtp_server(handler, tls_context=tls, require_starttls=True) as server:
        conn_id = smtp_connection(server.port, ssl_cafile=str(certificate.cert), **FAST)
        results = send(conn_id, envelopes(5))
        assert all(r.outcome == "sent" for r in results.values())

        unverified = smtp_connection(server.port, ssl_verify=False, **FAST)
        assert all(r.outcome == "sent" for r in send(unverified, envelopes(2, start=6)).values())

        untrusted = smtp_connection(server.port, **FAST)
        with pytest.raises(CampaignError, match=rf"{untrusted}.*did not verify.*ssl_cafile"):
            SmtpChannel(untrusted).open()

        never = smtp_connection(server.port, starttls=False, **FAST)
        with SmtpChannel(never) as channel:  # the server insists on STARTTLS: refused, not sent
            refused = channel.send_batch(envelopes(1, start=8))
        assert refused[0].outcome == "permanent" and "530" in (refused[0].error or "")
    assert len(handler.messages) == 7


def test_implicit_tls(certificate: Certificate, smtp_connection: SmtpConnection) -> None:
    handler = Inbox()
    with smtp_server(handler, ssl_context=certificate.server_context()) as server:
        conn_id = smtp_connection(server.port, ssl=True, ssl_cafile=str(certificate.cert), **FAST)
        results = send(conn_id, envelopes(5), connections=2)
    assert all(r.outcome == "sent" for r in results.values())
    assert_received(handler, envelopes(5))


def test_auth_login(smtp_connection: SmtpConnection) -> None:
    handler = Inbox()
    options = {"authenticator": authenticator("mailer", "s3cret-pass"), "auth_require_tls": False}
    with smtp_server(handler, auth_required=True, **options) as server:
        good = smtp_connection(server.port, login="mailer", password="s3cret-pass", **FAST)
        assert all(r.outcome == "sent" for r in send(good, envelopes(3), connections=2).values())

        bad = smtp_connection(server.port, login="mailer", password="wrong-pass", **FAST)
        with pytest.raises(CampaignError, match=rf"smtp_conn_id='{bad}'.*refused login 'mailer' \(535"):
            SmtpChannel(bad).open()
    assert len(handler.messages) == 3


# ---- opening errors and settings ---------------------------------------------------------------


def test_unreachable_server_and_missing_connection(smtp_connection: SmtpConnection) -> None:
    with smtp_server(Inbox()) as server:
        port = server.port  # free again once the server stopped
    conn_id = smtp_connection(port, **FAST)
    with pytest.raises(
        CampaignError, match=rf"smtp_conn_id='{conn_id}' \(127.0.0.1:{port}\): cannot connect"
    ):
        SmtpChannel(conn_id).open()
    with pytest.raises(CampaignError, match="smtp_conn_id='no_such_smtp': no Airflow connection"):
        SmtpChannel("no_such_smtp").open()


def _conn(port: int | None = 587, **extra: Any) -> Any:
    return SimpleNamespace(host="mail.example.com", port=port, login="u", password="p", extra_dejson=extra)


def test_settings_follow_the_smtp_providers_extras() -> None:
    auto = settings_from_connection(_conn(587), "c")
    assert (auto.ssl, auto.starttls, auto.ssl_verify, auto.timeout) == (False, None, True, 30.0)
    assert settings_from_connection(_conn(465), "c").ssl is True
    assert settings_from_connection(_conn(None, ssl="true"), "c").port == 465
    hook_style = settings_from_connection(_conn(2525, disable_ssl=True, disable_tls=True, timeout="7"), "c")
    assert (hook_style.ssl, hook_style.starttls, hook_style.timeout) == (False, False, 7.0)
    assert settings_from_connection(_conn(465, disable_ssl=False), "c").ssl is True
    assert settings_from_connection(_conn(587, starttls=True), "c").starttls is True
    assert settings_from_connection(_conn(587, ssl_context="none"), "c").ssl_verify is False
    assert settings_from_connection(_conn(587, from_email="a@b.example"), "c").from_email == "a@b.example"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"ssl": "maybe"}, "extra ssl='maybe' is not a boolean"),
        ({"ssl": True, "starttls": True}, "ssl and starttls are both true"),
        ({"timeout": "soon"}, "timeout='soon' is not a positive number"),
        ({"ssl_cafile": "/no/such/ca.pem"}, "ssl_cafile='/no/such/ca.pem' is not a file"),
    ],
)
def test_bad_extras_name_the_fix(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(CampaignError, match=f"smtp_conn_id='c'.*{message}"):
        settings_from_connection(_conn(587, **extra), "c")


def test_bad_parameters() -> None:
    with pytest.raises(CampaignError, match="connections=0"):
        SmtpChannel(connections=0)
    with pytest.raises(CampaignError, match="on_uncertain='never'"):
        SmtpChannel(on_uncertain="never")  # type: ignore[arg-type]


def test_wire_helpers(tmp_path: Path) -> None:
    assert data_block(b".a\r\nb\n.c") == b"..a\r\nb\r\n..c\r\n.\r\n"
    assert queue_id(b"2.0.0 Ok: queued as 4Xyz12AB") == "4Xyz12AB"
    assert queue_id(b"OK id=1uAbcd-0001") == "1uAbcd-0001"
    assert queue_id(b"Ok 0100018f2a3b4c5d-abc-000000") == "0100018f2a3b4c5d-abc-000000"
    assert queue_id(b"OK") is None
    assert queue_id(b"Message accepted for delivery") is None

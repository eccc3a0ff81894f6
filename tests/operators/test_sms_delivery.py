"""SmsDeliveryOperator end to end: numbers to E.164, GSM-7/UCS-2 parts, exclusions, the outbox and SNS."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import phonenumbers
import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.sms import SmsDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator

WHERE = "id <= 300"
TEXT = "Hi {{ first_name }}, {{ loyalty_points }} points wait for you"
FOOTER = "STOP 36111"
CREDENTIALS = {"login": "testing-access-key", "password": "testing-secret-key"}


def eligible(db, where: str = WHERE) -> dict[str, tuple[int, str]]:
    """What the SMS typology keeps, computed here from the profiles with phonenumbers itself:
    {E.164 number: (profile id, first name)}, the smallest id per number."""
    rows = db.execute(
        f"SELECT id, phone, country, first_name FROM campaign.profiles WHERE {where} AND NOT sms_denylisted"
        " ORDER BY id"
    ).fetchall()
    quarantined = {a for (a,) in db.execute("SELECT address FROM campaign.quarantine WHERE channel = 'sms'")}
    kept: dict[str, tuple[int, str]] = {}
    for pid, phone, country, first_name in rows:
        if not phone or not phone.strip():
            continue
        try:
            number = phonenumbers.parse(phone, country)
        except phonenumbers.NumberParseException:
            continue
        if not phonenumbers.is_valid_number(number):
            continue
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if e164 in quarantined:
            continue
        kept.setdefault(e164, (pid, first_name))
    return kept


@pytest.fixture
def setup(scratch, context, tmp_path):
    pop = QueryOperator(
        task_id="targets",
        campaign_conn_id=scratch.conn_id,
        where=WHERE,
        columns=["first_name", "loyalty_points"],
    ).execute(context("targets"))
    return scratch, pop, tmp_path / "outbox"


def operator(scratch, pop, folder, **kwargs: Any) -> SmsDeliveryOperator:
    options: dict[str, Any] = {
        "task_id": "sms",
        "population": pop,
        "text": TEXT,
        "stop_footer": FOOTER,
        "channel": "outbox",
        "channel_options": {"folder": str(folder)},
        "campaign_conn_id": scratch.conn_id,
        **kwargs,
    }
    return SmsDeliveryOperator(**options)


def payloads(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def test_one_message_per_valid_number_in_e164_from_its_own_row(setup, context):
    scratch, pop, folder = setup
    ctx = context("sms", run_id="r1")
    operator(scratch, pop, folder).execute(ctx)
    report = ctx["ti"].xcoms["report"]
    expected = eligible(scratch.db)
    got = payloads(folder)
    assert report["by_status"]["sent"] == len(got) == len(expected) > 100
    assert {p["to"] for p in got} == set(expected)
    points = dict(scratch.db.execute("SELECT id, loyalty_points FROM campaign.profiles").fetchall())
    for p in got:
        pid, first_name = expected[p["to"]]
        assert p["text"] == f"Hi {first_name}, {points[pid]} points wait for you\n{FOOTER}"
        assert p["message_type"] == "promotional" and p["parts"] == 1
        assert p["encoding"] == (
            "GSM-7" if all(c.isascii() or c in "éèùìòÇØøÅåÄÖÑÜßÉÆæ" for c in p["text"]) else "UCS-2"
        )
    # the three raw formats of the seed all became E.164, and every exclusion has its reason
    raw = {r[0] for r in scratch.db.execute(f"SELECT phone FROM campaign.profiles WHERE {WHERE}")}
    assert any(r and r.startswith("00") for r in raw) and any(r and r.startswith("+") for r in raw)
    assert set(report["excluded"]) <= {
        "missing address",
        "denylisted",
        "quarantined",
        "duplicate address",
    } | {r for r in report["excluded"] if r.startswith("invalid phone number (")}
    assert report["total"] == pop["count"]
    # the cache holds each raw value once
    cached = scratch.db.execute(
        "SELECT count(*), count(DISTINCT (raw, region)) FROM campaign.phone_numbers"
    ).fetchone()
    assert cached[0] == cached[1] > 0

    # the same run again sends nobody twice and parses no number again
    again = context("sms", run_id="r1")
    operator(scratch, pop, folder).execute(again)
    assert again["ti"].xcoms["report"]["by_status"]["sent"] == len(expected)
    assert len(payloads(folder)) == len(expected)


def test_invalid_numbers_and_long_messages_are_excluded_with_their_reason(scratch, context, tmp_path, capsys):
    scratch.db.execute(
        "INSERT INTO campaign.profiles (id, phone, country, first_name) VALUES"
        " (900001, '06 12 34 56 78', 'FR', 'Ann'), (900002, '06 12', 'FR', 'Bob'),"
        " (900003, 'not a number', 'FR', 'Cy'), (900004, '0612345679', NULL, 'Dee'),"
        " (900005, '+33 6 12 34 56 70', 'FR', '" + "x" * 470 + "'),"  # 4 parts with the footer
        " (900006, '+33612345678', 'FR', 'Ann again'), (900007, '0612345671', 'FR', 'Zoë ç')"
    )
    pop = QueryOperator(
        task_id="t", campaign_conn_id=scratch.conn_id, where="id > 900000", columns=["first_name"]
    ).execute(context("t"))
    ctx = context("sms")
    folder = tmp_path / "out"
    operator(scratch, pop, folder, text="Hi {{ first_name }}", max_parts=3).execute(ctx)
    report = ctx["ti"].xcoms["report"]
    rows = dict(
        scratch.db.execute(
            "SELECT recipient_key, coalesce(exclusion_reason, status) FROM campaign.delivery_logs"
        ).fetchall()
    )
    assert rows == {
        "900001": "sent",
        "900002": "invalid phone number (too short)",
        "900003": "invalid phone number (not a phone number)",
        "900004": "invalid phone number (no country code and no region)",
        "900005": "message too long (4 parts > max_parts=3)",
        "900006": "duplicate address",  # the same number as 900001 once normalised
        "900007": "sent",
    }
    assert report["by_status"] == {"sent": 2, "excluded": 5}
    assert "1 recipient(s) would get a message over max_parts=3" in capsys.readouterr().out
    by_to = {p["to"]: p for p in payloads(folder)}
    assert by_to["+33612345671"]["encoding"] == "UCS-2"  # ç is not GSM-7
    # default_region reads the national number without a country; transliteration makes ç GSM-7
    ctx = context("sms2")
    operator(
        scratch,
        pop,
        tmp_path / "out2",
        task_id="sms2",
        text="Hi {{ first_name }}",
        default_region="FR",
        region_column=None,
        transliterate=True,
    ).execute(ctx)
    got = {p["to"]: p for p in payloads(tmp_path / "out2")}
    assert "+33612345679" in got
    assert got["+33612345671"]["encoding"] == "GSM-7" and got["+33612345671"]["text"].startswith(
        "Hi Zoe Ç"
    )  # ë is not GSM-7, Ç is


def test_a_quarantined_number_is_not_sent_to(setup, context):
    scratch, pop, folder = setup
    target = next(iter(eligible(scratch.db)))
    scratch.db.execute(
        "INSERT INTO campaign.quarantine (channel, address, reason) VALUES ('sms', %s, 'denylist')", (target,)
    )
    ctx = context("sms")
    operator(scratch, pop, folder).execute(ctx)
    assert target not in {p["to"] for p in payloads(folder)}
    reason = scratch.db.execute(
        "SELECT exclusion_reason FROM campaign.delivery_logs WHERE address = %s", (target,)
    ).fetchone()
    assert reason == ("quarantined",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stop_footer": None}, r"stop_footer: a promotional SMS must tell its recipient how to opt out"),
        (
            {"sender_id": "MY-SHOP-2026"},
            r"sender_id='MY-SHOP-2026': a sender id is 1 to 11 letters and digits",
        ),
        ({"origination_number": "0612345678"}, r"origination_number='0612345678': give the number in E.164"),
        ({"max_parts": 11}, r"max_parts=11: give a whole number from 1 to 10"),
        ({"default_region": "France"}, r"default_region='France': not a region code"),
        (
            {"channel_options": {"smtp_conn_id": "x"}},
            r"channel_options: \['smtp_conn_id'\] are not options of the outbox",
        ),
        ({"channel": "smtp"}, r"channel='smtp'"),
        ({"message_type": "marketing"}, r"message_type"),
        ({"proof_to": ["0612345678"]}, r"proof_to: '0612345678' is not a phone number in E.164"),
        ({"text": "Hi {{ nope }}"}, r"text uses \{\{ nope \}\}"),
    ],
)
def test_bad_options_fail_before_anything_is_written(setup, context, kwargs, message):
    scratch, pop, folder = setup
    with pytest.raises(CampaignError, match=message):
        operator(scratch, pop, folder, **kwargs).execute(context("sms"))
    assert scratch.db.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone() == (0,)
    assert not folder.exists() or not list(folder.iterdir())


def test_proofs_go_to_the_test_numbers_only(setup, context):
    scratch, pop, folder = setup
    ctx = context("sms", run_id="proof")
    operator(scratch, pop, folder, proof_to=["+33612345678", "+447700900123"]).execute(ctx)
    got = payloads(folder)
    assert sorted(p["to"] for p in got) == ["+33612345678", "+447700900123"]
    # the first recipients' messages (ordered by recipient key), prefixed and with their footer
    first = dict(
        scratch.db.execute(
            f"SELECT id::text, first_name || ' ' || loyalty_points FROM campaign.profiles WHERE {WHERE}"
        ).fetchall()
    )
    keys = sorted(first)[:2]
    expected = {
        f"[PROOF] Hi {first[k].rsplit(' ', 1)[0]}, {first[k].rsplit(' ', 1)[1]} points wait for you\n{FOOTER}"
        for k in keys
    }
    assert {p["text"] for p in got} == expected
    assert ctx["ti"].xcoms["proofs"] == {"to": ["+33612345678", "+447700900123"], "sent": 2}
    assert scratch.db.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone()[0] == 0


def test_transactional_messages_need_no_footer(setup, context):
    scratch, pop, folder = setup
    ctx = context("sms")
    operator(
        scratch, pop, folder, stop_footer=None, message_type="transactional", text="Code {{ loyalty_points }}"
    ).execute(ctx)
    got = payloads(folder)
    assert got and all(p["message_type"] == "transactional" and "STOP" not in p["text"] for p in got)


# ---- Amazon SNS (moto in server mode) --------------------------------------------------------------


@pytest.fixture
def sns(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from tests.operators.test_push_delivery import reset_moto

    reset_moto(s3_endpoint)
    extra = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_SMS", json.dumps({"conn_type": "aws", **CREDENTIALS, "extra": extra})
    )
    return s3_endpoint


def recorded_sms(endpoint: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json") as response:  # noqa: S310 (local server)
        return list(json.load(response).get("sns", {}).get("SMS", []))


def test_sns_publishes_each_message_to_its_e164_number(setup, context, sns):
    scratch, pop, _ = setup
    before = {m["message_id"] for m in recorded_sms(sns)}
    ctx = context("sms")
    operator(
        scratch,
        pop,
        None,
        channel="sns",
        channel_options={"aws_conn_id": "aws_sms", "threads": 4},
        sender_id="ACME",
    ).execute(ctx)
    report = ctx["ti"].xcoms["report"]
    expected = eligible(scratch.db)
    sent = [m for m in recorded_sms(sns) if m["message_id"] not in before]
    assert report["by_status"]["sent"] == len(sent) == len(expected)
    assert {m["phone_number"] for m in sent} == set(expected)
    points = dict(scratch.db.execute("SELECT id, loyalty_points FROM campaign.profiles").fetchall())
    for m in sent:
        pid, first_name = expected[m["phone_number"]]
        assert m["message"] == f"Hi {first_name}, {points[pid]} points wait for you\n{FOOTER}"
    # the ledger keeps SNS's message id of each
    ids = {
        r[0]
        for r in scratch.db.execute(
            "SELECT provider_message_id FROM campaign.delivery_logs WHERE status = 'sent'"
        )
    }
    assert ids == {m["message_id"] for m in sent}


def test_sns_without_a_usable_connection_fails_before_anything_is_written(setup, context, monkeypatch):
    scratch, pop, _ = setup
    monkeypatch.setenv("AIRFLOW_CONN_AWS_NOREGION", json.dumps({"conn_type": "aws", **CREDENTIALS}))
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    op = operator(scratch, pop, None, channel="sns", channel_options={"aws_conn_id": "aws_noregion"})
    with pytest.raises(CampaignError, match=r"aws_conn_id='aws_noregion': no AWS region"):
        op.execute(context("sms"))
    assert scratch.db.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone() == (0,)


# ---- what goes with each publish (a local SNS endpoint that records the attributes) ----------------


@pytest.fixture
def sns_stub(monkeypatch: pytest.MonkeyPatch) -> Any:
    from tests.channels.sns_stub import SnsStub

    stub = SnsStub()
    extra = {"endpoint_url": stub.url, "region_name": "eu-west-1"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_STUB", json.dumps({"conn_type": "aws", **CREDENTIALS, "extra": extra})
    )
    yield stub
    stub.stop()


def test_sns_carries_the_sms_attributes_and_records_refusals(setup, context, sns_stub):
    scratch, pop, _ = setup
    expected = eligible(scratch.db)
    refused = sorted(expected)[:2]
    for number in refused:
        sns_stub.fail[number] = "OptedOut" if number == refused[0] else "InvalidParameter"
    ctx = context("sms")
    operator(
        scratch,
        pop,
        None,
        channel="sns",
        channel_options={"aws_conn_id": "aws_stub", "threads": 2, "max_price": 0.05},
        message_type="transactional",
        stop_footer=None,
        sender_id="ACME",
        origination_number="+18005550100",
        max_error_rate=None,
    ).execute(ctx)
    got = {p["PhoneNumber"]: p for p in sns_stub.published}
    assert set(got) == set(expected) - set(refused)
    for p in got.values():
        assert p["attributes"] == {
            "AWS.SNS.SMS.SMSType": "Transactional",
            "AWS.SNS.SMS.SenderID": "ACME",
            "AWS.MM.SMS.OriginationNumber": "+18005550100",
            "AWS.SNS.SMS.MaxPrice": "0.05000",
        }
        assert "MessageStructure" not in p
    failed = dict(
        scratch.db.execute(
            "SELECT address, error FROM campaign.delivery_logs WHERE status = 'failed'"
        ).fetchall()
    )
    assert set(failed) == set(refused)
    assert failed[refused[0]].startswith("OptedOut")
    assert ctx["ti"].xcoms["report"]["by_status"]["sent"] == len(expected) - 2

"""Bad input to SmsDeliveryOperator: refused with the option named before anything is written or
sent, or (a number that is not one, a message too long) excluded with its reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.sms import SmsDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator
from tests.bad_input.matrix import Row, cases

OPERATOR = "SmsDeliveryOperator"
BASE = {"task_id": "bad_sms", "text": "Hi {{ first_name }}", "stop_footer": "STOP 36111", "channel": "outbox"}


def r(given: str, outcome: str, **kwargs: Any) -> Row:
    return Row(OPERATOR, given, outcome, args=kwargs)


AT_PARSE = [
    r(
        "a promotional message without stop_footer",
        "refused: `stop_footer: a promotional SMS must tell its recipient how to opt out …`",
        options={"stop_footer": None},
        match=r"stop_footer: a promotional SMS",
    ),
    r(
        "a blank stop_footer",
        "refused: `stop_footer='   ': give a non-empty string.`",
        options={"stop_footer": "   "},
        match=r"stop_footer='   ': give a non-empty string",
    ),
    r(
        "a stop_footer longer than one part",
        "refused: `stop_footer=…: the footer alone takes 2 parts …`",
        options={"stop_footer": "STOP " * 40},
        match=r"the footer alone takes 2 parts",
    ),
    r(
        "a sender_id with a dash or over 11 characters",
        "refused: `sender_id='MY-SHOP-2026': a sender id is 1 to 11 letters and digits …`",
        options={"sender_id": "MY-SHOP-2026"},
        match=r"sender_id='MY-SHOP-2026'",
    ),
    r(
        "a sender_id of digits only",
        "refused: `sender_id='12345': … with at least one letter`",
        options={"sender_id": "12345"},
        match=r"at least one\s+letter",
    ),
    r(
        "an origination_number not in E.164",
        "refused: `origination_number='06 12 34 56 78': give the number in E.164 …`",
        options={"origination_number": "06 12 34 56 78"},
        match=r"origination_number='06 12 34 56 78'",
    ),
    r(
        "max_parts=0, 11 or True",
        "refused: `max_parts=…: give a whole number from 1 to 10.`",
        options={"max_parts": 0},
        match=r"max_parts",
    ),
    r(
        "default_region='France'",
        "refused: `default_region='France': not a region code phonenumbers knows …`",
        options={"default_region": "France"},
        match=r"default_region='France'",
    ),
    r(
        "message_type='marketing'",
        "refused: `message_type='marketing'` with the choices",
        options={"message_type": "marketing"},
        match=r"message_type",
    ),
    r(
        "channel='ses' (an email channel)",
        "refused: `channel='ses'` with the SMS channels",
        options={"channel": "ses"},
        match=r"channel='ses'",
    ),
    r(
        "channel_options of another channel",
        "refused: `channel_options: ['smtp_conn_id'] are not options of the outbox channel …`",
        options={"channel_options": {"smtp_conn_id": "x"}},
        match=r"channel_options: \['smtp_conn_id'\]",
    ),
    r(
        "sns channel_options threads=0",
        "refused: `channel_options: threads=0: give a whole number from 1 to 64.`",
        options={"channel": "sns", "channel_options": {"threads": 0}},
        match=r"channel_options: threads=0: give a whole number from 1 to 64",
    ),
    r(
        "sns channel_options max_price='cheap'",
        "refused: `channel_options: max_price='cheap': give the most one SMS may cost in USD (> 0), or None.`",
        options={"channel": "sns", "channel_options": {"max_price": "cheap"}},
        match=r"channel_options: max_price='cheap'",
    ),
    r(
        "proof_to with a national number",
        "refused: `proof_to: '0612345678' is not a phone number in E.164 …`",
        options={"proof_to": ["0612345678"]},
        match=r"proof_to: '0612345678'",
    ),
    r(
        "a text with a template syntax error",
        "refused: `text: template syntax error on line 1 …`",
        options={"text": "Hi {{ first_name "},
        match=r"text: template syntax error",
    ),
    r("an empty text", "refused: `text: give the message text …`", options={"text": "  "}, match=r"text"),
]


@cases(*AT_PARSE)
def test_refused_when_the_dag_is_parsed(row: Row) -> None:
    with pytest.raises(CampaignError, match=row.args["match"]):
        SmsDeliveryOperator(population=[{"id": 1}], **{**BASE, **row.args["options"]})


def _population(scratch: Any, context: Any, rows_sql: str) -> dict[str, Any]:
    scratch.db.execute(rows_sql)
    return QueryOperator(
        task_id="bad_targets", campaign_conn_id=scratch.conn_id, where="id > 950000", columns=["first_name"]
    ).execute(context("bad_targets"))


AT_RUN = [
    r(
        "a text naming a column the population lacks",
        "refused before anything is written: `text uses {{ points }}, not a column of the population …`",
        options={"text": "{{ points }} pts"},
        match=r"text uses \{\{ points \}\}",
        written=False,
    ),
    r(
        "region_column naming no column",
        "refused: `region_column='region': neither the population … nor the resource 'profiles' has it …`",
        options={"region_column": "region"},
        match=r"region_column='region': neither",
        written=False,
    ),
    r(
        "address_column naming no column",
        "refused: `address_column='mobile': neither the population … nor the resource …`",
        options={"address_column": "mobile"},
        match=r"address_column='mobile'",
        written=False,
    ),
    r(
        "a template that fails for one recipient (a division by zero)",
        "refused, nothing prepared: `text: ZeroDivisionError … (recipient '950002')`",
        options={"text": "{{ 1 // (0 if first_name == 'Bob' else 1) }}"},
        match=r"ZeroDivisionError.*950002",
        written=False,
    ),
    r(
        "phone numbers that are SQL, text, 10,000 digits or letters",
        "excluded, each with its reason: `invalid phone number (not a phone number)`, `(too long)` (letters read as keypad digits); the rest sent",
        options={},
        excluded=True,
    ),
]


@cases(*AT_RUN)
def test_at_run_time(row: Row, scratch: Any, context: Any, tmp_path: Any) -> None:
    pop = _population(
        scratch,
        context,
        "INSERT INTO campaign.profiles (id, phone, country, first_name) VALUES"
        " (950001, '06 12 34 56 78', 'FR', 'Ann'), (950002, '+33 6 12 34 56 79', 'FR', 'Bob'),"
        " (950003, ''';DROP TABLE campaign.profiles;--', 'FR', 'Cyd'),"
        " (950004, repeat('9', 10000), 'FR', 'Dee'), (950005, '+33 6 CALL ME NOW', 'FR', 'Eve')",
    )
    options = {**BASE, "channel_options": {"folder": str(tmp_path)}, **row.args["options"]}
    op = SmsDeliveryOperator(population=pop, campaign_conn_id=scratch.conn_id, **options)
    if row.args.get("excluded"):
        ctx = context("bad_sms")
        op.execute(ctx)
        reasons = dict(
            scratch.db.execute(
                "SELECT recipient_key, coalesce(exclusion_reason, status) FROM campaign.delivery_logs"
            ).fetchall()
        )
        assert reasons["950001"] == reasons["950002"] == "sent"
        assert reasons["950003"] == "invalid phone number (not a phone number)"
        # letters are read as a keypad's digits (vanity numbers): too long here
        assert reasons["950004"] == reasons["950005"] == "invalid phone number (too long)"
        assert sorted(json.loads(p.read_text())["to"] for p in tmp_path.glob("*.json")) == [
            "+33612345678",
            "+33612345679",
        ]
        assert scratch.db.execute("SELECT count(*) FROM campaign.profiles WHERE id > 950000").fetchone() == (
            5,
        )
        return
    with pytest.raises(CampaignError, match=row.args["match"]):
        op.execute(context("bad_sms"))
    assert scratch.db.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone() == (0,)
    assert scratch.db.execute("SELECT count(*) FROM campaign.deliveries").fetchone() == (0,)
    assert not list(tmp_path.glob("*.json"))

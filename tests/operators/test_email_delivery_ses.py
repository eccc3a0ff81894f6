"""EmailDeliveryOperator through Amazon SES v2 (moto in server mode, real HTTP to boto3)."""

from __future__ import annotations

import email
import email.policy
import re

from airflow_campaign.delivery.unsubscribe import parse_and_verify
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator
from tests.channels.test_ses import recorded, ses  # noqa: F401 (the fixture)

KEY = "ses-tests-unsubscribe-signing-key"


def test_messages_reach_ses_personalised_with_links_that_verify(scratch, context, ses, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", KEY)
    pop = QueryOperator(
        task_id="targets", campaign_conn_id=scratch.conn_id, where="id <= 40", columns=["first_name"]
    ).execute(context("targets"))
    before = set(recorded(ses.endpoint))
    ctx = context("ses_news")
    EmailDeliveryOperator(
        task_id="ses_news",
        population=pop,
        subject="Hi {{ first_name }}",
        html='<p>Hello {{ first_name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>',
        from_addr="news@shop.example",
        unsubscribe_url="https://shop.example/unsubscribe",
        channel="ses",
        channel_options={"aws_conn_id": ses.conn_id},
        campaign_conn_id=scratch.conn_id,
    ).execute(ctx)
    sent = {
        r[0]: r[1]
        for r in scratch.db.execute(
            "SELECT provider_message_id, address FROM campaign.delivery_logs WHERE status = 'sent'"
        )
    }
    assert len(sent) == ctx["ti"].xcoms["report"]["by_status"]["sent"] > 0
    messages = {k: v for k, v in recorded(ses.endpoint).items() if k not in before}
    assert set(messages) == set(sent)  # the ledger holds SES's own message ids
    for message_id, address in sent.items():
        raw = messages[message_id]
        assert address in raw["destinations"]
        msg = email.message_from_string(raw["raw_data"], policy=email.policy.default)
        name = scratch.db.execute(
            "SELECT first_name FROM campaign.profiles WHERE email = %s ORDER BY id LIMIT 1", (address,)
        ).fetchone()[0]
        assert msg["Subject"] == f"Hi {name}"
        link = re.search(r"<(https://[^>]+)>", msg["List-Unsubscribe"]).group(1)
        assert parse_and_verify(link, KEY.encode()) is not None

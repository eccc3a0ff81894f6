"""EmailDeliveryOperator end to end on the outbox: ledger, personalisation, links, idempotency, modes."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_campaign.delivery.typology import EMAIL_SYNTAX
from airflow_campaign.delivery.unsubscribe import parse_and_verify
from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator
from tests.conftest import count

KEY = "k" * 32
HTML = (
    "<p>Hello {{ first_name }},</p><p>You have {{ loyalty_points }} points.</p>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)
WHERE = "id <= 120"
# what the standard typology keeps, written directly in SQL
ELIGIBLE = (
    "SELECT count(DISTINCT lower(email)) FROM campaign.profiles p WHERE id <= 120 AND btrim(email) <> ''"
    f" AND email ~ '{EMAIL_SYNTAX.replace(chr(39), chr(39) * 2)}' AND NOT email_denylisted"
    " AND lower(email) NOT IN (SELECT address FROM campaign.quarantine WHERE channel = 'email')"
)


@pytest.fixture
def setup(scratch, context, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", KEY)
    pop = QueryOperator(
        task_id="targets",
        campaign_conn_id=scratch.conn_id,
        where=WHERE,
        columns=["first_name", "loyalty_points"],
    ).execute(context("targets"))
    return scratch, pop, tmp_path / "outbox"


def operator(scratch, pop, folder, **kwargs):
    options = {
        "task_id": "newsletter",
        "population": pop,
        "subject": "{{ first_name }}, your points",
        "html": HTML,
        "from_addr": "news@example.com",
        "from_name": "Example News",
        "unsubscribe_url": "https://example.com/unsubscribe",
        "channel": "outbox",
        "channel_options": {"folder": str(folder)},
        "campaign_conn_id": scratch.conn_id,
        **kwargs,
    }
    return EmailDeliveryOperator(**options)


def messages(folder: Path):
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(folder.glob("*.eml"))
    ]


def test_sends_one_personalised_message_per_eligible_recipient(setup, context):
    scratch, pop, folder = setup
    ctx = context("newsletter", run_id="r1")
    sent_pop = operator(scratch, pop, folder).execute(ctx)
    report = ctx["ti"].xcoms["report"]
    expected = count(scratch.db, ELIGIBLE)
    assert report["by_status"]["sent"] == expected == len(list(folder.glob("*.eml")))
    assert report["by_status"]["sent"] + report["by_status"]["excluded"] == report["total"] == pop["count"]
    assert sent_pop["count"] == expected
    # each message is personalised from its recipient's row, with headers and a link that verifies
    for msg in messages(folder)[:10]:
        to = msg["To"]
        row = scratch.db.execute(
            "SELECT id, first_name, loyalty_points FROM campaign.profiles WHERE email = %s ORDER BY id LIMIT 1",
            (to,),
        ).fetchone()
        assert msg["Subject"] == f"{row[1]}, your points"
        html = msg.get_body(("html",)).get_content()
        assert f"You have {row[2]} points." in html
        text = msg.get_body(("plain",)).get_content()
        assert f"You have {row[2]} points." in text
        assert msg["From"] == "Example News <news@example.com>"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["X-Campaign-Delivery"].startswith("test_dag.newsletter/")
        link = re.search(r"<(https://[^>]+)>", msg["List-Unsubscribe"]).group(1)
        verified = parse_and_verify(link, KEY.encode())
        assert verified is not None and verified["delivery"] == "test_dag.newsletter"
        assert int(verified["recipient_key"]) in {
            r[0] for r in scratch.db.execute("SELECT id FROM campaign.profiles WHERE email = %s", (to,))
        }
        assert link.replace("&", "&amp;") in html
        assert parse_and_verify(link.replace("r=", "r=9"), KEY.encode()) is None


def test_the_same_run_twice_sends_nobody_twice(setup, context):
    scratch, pop, folder = setup
    operator(scratch, pop, folder).execute(context("newsletter", run_id="r2"))
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.eml")}
    ctx = context("newsletter", run_id="r2")
    operator(scratch, pop, folder).execute(ctx)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.eml")} == first  # nothing written again
    assert ctx["ti"].xcoms["report"]["by_status"]["sent"] == len(first)
    assert count(scratch.db, "SELECT count(*) FROM campaign.delivery_logs WHERE status = 'sent'") == len(
        first
    )


def test_prepare_then_send_in_two_tasks(setup, context):
    scratch, pop, folder = setup
    ctx = context("prepare", run_id="r3")
    operator(scratch, pop, folder, task_id="prepare", delivery="spring", mode="prepare").execute(ctx)
    assert ctx["ti"].xcoms["report"]["by_status"].get("sent", 0) == 0
    assert not list(folder.glob("*.eml")) if folder.exists() else True
    ctx = context("send", run_id="r3")
    operator(scratch, pop, folder, task_id="send", delivery="spring", mode="send").execute(ctx)
    assert ctx["ti"].xcoms["report"]["by_status"]["sent"] == count(scratch.db, ELIGIBLE)


def test_send_without_prepare_is_a_clear_error(setup, context):
    scratch, pop, folder = setup
    with pytest.raises(
        CampaignError, match=r"mode='send': delivery 'lonely' has nothing prepared for run key"
    ):
        operator(scratch, pop, folder, delivery="lonely", mode="send").execute(
            context("newsletter", run_id="r4")
        )


def test_proofs_go_to_test_addresses_only(setup, context):
    scratch, pop, folder = setup
    ctx = context("newsletter", run_id="r5")
    operator(scratch, pop, folder, proof_to=["qa@example.com", "boss@example.com"]).execute(ctx)
    got = messages(folder)
    assert sorted(m["To"] for m in got) == ["boss@example.com", "qa@example.com"]
    assert all(m["Subject"].startswith("[PROOF] ") for m in got)
    assert count(scratch.db, "SELECT count(*) FROM campaign.delivery_logs") == 0


def test_a_template_variable_missing_from_the_population_fails_before_anything(setup, context):
    scratch, pop, folder = setup
    op = operator(scratch, pop, folder, subject="Hi {{ last_name }}")
    with pytest.raises(
        CampaignError, match=r"subject uses \{\{ last_name \}\}, which is not a column of the population"
    ):
        op.execute(context("newsletter", run_id="r6"))
    assert count(scratch.db, "SELECT count(*) FROM campaign.delivery_logs") == 0
    assert not folder.exists() or not list(folder.glob("*.eml"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"html": "<p>no link</p>"}, r"unsubscribe"),
        ({"unsubscribe_url": None}, r"unsubscribe_url: a marketing email needs"),
        ({"subject": "{{ oops"}, r"subject"),
        ({"mode": "later"}, r"mode='later' is not valid"),
        ({"html": HTML + '<a href="{{ mirror_url }}">web</a>'}, r"mirror_url: the templates link to"),
        ({"channel": "fax"}, r"channel='fax' is not valid"),
        (
            {"channel_options": {"smtp_conn_id": "x"}},
            r"channel_options: \['smtp_conn_id'\] are not options of the outbox",
        ),
    ],
)
def test_bad_content_or_options_fail_at_parse_time(setup, kwargs, message):
    scratch, pop, folder = setup
    with pytest.raises(CampaignError, match=message):
        operator(scratch, pop, folder, **kwargs)


def test_backfill_simulates_and_on_backfill_skip_skips(setup, context):
    scratch, pop, folder = setup
    ctx = context("newsletter", run_id="backfill__1")
    ctx["dag_run"] = type("DR", (), {"run_type": "backfill", "run_id": "backfill__1"})()
    operator(scratch, pop, folder).execute(ctx)
    assert ctx["ti"].xcoms["report"]["by_status"]["simulated"] == count(scratch.db, ELIGIBLE)
    assert not folder.exists() or not list(folder.glob("*.eml"))
    with pytest.raises(AirflowSkipException):
        operator(scratch, pop, folder, on_backfill="skip").execute(ctx)

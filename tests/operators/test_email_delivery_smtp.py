"""The no-duplicate guarantees for real, over SMTP: backfills, a killed try, and misbehaving servers."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_campaign.delivery.unsubscribe import parse_and_verify
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator
from tests.channels.servers import Inbox

KEY = "smtp-tests-unsubscribe-signing-key"
CONTENT = {
    "subject": "Hello {{ first_name }}",
    "html": '<p>Hi {{ first_name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
    "from_addr": "news@example.com",
    "unsubscribe_url": "https://example.com/unsubscribe",
}
UTC = dt.timezone.utc


@pytest.fixture
def population(scratch, context, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", KEY)
    return QueryOperator(
        task_id="targets", campaign_conn_id=scratch.conn_id, where="id <= 60", columns=["first_name"]
    ).execute(context("targets"))


def delivery(scratch, pop, conn_id, **kwargs):
    op = EmailDeliveryOperator(
        task_id=kwargs.pop("task_id", "daily"),
        population=pop,
        channel="smtp",
        channel_options={"smtp_conn_id": conn_id, "connections": 2},
        campaign_conn_id=scratch.conn_id,
        **CONTENT,
        **kwargs,
    )
    op.send_retry_delay = 0.05  # keep retries quick in tests
    return op


def day_context(context, day: int, run_type: str):
    start = dt.datetime(2026, 3, day, tzinfo=UTC)
    ctx = context("daily", run_id=f"{run_type}__2026-03-{day:02d}")
    ctx.update(
        data_interval_start=start,
        data_interval_end=start + dt.timedelta(days=1),
        logical_date=start,
        dag_run=SimpleNamespace(run_type=run_type, run_id=ctx["run_id"]),
    )
    return ctx


def received(inbox: Inbox) -> Counter:
    """(recipient, run key) -> how many messages arrived."""
    counts: Counter = Counter()
    for m in inbox.messages:
        msg = email.message_from_bytes(m.content, policy=email.policy.default)
        counts[(m.rcpt_tos[0], msg["X-Campaign-Delivery"])] += 1
    return counts


def test_a_backfill_simulates_then_sends_once_then_nothing(scratch, population, smtp, context):
    inbox = Inbox()
    conn_id = smtp(inbox)
    days = range(1, 8)
    for day in days:
        delivery(scratch, population, conn_id).execute(day_context(context, day, "backfill"))
    assert inbox.messages == []
    simulated = scratch.db.execute(
        "SELECT count(DISTINCT run_key), count(*) FROM campaign.delivery_logs WHERE status = 'simulated'"
    ).fetchone()
    assert simulated[0] == 7 and simulated[1] > 0

    for day in days:
        delivery(scratch, population, conn_id, on_backfill="send").execute(
            day_context(context, day, "backfill")
        )
    got = received(inbox)
    assert len({key for _, key in got}) == 7
    assert set(got.values()) == {1}  # exactly one message per recipient per interval
    assert sum(got.values()) == simulated[1]

    for day in days:  # the same backfill again: nothing more
        delivery(scratch, population, conn_id, on_backfill="send").execute(
            day_context(context, day, "backfill")
        )
    assert sum(received(inbox).values()) == simulated[1]


def test_the_same_run_twice_over_smtp(scratch, population, smtp, context):
    inbox = Inbox()
    conn_id = smtp(inbox)
    for _ in range(2):
        delivery(scratch, population, conn_id).execute(day_context(context, 9, "scheduled"))
    got = received(inbox)
    assert got and set(got.values()) == {1}
    # what arrived: the envelope, the headers, the personalised body, a link that verifies
    for m in inbox.messages:
        assert m.mail_from == "news@example.com"
        msg = email.message_from_bytes(m.content, policy=email.policy.default)
        assert msg["To"] == m.rcpt_tos[0]
        first_name = scratch.db.execute(
            "SELECT first_name FROM campaign.profiles WHERE email = %s ORDER BY id LIMIT 1", (m.rcpt_tos[0],)
        ).fetchone()[0]
        assert msg["Subject"] == f"Hello {first_name}"
        assert f"Hi {first_name}" in msg.get_body(("html",)).get_content()
        assert msg["Message-ID"] and msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = re.search(r"<(https://[^>]+)>", msg["List-Unsubscribe"]).group(1)
        verified = parse_and_verify(link, KEY.encode())
        assert verified is not None and verified["delivery"] == "test_dag.daily"


@pytest.mark.parametrize(
    ("inbox", "failed_words"),
    [
        (Inbox(rcpt_faults=6), ()),  # 451 for a while, then accepts
        (Inbox(data_faults=3), ()),  # 421 after the data, then accepts
        (Inbox(drop_after=7), ()),  # drops the connection every 7 messages
        (Inbox(reject=("1@", "3@")), ("1@", "3@")),  # 550 for some recipients
    ],
    ids=["451", "421", "drop", "550"],
)
def test_every_recipient_ends_sent_or_failed_with_a_reason(
    scratch, population, smtp, context, inbox, failed_words
):
    conn_id = smtp(inbox)
    ctx = day_context(context, 10, "scheduled")
    delivery(scratch, population, conn_id, page_size=10, max_error_rate=None).execute(ctx)
    report = ctx["ti"].xcoms["report"]
    by_status = report["by_status"]
    assert set(by_status) <= {"sent", "failed", "excluded"}
    assert sum(by_status.values()) == report["total"] == population["count"]
    rows = scratch.db.execute(
        "SELECT address, status, error FROM campaign.delivery_logs WHERE status IN ('sent', 'failed')"
    ).fetchall()
    failed = {a: e for a, s, e in rows if s == "failed"}
    assert all(e for e in failed.values())  # a reason for each
    assert set(failed) == {a for a, _, _ in rows if any(w in a for w in failed_words)}
    if failed_words:
        assert all("550" in e for e in failed.values())
    got = received(inbox)
    assert set(got.values()) <= {1}
    assert {to for to, _ in got} == {a for a, s, _ in rows if s == "sent"}


KILLED_TRY = textwrap.dedent(
    """
    import json, sys
    from types import SimpleNamespace
    from airflow_campaign.operators.deliveries import EmailDeliveryOperator

    pop, conn_id, content = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    op = EmailDeliveryOperator(
        task_id="daily", population=pop, channel="smtp", campaign_conn_id="campaign_scratch",
        channel_options={"smtp_conn_id": conn_id, "connections": 1}, rate_limit=25, page_size=5, **content,
    )
    ti = SimpleNamespace(dag_id="test_dag", task_id="daily", run_id="killed", map_index=-1, try_number=1,
                         xcom_push=lambda key, value: None)
    op.execute({"ti": ti, "run_id": "killed"})
    """
)


@pytest.mark.parametrize("on_uncertain", ["skip", "resend"])
def test_a_try_killed_mid_send_then_retried(scratch, population, smtp, context, on_uncertain, tmp_path):
    inbox = Inbox()
    conn_id = smtp(inbox)
    script = tmp_path / "killed_try.py"
    script.write_text(KILLED_TRY)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    child = subprocess.Popen(
        [sys.executable, str(script), json.dumps(population), conn_id, json.dumps(CONTENT)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(inbox.messages) < 12 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    before = len(inbox.messages)
    left = scratch.db.execute(
        "SELECT count(*) FROM campaign.delivery_logs WHERE status = 'sending'"
    ).fetchone()[0]
    assert left > 0  # the killed try held a page

    ctx = context("daily", run_id="killed")
    ctx["ti"].try_number = 2
    delivery(scratch, population, conn_id, on_uncertain=on_uncertain).execute(ctx)
    by_status = ctx["ti"].xcoms["report"]["by_status"]
    assert sum(by_status.values()) == population["count"]
    got = Counter(m.rcpt_tos[0] for m in inbox.messages)
    sent = {
        r[0] for r in scratch.db.execute("SELECT address FROM campaign.delivery_logs WHERE status = 'sent'")
    }
    if on_uncertain == "skip":
        assert by_status.get("unknown") == left
        assert set(got.values()) == {1}  # at most once: nobody got two
        assert sent <= set(got)
    else:
        assert "unknown" not in by_status
        assert sent == set(got)  # at least once: everybody got it, a few maybe twice
        assert sum(got.values()) - len(got) <= left
    assert len(inbox.messages) > before


def test_max_error_rate_stops_the_task_and_leaves_the_rest_pending(scratch, population, smtp, context):
    from airflow_campaign.errors import CampaignError

    inbox = Inbox(reject=("@",))  # refuses everybody
    conn_id = smtp(inbox)
    ctx = day_context(context, 11, "scheduled")
    many = QueryOperator(  # the rate is judged after 100 recipients
        task_id="many", campaign_conn_id=scratch.conn_id, where="id <= 400", columns=["first_name"]
    ).execute(context("many"))
    op = delivery(scratch, many, conn_id, page_size=10, max_error_rate=0.5)
    with pytest.raises(CampaignError, match=r"max_error_rate=0.5: \d+ of \d+ recipients failed"):
        op.execute(ctx)
    counts = dict(
        scratch.db.execute("SELECT status, count(*) FROM campaign.delivery_logs GROUP BY 1").fetchall()
    )
    assert counts.get("failed", 0) >= 10 and counts.get("pending", 0) > 0
    assert counts.get("sending", 0) == 0  # pages claimed ahead were handed back
    assert inbox.messages == []


def test_rate_limit_spaces_messages_across_connections(scratch, population, smtp, context):
    inbox = Inbox()
    conn_id = smtp(inbox)
    ctx = day_context(context, 12, "scheduled")
    started = time.monotonic()
    delivery(scratch, population, conn_id, rate_limit=100).execute(ctx)
    elapsed = time.monotonic() - started
    sent = ctx["ti"].xcoms["report"]["by_status"]["sent"]
    assert len(inbox.messages) == sent > 20
    assert elapsed >= (sent - 1) / 100  # never faster than 100 messages/s in total

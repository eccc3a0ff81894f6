"""The delivery engine through crashes: a try SIGKILLed mid-send leaves in doubt only the messages in
the channel's hands; whoever comes next (a retry, another run of the run key) settles the rest."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator
from tests.channels.servers import Inbox

KEY = "crash-tests-unsubscribe-signing-key"
CONTENT = {
    "subject": "Hello {{ first_name }}",
    "html": '<p>Hi {{ first_name }}, {{ loyalty_points }} points</p><p><a href="{{ unsubscribe_url }}">Stop</a></p>',
    "from_addr": "news@example.com",
    "unsubscribe_url": "https://example.com/unsubscribe",
}
PEOPLE = 3000
BASE = 900_000
DAY = dt.datetime(2026, 4, 2, tzinfo=dt.timezone.utc)

KILLED_TRY = textwrap.dedent(
    """
    import datetime as dt, json, sys
    from types import SimpleNamespace
    from airflow_campaign.operators.deliveries import EmailDeliveryOperator

    pop, conn_id, content = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    op = EmailDeliveryOperator(
        task_id="daily", population=pop, channel="smtp", campaign_conn_id="campaign_scratch",
        channel_options={"smtp_conn_id": conn_id, "connections": 1}, page_size=100, max_error_rate=None,
        **content,
    )
    ti = SimpleNamespace(dag_id="crash_dag", task_id="daily", run_id="killed", map_index=-1, try_number=1,
                         xcom_push=lambda key, value: None)
    op.execute({"ti": ti, "run_id": "killed", "logical_date": dt.datetime.fromisoformat(sys.argv[4])})
    """
)


@pytest.fixture
def people(scratch, context, monkeypatch):
    """3,000 profiles with distinct valid addresses, and the population of all of them."""
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", KEY)
    scratch.db.execute(
        "INSERT INTO campaign.profiles (id, email, first_name, loyalty_points)"
        " SELECT %s + g, 'crash' || g || '@example.org', 'Name' || g, g FROM generate_series(1, %s) g",
        (BASE, PEOPLE),
    )
    return QueryOperator(
        task_id="everyone",
        campaign_conn_id=scratch.conn_id,
        where=f"id > {BASE}",
        columns=["first_name", "loyalty_points"],
    ).execute(context("everyone", dag_id="crash_dag"))  # the population of the DAG that sends it


def gone(db) -> None:
    """Wait until the database has ended the killed process's sessions (it finishes the statement
    it was running first), so what the test reads is what the next try finds."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        held = db.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 7268 AND granted"
        ).fetchone()[0]
        if not held:
            return
        time.sleep(0.01)
    raise AssertionError("the killed try's database session did not end")


def statuses(db) -> Counter:
    return Counter(
        dict(db.execute("SELECT status, count(*) FROM campaign.delivery_logs GROUP BY 1").fetchall())
    )


@pytest.mark.parametrize("retry", ["next try", "another run of the run key"])
def test_a_send_killed_mid_page_leaves_at_most_the_messages_in_flight(
    scratch, people, smtp, context, tmp_path, retry
):
    inbox = Inbox()
    conn_id = smtp(inbox)
    script = tmp_path / "killed_try.py"
    script.write_text(KILLED_TRY)
    child = subprocess.Popen(
        [sys.executable, str(script), json.dumps(people), conn_id, json.dumps(CONTENT), DAY.isoformat()],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(inbox.messages) < 500 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.002)
    assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    gone(scratch.db)
    at_kill = statuses(scratch.db)
    received_before = len(inbox.messages)
    assert 500 <= received_before < PEOPLE
    assert at_kill["sending"] <= 2  # one connection: the message in flight and the next one marked
    assert at_kill["claimed"] > 2  # pages claimed ahead were not in doubt...
    assert at_kill["sent"] >= received_before - 2  # ...and results were recorded as they came

    run_id = "killed" if retry == "next try" else "rerun"
    ctx = context("daily", dag_id="crash_dag", run_id=run_id)
    ctx["ti"].try_number = 2 if retry == "next try" else 1
    ctx["logical_date"] = DAY  # the same run key either way
    op = EmailDeliveryOperator(
        task_id="daily",
        population=people,
        channel="smtp",
        channel_options={"smtp_conn_id": conn_id, "connections": 1},
        campaign_conn_id=scratch.conn_id,
        page_size=100,
        **CONTENT,
    )
    op.execute(ctx)
    by_status = ctx["ti"].xcoms["report"]["by_status"]
    assert sum(by_status.values()) == PEOPLE
    assert set(by_status) <= {"sent", "unknown"}
    assert by_status.get("unknown", 0) == at_kill["sending"] <= 2
    got = Counter(m.rcpt_tos[0] for m in inbox.messages)
    assert set(got.values()) == {1}  # nobody twice
    rows = scratch.db.execute("SELECT address, status FROM campaign.delivery_logs").fetchall()
    unknown = {a for a, s in rows if s == "unknown"}
    everybody = {f"crash{i}@example.org" for i in range(1, PEOPLE + 1)}
    assert everybody - unknown <= set(got)  # everybody else received their message
    assert set(got) <= everybody
    assert {a for a, s in rows if s == "sent"} == set(got) - unknown
    claims = dict(
        scratch.db.execute("SELECT state, count(*) FROM campaign.delivery_claims GROUP BY 1").fetchall()
    )
    assert claims == {"dead": 1, "finished": 1}
    occurrence = scratch.db.execute(
        "SELECT status, finished_at IS NOT NULL, counts->'by_status' FROM campaign.delivery_occurrences"
    ).fetchone()
    assert occurrence[0] == "sent" and occurrence[1] and occurrence[2] == by_status

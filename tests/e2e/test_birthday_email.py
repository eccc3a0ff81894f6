"""End to end: the daily birthday email under dag.test(), run for one day twice: one email each."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
from pathlib import Path

from airflow_campaign import demo
from airflow_campaign.embedded import connection_fields

DAG_FILE = Path(__file__).parents[2] / "dags_examples" / "birthday_email.py"


def test_birthday_email_for_one_day_sent_once(scratch, airflow_db, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DEFAULT", json.dumps(connection_fields(scratch.url)))
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "test-only-unsubscribe-signing-key")
    monkeypatch.setenv("CAMPAIGN_DEMO_DIR", str(tmp_path))
    day = dt.datetime(2026, 3, 14, 6, tzinfo=dt.timezone.utc)
    dag = demo.load_dag(DAG_FILE, "birthday_email")
    first = dag.test(logical_date=day)
    assert str(first.state).endswith("success")
    outbox = tmp_path / "outbox" / "birthday"
    files = sorted(outbox.glob("*.eml"))
    start, end = first.data_interval_start, first.data_interval_end
    assert end - start == dt.timedelta(days=1)
    born = {
        r[0]
        for r in scratch.db.execute(
            "SELECT lower(email) FROM campaign.profiles WHERE to_char(birth_date, 'MM-DD') = %s"
            " AND email LIKE '%%@%%' AND NOT email_denylisted",
            (start.strftime("%m-%d"),),
        )
    }
    got = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files]
    assert got and {m["To"].lower() for m in got} <= born
    assert all(m["Subject"].startswith("Happy birthday, ") for m in got)
    ledger = scratch.db.execute(
        "SELECT o.run_key, o.period_key, count(*) FILTER (WHERE l.status = 'sent') FROM campaign.delivery_logs l"
        " JOIN campaign.delivery_occurrences o ON o.id = l.occurrence_id GROUP BY 1, 2"
    ).fetchall()
    key = f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}"
    assert ledger == [(key, "2026", len(files))]
    stamps = {p.name: p.stat().st_mtime_ns for p in files}

    second = dag.test(logical_date=day)  # the same interval again: a new run, nobody emailed twice
    assert str(second.state).endswith("success")
    assert {p.name: p.stat().st_mtime_ns for p in outbox.glob("*.eml")} == stamps

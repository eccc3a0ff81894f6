"""The demo's checks: a real run of the demo DAG passes them, and a corrupted result fails them.

The checks compare each task's result with the selection recomputed from the inputs recorded
before the run, so changing a result after the run (a file line, an audience member, a profile's
points, an .eml file, a population row) must make exactly that check fail.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from airflow_campaign import demo
from airflow_campaign.embedded import connection_fields

DAG_FILE = Path(__file__).parents[1] / "dags_examples" / "campaign_targeting.py"


def test_demo_checks_pass_on_a_run_and_fail_on_a_corrupted_result(
    scratch: Any, airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the demo changes profiles, audiences and subscriptions: run it on a private copy
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DEFAULT", json.dumps(connection_fields(scratch.url)))
    monkeypatch.setenv("CAMPAIGN_DEMO_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "test-only-unsubscribe-signing-key")
    conn = scratch.db
    signups = tmp_path / "in" / "store_signups.csv"
    written = demo.write_signups(conn, signups)
    demo.record_inputs(conn, signups)
    dag = demo.load_dag(DAG_FILE, demo.DAG_ID)
    # the rules the checks restate are the DAG's
    assert dag.get_task("french_profiles").where == demo.FRENCH
    gold, test_cell = dag.get_task("segments").segments
    assert (gold["where"], test_cell["percent"]) == (demo.GOLD, demo.TEST_CELL_PERCENT)
    assert dag.get_task("gold_file").columns == demo.GOLD_FILE_COLUMNS

    dag_run = dag.test()
    assert str(dag_run.state).endswith("success")
    run_id = dag_run.run_id

    lines = {label: (rows, expected, problem) for label, rows, expected, problem in demo.report(conn, run_id)}
    assert set(lines) == set(demo.EXPECT)
    assert {label: problem for label, (_, _, problem) in lines.items() if problem} == {}
    assert all(rows == expected for rows, expected, _ in lines.values())
    assert lines["segments: gold"][0] > 0 and lines["segments: test_cell"][0] > 0
    # the sign-up file: every row is accepted or rejected, with the reason its content gives
    assert lines["store_signups"][0] + lines["store_signups: rejects"][0] == sum(written.values())
    rejects = _table(conn, run_id, "store_signups", "rejects")
    reasons = dict(
        conn.execute(sql.SQL("SELECT reject_reason, count(*) FROM {} GROUP BY 1").format(rejects)).fetchall()
    )
    assert (reasons["unmatched"], reasons["invalid points"]) == (written["unknown"], written["bad_points"])
    # the XCom Airflow stored for a table population is small whatever the row count
    value = _xcom(run_id, "newsletter_readers")
    assert len(value) < 1024 and json.loads(value)["count"] == lines["newsletter_readers"][0]

    def failing() -> set[str]:
        return {task for task, _, _, ok in demo.activities(conn, run_id, tmp_path) if not ok}

    used = demo.activities(conn, run_id, tmp_path)
    assert [task for task, *_ in used] == [
        "readers_audience",
        "gold_file",
        "raise_points",
        "promotions",
        "gold_email",
        "gold_sms",
        "gold_push",
    ]
    assert failing() == set(), used
    assert str(tmp_path / "out" / "gold_customers_") in used[1][1]

    # one data line less in the gold file
    path = next((tmp_path / "out").glob("gold_customers_*.csv"))
    path.write_text(
        "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8"
    )
    assert failing() == {"gold_file"}
    check = demo.check_gold_file(conn, run_id)[2]
    assert "1 missing" in check

    # one member less in the saved audience
    conn.execute(
        "DELETE FROM campaign.audience_members WHERE (audience_id, member_key) IN (SELECT m.audience_id,"
        " m.member_key FROM campaign.audience_members m JOIN campaign.audiences a ON a.id = m.audience_id"
        " WHERE a.name = 'demo_french_readers' LIMIT 1)"
    )
    assert failing() == {"gold_file", "readers_audience"}

    # one profile's points changed (one the store file did not raise)
    conn.execute(
        "UPDATE campaign.profiles SET loyalty_points = loyalty_points + 1 WHERE id = (SELECT min(id)"
        " FROM campaign.profiles WHERE id NOT IN (SELECT id FROM campaign_demo.signups s JOIN"
        " campaign_demo.profiles p USING (email)))"
    )
    assert failing() == {"gold_file", "readers_audience", "raise_points"}
    assert "1 not at the inputs' points" in demo.check_points(conn, run_id)[2]

    # one message less in the outbox
    next((tmp_path / "outbox").glob("*.eml")).unlink()
    assert failing() == {"gold_file", "readers_audience", "raise_points", "gold_email"}

    # one subscribe event less
    conn.execute(
        "DELETE FROM campaign.subscription_events WHERE id = (SELECT min(e.id)"
        " FROM campaign.subscription_events e WHERE e.run_id = %s AND e.task_id = 'promotions')",
        (run_id,),
    )
    assert failing() == {"gold_file", "readers_audience", "raise_points", "gold_email", "promotions"}

    # one SMS less, one push more (a copy of a device's message under another name)
    next((tmp_path / "outbox_sms").glob("*.json")).unlink()
    assert "gold_sms" in failing()
    first = next((tmp_path / "outbox_push").glob("*.json"))
    (tmp_path / "outbox_push" / "999999999.json").write_text(
        first.read_text(encoding="utf-8"), encoding="utf-8"
    )
    assert failing() == {
        "gold_file",
        "readers_audience",
        "raise_points",
        "gold_email",
        "promotions",
        "gold_sms",
        "gold_push",
    }
    assert "1 twice" in demo.check_push(conn, run_id, tmp_path / "outbox_push")[2]

    # one row less in a population: its line of the first table fails, and only it
    gold_table = _table(conn, run_id, "segments", "gold")
    conn.execute(sql.SQL("DELETE FROM {0} WHERE id = (SELECT min(id) FROM {0})").format(gold_table))
    wrong = {label: problem for label, _, _, problem in demo.report(conn, run_id) if problem}
    assert set(wrong) == {"segments: gold"}
    assert "1 missing" in wrong["segments: gold"]


def _xcom(run_id: str, task_id: str) -> str:
    path = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as meta:
        row = meta.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = 'return_value'",
            (demo.DAG_ID, run_id, task_id),
        ).fetchone()
    assert row is not None
    return row[0] if isinstance(row[0], str) else row[0].decode()


def _table(conn: psycopg.Connection, run_id: str, task_id: str, output: str = "") -> sql.Identifier:
    row = conn.execute(
        "SELECT table_name FROM campaign.staging_tables WHERE dag_id = %s AND run_id = %s AND task_id = %s"
        " AND output = %s",
        (demo.DAG_ID, run_id, task_id, output),
    ).fetchone()
    assert row is not None
    return sql.Identifier(*str(row[0]).split("."))

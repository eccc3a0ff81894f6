"""End to end: the demo campaign DAG (targeting, then using the population) under dag.test()."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airflow_campaign import demo
from airflow_campaign.embedded import connection_fields

DAG_FILE = Path(__file__).parents[2] / "dags_examples" / "campaign_targeting.py"


def test_demo_dag_counts_match_sql(
    scratch: Any, airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the demo changes profiles, audiences and subscriptions: run it on a private copy
    seeded = scratch.url
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DEFAULT", json.dumps(connection_fields(seeded)))
    with psycopg.connect(seeded, autocommit=True) as conn:
        written = demo.write_signups(conn, tmp_path / "in" / "store_signups.csv")
    monkeypatch.setenv("CAMPAIGN_DEMO_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "test-only-unsubscribe-signing-key")
    dag_run = demo.load_dag(DAG_FILE, demo.DAG_ID).test()
    assert str(dag_run.state).endswith("success")

    with psycopg.connect(seeded, autocommit=True) as conn:
        lines = {label: (rows, expected) for label, rows, expected in demo.report(conn, dag_run.run_id)}
        checked = {label for label, (_, expected) in lines.items() if expected is not None}
        assert checked == set(demo.CHECKS)
        for label, (rows, expected) in lines.items():
            assert expected is None or rows == expected, label
        assert lines["segments: gold"][0] > 0 and lines["segments: test_cell"][0] > 0

        # the sign-up file: every row is either accepted or rejected with a reason
        accepted, rejected = lines["store_signups"][0], lines["store_signups: rejects"][0]
        assert accepted + rejected == sum(written.values())
        reasons = dict(
            conn.execute(
                "SELECT reject_reason, count(*) FROM campaign_staging."
                + _table(conn, dag_run.run_id, "store_signups", "rejects").split(".", 1)[1]
                + " GROUP BY 1"
            ).fetchall()
        )
        assert reasons["unmatched"] == written["unknown"]
        assert reasons["invalid points"] == written["bad_points"]

        # the tasks that use the population: each agrees with the database or the file
        used = {task: (did, check, ok) for task, did, check, ok in demo.activities(conn, dag_run.run_id)}
        assert set(used) == {"readers_audience", "gold_file", "raise_points", "promotions", "gold_email"}
        assert all(ok for _, _, ok in used.values()), used
        assert f"{lines['contactable'][0]} members" == used["readers_audience"][1]
        assert used["gold_file"][1] == f"{lines['segments: gold'][0]} data lines in the file"
        assert str(tmp_path / "out" / "gold_customers_") in used["gold_file"][0]
    # the XCom Airflow stored for a table population is small whatever the row count
    value = _xcom(dag_run.run_id, "newsletter_readers")
    assert len(value) < 1024 and json.loads(value)["count"] == lines["newsletter_readers"][0]


def _xcom(run_id: str, task_id: str) -> str:
    path = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as meta:
        row = meta.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = 'return_value'",
            (demo.DAG_ID, run_id, task_id),
        ).fetchone()
    assert row is not None
    return row[0] if isinstance(row[0], str) else row[0].decode()


def _table(conn: psycopg.Connection, run_id: str, task_id: str, output: str = "") -> str:
    row = conn.execute(
        "SELECT table_name FROM campaign.staging_tables WHERE dag_id = %s AND run_id = %s AND task_id = %s"
        " AND output = %s",
        (demo.DAG_ID, run_id, task_id, output),
    ).fetchone()
    assert row is not None
    return str(row[0])

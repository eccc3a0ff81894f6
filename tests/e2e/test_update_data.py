"""End to end: a store export loaded by email raises loyalty points, on a private copy of the data."""

from __future__ import annotations

import json
from pathlib import Path

from airflow_campaign import demo
from airflow_campaign.embedded import connection_fields

DAG_FILE = Path(__file__).parents[2] / "dags_examples" / "update_data.py"


def test_points_sync(scratch, airflow_db, tmp_path, monkeypatch):
    db = scratch.db
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DEFAULT", json.dumps(connection_fields(scratch.url)))
    monkeypatch.setenv("CAMPAIGN_DEMO_DIR", str(tmp_path))
    people = db.execute(
        "SELECT DISTINCT ON (lower(email)) id, email, loyalty_points FROM campaign.profiles"
        " WHERE email LIKE '%@%' AND email NOT IN (SELECT email FROM campaign.profiles WHERE email IS NOT NULL GROUP BY email HAVING count(*) > 1)"
        " ORDER BY lower(email), id LIMIT 4"
    ).fetchall()
    (tmp_path / "in").mkdir()
    lines = ["email,points"]
    lines += [f"{people[0][1]},{people[0][2] + 500}", f"{people[1][1]},{people[1][2] + 1}"]  # raised
    lines += [f"{people[2][1]},0", f"{people[3][1]},{people[3][2]}"]  # lower or equal: unchanged
    lines += ["nobody@example.invalid,10", f"{people[0][1].upper()}x,5"]  # match no profile
    (tmp_path / "in" / "store_points.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    dag_run = demo.load_dag(DAG_FILE, "update_data").test()
    assert str(dag_run.state).endswith("success")
    got = dict(
        db.execute(
            "SELECT id, loyalty_points FROM campaign.profiles WHERE id = ANY(%s)", ([p[0] for p in people],)
        ).fetchall()
    )
    assert got == {
        people[0][0]: people[0][2] + 500,
        people[1][0]: people[1][2] + 1,
        people[2][0]: people[2][2],
        people[3][0]: people[3][2],
    }
    done = db.execute(
        "SELECT done_through, counts->>'updated', finished_at IS NOT NULL FROM campaign.update_progress"
    ).fetchone()
    assert done == (4, "2", True)

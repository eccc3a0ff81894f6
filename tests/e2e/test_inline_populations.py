"""End to end: TaskFlow tasks return a list of dicts and a DataFrame; operators take them as populations."""

from __future__ import annotations

from pathlib import Path

import psycopg

from airflow_campaign import demo

DAG_FILE = Path(__file__).parents[2] / "dags_examples" / "inline_populations.py"


def test_list_and_dataframe_flow_between_tasks(seeded: str, airflow_db: None) -> None:
    dag_run = demo.load_dag(DAG_FILE, "inline_populations").test()
    assert str(dag_run.state).endswith("success")
    with psycopg.connect(seeded, autocommit=True) as conn:
        tables = dict(
            conn.execute(
                "SELECT task_id, table_name FROM campaign.staging_tables WHERE dag_id = %s AND run_id = %s",
                ("inline_populations", dag_run.run_id),
            ).fetchall()
        )
        union_ids = [r[0] for r in conn.execute(f"SELECT id FROM {tables['union']} ORDER BY id")]
        both_ids = [r[0] for r in conn.execute(f"SELECT id FROM {tables['both']} ORDER BY id")]
    assert union_ids == [1, 2, 3, 4]
    assert both_ids == [1, 2, 3]

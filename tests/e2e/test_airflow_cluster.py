"""Smoke test of tests/airflow_cluster.py: a real Airflow 3 runs 4 mapped task instances in parallel.

Scheduler (LocalExecutor, parallelism 4), dag-processor and api-server run as processes; the
metadata database is a new database on the session's Postgres. Each mapped instance sleeps and
records (start, end, pid) in a table of another new database, reached through an Airflow connection.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airflow_campaign.embedded import connection_fields
from tests.airflow_cluster import AirflowCluster

DAG_ID = "cluster_smoke_parallel"
SLEEP = 3

DAG_FILE = textwrap.dedent(
    f"""
    import datetime as dt
    import os
    import time

    from airflow.sdk import dag, task


    @dag(dag_id="{DAG_ID}", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False)
    def cluster_smoke_parallel():
        @task
        def sleep_and_record(n: int) -> int:
            from airflow.providers.postgres.hooks.postgres import PostgresHook

            hook = PostgresHook(postgres_conn_id="smoke_db")
            hook.run("SELECT 1")  # connected before the clock starts: the interval is the sleep
            started = dt.datetime.now(dt.timezone.utc)
            time.sleep({SLEEP})
            ended = dt.datetime.now(dt.timezone.utc)
            hook.run(
                "INSERT INTO smoke_runs (n, pid, started, ended) VALUES (%s, %s, %s, %s)",
                autocommit=True,
                parameters=(n, os.getpid(), started, ended),
            )
            return n

        sleep_and_record.expand(n=[0, 1, 2, 3])


    cluster_smoke_parallel()
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the cluster's process handling is Linux's")
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_four_mapped_tasks_run_in_parallel(database_url: str, fresh_database: Any, tmp_path: Path) -> None:
    results_url = fresh_database()
    with psycopg.connect(results_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE smoke_runs (n int PRIMARY KEY, pid int NOT NULL, started timestamptz NOT NULL,"
            " ended timestamptz NOT NULL)"
        )
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "cluster_smoke.py").write_text(DAG_FILE)
    env = {"AIRFLOW_CONN_SMOKE_DB": json.dumps(connection_fields(results_url))}

    began = time.monotonic()
    with AirflowCluster(database_url, dags, env=env, parallelism=4) as airflow:
        started = time.monotonic()
        run_id, state = airflow.run_dag(DAG_ID, timeout=60)
        finished = time.monotonic()
        assert state == "success", airflow.diagnostics(DAG_ID, run_id)
        tis = airflow.task_instances(DAG_ID, run_id)
        failed = airflow.failed_task_logs(DAG_ID, run_id)
    print(
        f"cluster up in {started - began:.1f}s, run {finished - started:.1f}s,"
        f" stopped in {time.monotonic() - finished:.1f}s"
    )

    assert [(t.task_id, t.map_index, t.state, t.try_number) for t in tis] == [
        ("sleep_and_record", i, "success", 1) for i in range(4)
    ], failed
    assert all(t.start_date and t.end_date for t in tis)

    with psycopg.connect(results_url, autocommit=True) as conn:
        rows = conn.execute("SELECT n, pid, started, ended FROM smoke_runs ORDER BY n").fetchall()
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    pids = {r[1] for r in rows}
    assert len(pids) == 4 and os.getpid() not in pids, rows
    assert pids == {t.pid for t in tis}  # the metadata database agrees on which process ran which
    # truly parallel: there is an instant at which all four were sleeping
    latest_start, earliest_end = max(r[2] for r in rows), min(r[3] for r in rows)
    assert latest_start < earliest_end, rows
    assert all((r[3] - r[2]).total_seconds() >= SLEEP for r in rows)

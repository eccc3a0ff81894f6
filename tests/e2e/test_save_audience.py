"""End to end: a DAG saves an audience; its Asset event carries the size and schedules the consumer DAG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from airflow_campaign import demo
from tests.conftest import count

DAG_FILE = Path(__file__).parents[2] / "dags_examples" / "save_audience.py"
URI = "campaign://audience/loyal_customers"
LOYAL = "SELECT count(*) FROM campaign.profiles WHERE loyalty_points >= 9000 AND email LIKE '%@%' AND NOT email_denylisted"


def asset_events(uri: str) -> list[tuple[dict[str, Any], str | None, str | None, str | None]]:
    """(extra, source dag, task and run) of each event recorded on the asset, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(
                AssetEvent.extra,
                AssetEvent.source_dag_id,
                AssetEvent.source_task_id,
                AssetEvent.source_run_id,
            )
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri)
            .order_by(AssetEvent.id)
        ).all()
        return [tuple(r) for r in rows]


def queued_runs(dag_id: str, uri: str) -> int:
    """Asset events waiting to start a run of ``dag_id`` (what the scheduler turns into a DAG run)."""
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(
            select(func.count())
            .select_from(AssetDagRunQueue)
            .join(AssetModel, AssetModel.id == AssetDagRunQueue.asset_id)
            .where(AssetDagRunQueue.target_dag_id == dag_id, AssetModel.uri == uri)
        )


def set_paused(dag_id: str, paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=paused))


def test_saved_audience_emits_its_size_and_schedules_the_consumer(
    scratch: Any, airflow_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the DAGs use campaign_default: point it at this test's private database
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DEFAULT", os.environ["AIRFLOW_CONN_CAMPAIGN_SCRATCH"])
    db = scratch.db
    expected = count(db, LOYAL)
    assert expected > 50

    producer = demo.load_dag(DAG_FILE, "save_audience_producer")
    first = producer.test()
    assert str(first.state).endswith("success")
    assert (
        count(
            db,
            "SELECT count(*) FROM campaign.audience_members m JOIN campaign.audiences a ON a.id = m.audience_id"
            " WHERE a.name = 'loyal_customers'",
        )
        == expected
    )
    history = db.execute(
        "SELECT s.size, s.added, s.removed, s.dag_id, s.run_id FROM campaign.audience_sizes s"
        " JOIN campaign.audiences a ON a.id = s.audience_id WHERE a.name = 'loyal_customers'"
    ).fetchall()
    assert history == [(expected, expected, 0, "save_audience_producer", first.run_id)]

    extra = {"audience": "loyal_customers", "type": "list", "resource": "profiles"}
    assert asset_events(URI) == [
        (
            {**extra, "size": expected, "added": expected, "removed": 0},
            "save_audience_producer",
            "save_loyal_customers",
            first.run_id,
        )
    ]

    # the consumer DAG is scheduled on the asset: once it is unpaused, the next save queues a run of it
    assert queued_runs("save_audience_consumer", URI) == 0
    set_paused("save_audience_consumer", False)
    second = producer.test()
    assert str(second.state).endswith("success")
    assert asset_events(URI)[-1] == (
        {**extra, "size": expected, "added": 0, "removed": 0},
        "save_audience_producer",
        "save_loyal_customers",
        second.run_id,
    )
    assert queued_runs("save_audience_consumer", URI) == 1

    consumer = demo.load_dag(DAG_FILE, "save_audience_consumer")
    run = consumer.test()
    assert str(run.state).endswith("success")
    read = db.execute(
        "SELECT row_count FROM campaign.staging_tables WHERE dag_id = 'save_audience_consumer' AND run_id = %s",
        (run.run_id,),
    ).fetchone()
    assert read == (expected,)

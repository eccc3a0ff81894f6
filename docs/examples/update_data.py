"""UpdateDataOperator: points from a store system into profiles, and tiers into a table of our own."""

import datetime as dt

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG, task

from airflow_campaign.operators.targeting import EnrichmentOperator, QueryOperator
from airflow_campaign.operators.update_data import UpdateDataOperator

with DAG(
    dag_id="docs_update_data",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:

    @task
    def store_points() -> list[dict]:
        """Points balances exported by the store system (one row is bad: no profile id)."""
        return [
            {"id": 1, "points": 12000},
            {"id": 2, "points": 0},
            {"id": 3, "points": 450},
            {"id": None, "points": 99},
        ]

    # Raise balances only (a lower store figure never lowers loyalty_points); write only the
    # rows that change; the row without an id is passed on as a reject instead of failing.
    points = UpdateDataOperator(
        task_id="points",
        population=store_points(),
        operation="update",
        fields={"loyalty_points": {"value": "points", "when": "src.points > dest.loyalty_points"}},
        rejects="output",
    )

    tiers_table = SQLExecuteQueryOperator(
        task_id="tiers_table",
        conn_id="campaign_default",
        sql="CREATE TABLE IF NOT EXISTS public.loyalty_tiers ("
        " profile_id bigint PRIMARY KEY, tier text NOT NULL, updated_at timestamptz)",
    )

    french = QueryOperator(task_id="french", where="country = 'FR'", columns=["loyalty_points"])
    tiered = EnrichmentOperator(
        task_id="tiered",
        population=french.output,
        columns={"tier": "CASE WHEN p.loyalty_points >= 8000 THEN 'gold' ELSE 'standard' END"},
    )

    # Any table: keys map its column to the population's (profile_id <- id).
    tiers = UpdateDataOperator(
        task_id="tiers",
        population=tiered.output,
        table="public.loyalty_tiers",
        keys={"profile_id": "id"},
        fields={"tier": "tier"},
    )
    points >> tiers_table >> tiers

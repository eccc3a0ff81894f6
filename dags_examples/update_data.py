"""Nightly points sync: a store export (CSV, by email) raises profiles' loyalty points.

The file lists an address and its points balance in the store system. Rows are reconciled
with profiles by email; a balance only ever raises `loyalty_points`; unknown addresses and
bad numbers come out as rejects, and the task log and XCom say how many rows changed.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_campaign.operators.targeting import LoadFileOperator
from airflow_campaign.operators.update_data import UpdateDataOperator

POINTS = os.path.join(os.environ.get("CAMPAIGN_DEMO_DIR", ".campaign"), "in", "store_points.csv")

with DAG(
    dag_id="update_data",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    params={"points_path": POINTS},
    tags=["campaign", "example"],
    doc_md=__doc__,
) as dag:
    store_points = LoadFileOperator(
        task_id="store_points",
        path="{{ params.points_path }}",
        reconcile_on="email",
        types={"points": "integer"},
    )
    raise_points = UpdateDataOperator(
        task_id="raise_points",
        population=store_points.output,
        operation="update",
        fields={"loyalty_points": {"value": "points", "when": "src.points > dest.loyalty_points"}},
        batch_size=50_000,
    )

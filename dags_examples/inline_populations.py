"""Small populations made in Python: a @task returns a list of dicts or a DataFrame, operators take it.

Inline populations travel in XCom and are COPYed into a temporary table by the operator that
reads them; no Airflow configuration change is needed.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from airflow.sdk import DAG, task

from airflow_campaign.operators.targeting import IntersectionOperator, QueryOperator, UnionOperator

with DAG(
    dag_id="inline_populations",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def picked_by_hand() -> list[dict[str, object]]:
        return [{"id": 1, "note": "vip"}, {"id": 2, "note": "press"}]

    @task
    def scored_by_a_model() -> pd.DataFrame:
        return pd.DataFrame({"id": [2, 3, 4], "score": [0.9, 0.8, 0.7]})

    union = UnionOperator(task_id="union", populations=[picked_by_hand(), scored_by_a_model()])
    low_ids = QueryOperator(task_id="low_ids", where="id <= 3")
    both = IntersectionOperator(task_id="both", populations=[union.output, low_ids.output])

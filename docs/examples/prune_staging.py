"""PruneStagingOperator: drop the staging tables of populations older than a week."""

import datetime as dt

from airflow.sdk import DAG

from airflow_campaign.operators.housekeeping import PruneStagingOperator

with DAG(
    dag_id="docs_prune_staging",
    schedule=None,  # in production: "@daily"
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs", "housekeeping"],
) as dag:
    PruneStagingOperator(task_id="prune_staging", older_than="7d")

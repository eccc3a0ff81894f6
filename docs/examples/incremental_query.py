"""IncrementalQueryOperator: only what earlier runs did not return."""

import datetime as dt

from airflow.sdk import DAG

from airflow_campaign.operators.targeting import IncrementalQueryOperator

with DAG(
    dag_id="docs_incremental_query",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["campaign", "docs"],
) as dag:
    # Every profile with an email, each one returned by one run only.
    welcome = IncrementalQueryOperator(
        task_id="welcome",
        mode="exclude",
        where="email IS NOT NULL AND NOT email_denylisted",
        columns=["email", "first_name"],
    )

    # Profiles whose last purchase is newer than the last run's newest one.
    recent_buyers = IncrementalQueryOperator(
        task_id="recent_buyers",
        mode="watermark",
        date_column="last_purchase_at",
        initial_watermark="2025-10-01T00:00:00+00:00",
        columns=["email"],
    )

"""DeduplicationOperator: one profile per email address, and the best two per country."""

import datetime as dt

from airflow.sdk import DAG

from airflow_campaign.operators.targeting import DeduplicationOperator, QueryOperator

with DAG(
    dag_id="docs_deduplication",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    with_email = QueryOperator(
        task_id="with_email",
        where="email LIKE '%@%'",
        columns=["email", "country", "loyalty_points", "last_purchase_at"],
    )

    # Several profiles can share an address: keep the one with the most points
    # (then the most recent buyer; ties go to the smallest id).
    one_per_address = DeduplicationOperator(
        task_id="one_per_address",
        population=with_email.output,
        on=["email"],
        prefer="loyalty_points DESC, last_purchase_at DESC NULLS LAST",
    )

    # Keep two rows per country.
    best_two_per_country = DeduplicationOperator(
        task_id="best_two_per_country",
        population=one_per_address.output,
        on=["country"],
        keep=2,
        prefer="loyalty_points DESC",
    )

"""QueryOperator: three ways to select profiles."""

import datetime as dt

from airflow.sdk import DAG

from airflow_campaign.operators.targeting import QueryOperator

with DAG(
    dag_id="docs_query",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    params={"country": "FR"},
    tags=["campaign", "docs"],
) as dag:
    # A condition on the profile columns, a value passed as a query parameter (templated),
    # the columns to carry and one computed column.
    by_country = QueryOperator(
        task_id="by_country",
        where="country = %(country)s AND email IS NOT NULL AND NOT email_denylisted",
        parameters={"country": "{{ params.country }}"},
        columns=["email", "first_name", "last_name"],
        additional="extract(year FROM r.birth_date)::int AS birth_year",
    )

    # The 100 best customers who bought something since 1 July 2025 (ties: smallest id first).
    best_customers = QueryOperator(
        task_id="best_customers",
        where="last_purchase_at >= %(since)s",
        parameters={"since": "2025-07-01"},
        columns=["email", "loyalty_points"],
        limit=100,
        order_by="loyalty_points DESC",
    )

    # A whole SELECT: it must return the resource's key column (id for profiles).
    newsletter_readers = QueryOperator(
        task_id="newsletter_readers",
        sql="""
            SELECT s.profile_id AS id, s.subscribed_at
            FROM campaign.subscriptions s
            JOIN campaign.services v ON v.id = s.service_id
            WHERE v.name = 'newsletter'
        """,
    )

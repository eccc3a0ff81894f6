"""EnrichmentOperator: add profile columns, an aggregate and an optional related row."""

import datetime as dt

from airflow.sdk import DAG

from airflow_campaign.operators.targeting import EnrichmentOperator, ReadAudienceOperator

with DAG(
    dag_id="docs_enrichment",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    vip = ReadAudienceOperator(task_id="vip", audience="vip")

    enriched = EnrichmentOperator(
        task_id="enriched",
        population=vip.output,
        # p is the population, r its profile row.
        columns={
            "email": "r.email",
            "first_name": "r.first_name",
            "age": "date_part('year', age(date '2026-01-01', r.birth_date))::int",
        },
        joins=[
            {
                # one-to-many: aggregates only
                "table": "campaign.subscriptions",
                "alias": "s",
                "on": "s.profile_id = p.id",
                "kind": "many",
                "columns": {"subscriptions": "count(*)", "last_subscribed_at": "max(s.subscribed_at)"},
            },
            {
                # zero or one row: NULL when the profile has no app install
                "table": "campaign.app_subscriptions",
                "alias": "a",
                "on": "a.profile_id = p.id AND a.app = 'shop'",
                "kind": "optional",
                "columns": {"platform": "a.platform"},
            },
        ],
    )

"""A first campaign DAG: French profiles with an email, minus do-not-contact, split into segments."""

import datetime as dt

from airflow.sdk import DAG

from airflow_campaign.operators.targeting import (
    ExclusionOperator,
    QueryOperator,
    ReadAudienceOperator,
    SegmentationOperator,
)

with DAG(
    dag_id="docs_first_dag",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    french = QueryOperator(
        task_id="french",
        where="country = 'FR' AND email IS NOT NULL AND NOT email_denylisted",
        columns=["email", "first_name", "loyalty_points"],
    )
    do_not_contact = ReadAudienceOperator(task_id="do_not_contact", audience="do_not_contact")
    contactable = ExclusionOperator(
        task_id="contactable",
        primary=french.output,
        exclude=do_not_contact.output,
    )
    segments = SegmentationOperator(
        task_id="segments",
        population=contactable.output,
        segments=[
            {"code": "gold", "where": "loyalty_points >= 8000"},
            {"code": "test_cell", "percent": 10, "random": True},
        ],
        complement_code="regular",
    )

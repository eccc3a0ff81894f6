"""SegmentationOperator: split a population into segments, then use one of them."""

import datetime as dt

from airflow.sdk import DAG, task

from airflow_campaign.operators.targeting import QueryOperator, SegmentationOperator

with DAG(
    dag_id="docs_segmentation",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    contactable = QueryOperator(
        task_id="contactable",
        where="email LIKE '%@%' AND NOT email_denylisted",
        columns=["email", "country", "loyalty_points"],
    )

    segments = SegmentationOperator(
        task_id="segments",
        population=contactable.output,
        segments=[
            # segments are filled in order; a row goes to the first one that takes it
            {"code": "gold", "where": "loyalty_points >= 8000"},
            {"code": "france_sample", "where": "country = 'FR'", "limit": 50, "random": True},
            {"code": "control", "percent": 10, "random": True},
        ],
        complement_code="regular",  # everyone else
        seed="spring-sale",  # the same draw on every run
    )

    @task
    def summary(gold: dict, control: dict, regular: dict) -> dict:
        """Each segment is its own population, pushed to XCom under its code."""
        return {"gold": gold["count"], "control": control["count"], "regular": regular["count"]}

    summary(segments.output["gold"], segments.output["control"], segments.output["regular"])

"""ReadAudienceOperator: a saved audience as a population."""

import datetime as dt

from airflow.sdk import DAG, task

from airflow_campaign.operators.targeting import ReadAudienceOperator

with DAG(
    dag_id="docs_read_audience",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    vip = ReadAudienceOperator(
        task_id="vip",
        audience="vip",
        columns=["email", "first_name", "loyalty_points"],
    )

    @task
    def report(population: dict) -> int:
        """The XCom value is a small dict describing the staging table."""
        print(f"{population['count']} VIP profiles in {population['table']}: {population['columns']}")
        return population["count"]

    report(vip.output)

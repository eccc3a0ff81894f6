"""SaveAudienceOperator: a list audience shared as a CSV of keys, a file audience, a snapshot per run."""

import datetime as dt
import os
import tempfile

from airflow.sdk import DAG, task

from airflow_campaign.operators.save_audience import SaveAudienceOperator
from airflow_campaign.operators.targeting import QueryOperator

# where the files go: a local folder here, an s3://bucket/prefix in production
OUT = os.path.join(tempfile.gettempdir(), "campaign-docs")

with DAG(
    dag_id="docs_save_audience",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    loyal = QueryOperator(
        task_id="loyal",
        where="loyalty_points >= 9000 AND email LIKE '%@%' AND NOT email_denylisted",
        columns=["email", "first_name"],
    )

    # a list audience (members in campaign.audience_members), its keys shared as a CSV file
    saved = SaveAudienceOperator(
        task_id="save_loyal",
        population=loyal.output,
        audience="docs_loyal_customers",
        export_to=OUT + "/shared/docs_loyal_customers.csv",
    )

    # the same population as a file audience: one file per day, with the population's columns
    as_file = SaveAudienceOperator(
        task_id="save_loyal_file",
        population=loyal.output,
        audience="docs_loyal_customers_file",
        path=OUT + "/audiences/docs_loyal_customers_{{ ds_nodash }}.csv",
    )

    # a new audience per run, named docs_loyal_snapshot_<YYYYMMDD>T<HHMMSS>
    snapshot = SaveAudienceOperator(
        task_id="snapshot",
        population=loyal.output,
        audience="docs_loyal_snapshot",
        mode="create_unique",
    )

    @task
    def report(results: list[dict]) -> dict:
        """Each save returns a small dict: audience, type, size, added, removed (uri, export)."""
        for result in results:
            print(
                f"{result['audience']} ({result['type']}): {result['size']} members, "
                f"+{result['added']} -{result['removed']}"
            )
        return {result["audience"]: result["size"] for result in results}

    report([saved.output, as_file.output, snapshot.output])

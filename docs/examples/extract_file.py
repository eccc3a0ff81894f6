"""ExtractFileOperator: French newsletter readers as a partner's CSV, and as Parquet for analysis."""

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.targeting import QueryOperator

EXTRACT_DIR = os.environ.get("CAMPAIGN_EXTRACT_DIR", "/tmp/campaign-extracts")

with DAG(
    dag_id="docs_extract_file",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    readers = QueryOperator(
        task_id="readers",
        where="country = 'FR' AND email IS NOT NULL AND NOT email_denylisted",
        columns=["email", "first_name", "last_name", "birth_date", "loyalty_points"],
    )

    # A partner's file: their column names and date format, sorted, semicolon-separated, gzipped.
    partner_file = ExtractFileOperator(
        task_id="partner_file",
        population=readers.output,
        path=os.path.join(EXTRACT_DIR, "newsletter_fr_{{ ds_nodash }}.csv.gz"),
        columns=[
            "email",
            {"name": "name", "expr": "initcap(first_name || ' ' || last_name)"},
            {"name": "born", "expr": "birth_date", "format": "DD/MM/YYYY"},
            {"name": "tier", "expr": "CASE WHEN loyalty_points >= 8000 THEN 'gold' ELSE 'standard' END"},
        ],
        sort=["email", "id"],
        delimiter=";",
        timestamp_in_name=False,
    )

    # The same rows with their types, for analysis; the run's date and time go into the name.
    analysis_file = ExtractFileOperator(
        task_id="analysis_file",
        population=readers.output,
        path=os.path.join(EXTRACT_DIR, "newsletter_fr.parquet"),
        format="parquet",
    )

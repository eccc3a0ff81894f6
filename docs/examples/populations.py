"""Populations from TaskFlow: a list of dicts, a DataFrame, and rows keyed by email."""

import datetime as dt

import pandas as pd
from airflow.sdk import DAG, task

from airflow_campaign.operators.targeting import ExclusionOperator, QueryOperator
from airflow_campaign.population import Population

with DAG(
    dag_id="docs_populations",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    french = QueryOperator(task_id="french", where="country = 'FR'", columns=["email"])

    @task
    def staff_ids() -> list[dict]:
        """A list of dicts: profiles keyed by id."""
        return [{"id": 1}, {"id": 2}]

    @task
    def partner_ids() -> pd.DataFrame:
        """A DataFrame: profiles keyed by id too."""
        return pd.DataFrame({"id": [3, 4, 5]})

    @task
    def bounced_addresses() -> dict:
        """Rows of no resource, keyed by email: name the key with Population.inline."""
        rows = [{"email": "jack.fernandez14@mail.example.org"}, {"email": "nobody@example.com"}]
        return Population.inline(rows, key="email", resource=None).to_dict()

    without_staff = ExclusionOperator(
        task_id="without_staff",
        primary=french.output,
        exclude=[staff_ids(), partner_ids()],
    )

    # Populations of different resources are compared by columns, here the address.
    audience = ExclusionOperator(
        task_id="audience",
        primary=without_staff.output,
        exclude=[bounced_addresses()],
        on=["email"],
    )

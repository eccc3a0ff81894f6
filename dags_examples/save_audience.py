"""Save an audience every day, and run another DAG whenever it is updated.

``save_audience_producer`` selects loyal customers with a usable email and saves them as the
list audience ``loyal_customers``. Each save emits an Airflow Asset event on
``campaign://audience/loyal_customers`` whose extra carries the audience's size and how many
members were added and removed.

``save_audience_consumer`` is scheduled on that asset: Airflow runs it after each save. It
reads the audience back as a population and logs what the triggering event said.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Asset, task

from airflow_campaign.operators.save_audience import SaveAudienceOperator, audience_uri
from airflow_campaign.operators.targeting import QueryOperator, ReadAudienceOperator

AUDIENCE = "loyal_customers"
LOYAL_CUSTOMERS = Asset(audience_uri(AUDIENCE))  # Asset("campaign://audience/loyal_customers")

with DAG(
    dag_id="save_audience_producer",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "example"],
    doc_md=__doc__,
) as producer:
    loyal = QueryOperator(
        task_id="loyal",
        where="loyalty_points >= 9000 AND email LIKE '%@%' AND NOT email_denylisted",
    )
    SaveAudienceOperator(task_id="save_loyal_customers", population=loyal.output, audience=AUDIENCE)


with DAG(
    dag_id="save_audience_consumer",
    schedule=[LOYAL_CUSTOMERS],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "example"],
    doc_md=__doc__,
) as consumer:

    @task
    def announce(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """The extra of each save that triggered this run (none for a manual run)."""
        events = list(triggering_asset_events[LOYAL_CUSTOMERS]) if triggering_asset_events else []
        for event in events:
            print(
                f"{event.extra['audience']}: {event.extra['size']} members (+{event.extra['added']}, "
                f"-{event.extra['removed']}) saved by {event.source_dag_id}.{event.source_task_id}"
            )
        return [dict(event.extra) for event in events]

    members = ReadAudienceOperator(task_id="loyal_customers", audience=AUDIENCE, columns=["email"])
    announce() >> members

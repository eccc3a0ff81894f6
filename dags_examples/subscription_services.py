"""Keep subscriptions in line with consent: a daily run of two subscription tasks.

* Profiles that refused email (``email_denylisted``) leave every email service: one row per
  profile and email service, built in SQL, unsubscribed with origin ``email denylist``.
* The day's choices from a preference centre (here a ``@task`` returning rows: a service, a
  yes/no, a date and a channel per row) are applied as they come; when a customer changed
  their mind the same day, the later choice wins.

The profiles that just joined a service (XCom ``changed``) are where a confirmation message
would go; ``confirmations`` lists how many per service.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task
from psycopg import sql

from airflow_campaign.hooks.campaign import CampaignHook
from airflow_campaign.operators.subscription_services import SubscriptionServicesOperator
from airflow_campaign.operators.targeting import QueryOperator

with DAG(
    dag_id="subscription_services",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "example"],
    doc_md=__doc__,
) as dag:
    refused_email = QueryOperator(
        task_id="refused_email",
        sql="SELECT p.id, v.name AS service FROM campaign.profiles p"
        " CROSS JOIN campaign.services v WHERE p.email_denylisted AND v.channel = 'email'",
    )
    leave_email_services = SubscriptionServicesOperator(
        task_id="leave_email_services",
        population=refused_email.output,
        service_column="service",
        operation="unsubscribe",
        origin="email denylist",
    )

    @task
    def preference_centre_export() -> list[dict[str, object]]:
        """The day's choices; a real DAG would read them from the preference centre's API or a file."""
        return [
            {"id": 10, "service": "sms_alerts", "choice": 1, "at": "2026-01-01T09:12:00Z", "channel": "web"},
            {
                "id": 11,
                "service": "newsletter",
                "choice": 0,
                "at": "2026-01-01T10:40:00Z",
                "channel": "email",
            },
            {"id": 12, "service": "newsletter", "choice": 1, "at": "2026-01-01T11:05:00Z", "channel": "app"},
            {"id": 12, "service": "newsletter", "choice": 0, "at": "2026-01-01T08:00:00Z", "channel": "app"},
            {"id": 13, "service": "app_news", "choice": 1, "at": "2026-01-01T12:30:00Z", "channel": "app"},
        ]

    apply_preferences = SubscriptionServicesOperator(
        task_id="apply_preferences",
        population=preference_centre_export(),
        service_column="service",
        operation_column="choice",
        date_column="at",
        origin_column="channel",
        duplicates="latest",
    )

    @task
    def confirmations(changed: dict) -> dict[str, int]:
        """New subscribers per service: the audience of each service's confirmation message."""
        query = sql.SQL(
            "SELECT service, count(*) FROM {} WHERE operation = 'subscribe' GROUP BY service ORDER BY service"
        ).format(sql.Identifier(*changed["table"].split(".")))
        with CampaignHook().transaction() as conn:
            return {service: int(n) for service, n in conn.execute(query).fetchall()}

    leave_email_services >> apply_preferences
    confirmations(apply_preferences.output["changed"])

"""SubscriptionServicesOperator: loyal customers join the offers, and a preference centre's choices."""

import datetime as dt

from airflow.sdk import DAG, task

from airflow_campaign.operators.subscription_services import SubscriptionServicesOperator
from airflow_campaign.operators.targeting import QueryOperator

with DAG(
    dag_id="docs_subscription_services",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    # One service and one operation for every row.
    loyal = QueryOperator(
        task_id="loyal",
        where="country = 'FR' AND loyalty_points >= 9000 AND email LIKE '%@%' AND NOT email_denylisted",
    )
    join_promotions = SubscriptionServicesOperator(
        task_id="join_promotions",
        population=loyal.output,
        service="promotions",
        operation="subscribe",
        origin="loyalty programme",
    )

    @task
    def welcome(changed: dict) -> int:
        """The profiles that just joined: the audience of a confirmation message."""
        print(f"{changed['count']} new subscriber(s) in {changed['table']}")
        return changed["count"]

    welcome(join_promotions.output["changed"])

    # A service, an operation, a date and an origin per row.
    @task
    def preference_choices() -> list[dict]:
        """What a preference centre recorded: one row per choice a customer made."""
        return [
            {"id": 1, "service": "newsletter", "opt_in": True, "at": "2025-12-30T10:00:00Z", "via": "web"},
            {"id": 6, "service": "sms_alerts", "opt_in": False, "at": "2025-12-30T11:00:00Z", "via": "app"},
            {"id": 2, "service": "newsletter", "opt_in": True, "at": "2025-12-29T18:00:00Z", "via": "web"},
            {"id": 2, "service": "newsletter", "opt_in": False, "at": "2025-12-31T08:15:00Z", "via": "app"},
            {"id": 4, "service": "promotions", "opt_in": True, "at": "2025-12-31T09:00:00Z", "via": "web"},
        ]

    apply_choices = SubscriptionServicesOperator(
        task_id="apply_choices",
        population=preference_choices(),
        service_column="service",
        operation_column="opt_in",
        date_column="at",
        origin_column="via",
    )

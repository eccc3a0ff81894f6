"""UnionOperator, IntersectionOperator and ExclusionOperator on populations of profiles."""

import datetime as dt

from airflow.sdk import DAG, task

from airflow_campaign.operators.targeting import (
    ExclusionOperator,
    IntersectionOperator,
    QueryOperator,
    ReadAudienceOperator,
    UnionOperator,
)

SUBSCRIBERS = """
    SELECT s.profile_id AS id
    FROM campaign.subscriptions s
    JOIN campaign.services v ON v.id = s.service_id
    WHERE v.name = '{service}'
"""

with DAG(
    dag_id="docs_set_operations",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    newsletter = QueryOperator(task_id="newsletter", sql=SUBSCRIBERS.format(service="newsletter"))
    promotions = QueryOperator(task_id="promotions", sql=SUBSCRIBERS.format(service="promotions"))
    french = QueryOperator(task_id="french", where="country = 'FR'", columns=["email"])
    do_not_contact = ReadAudienceOperator(task_id="do_not_contact", audience="do_not_contact")

    # Subscribed to either email service.
    email_subscribers = UnionOperator(
        task_id="email_subscribers",
        populations=[newsletter.output, promotions.output],
    )

    # French profiles among them (the rows and columns of the first input: id, email).
    french_subscribers = IntersectionOperator(
        task_id="french_subscribers",
        populations=[french.output, email_subscribers.output],
    )

    @task
    def test_accounts() -> list[dict]:
        """Inline rows: a small population carried in XCom itself."""
        return [{"id": 1}, {"id": 2}, {"id": 3}]

    # Minus the do-not-contact audience and the test accounts.
    audience = ExclusionOperator(
        task_id="audience",
        primary=french_subscribers.output,
        exclude=[do_not_contact.output, test_accounts()],
    )

"""PushDeliveryOperator: a notification to every device of the shop app of French customers."""

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_campaign.operators.push import PushDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator

OUTBOX = os.path.join(os.environ.get("CAMPAIGN_OUTBOX_DIR", "/tmp/campaign-outbox"), "docs_points_push")

with DAG(
    dag_id="docs_push_delivery",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    french = QueryOperator(
        task_id="french",
        where="country = 'FR' AND loyalty_points >= 1000",
        columns=["first_name", "loyalty_points"],
    )

    points = PushDeliveryOperator(
        task_id="points",
        population=french.output,
        delivery="docs_points_push",
        app="shop",  # each enabled install of the app is one device, one message
        title="{{ first_name }}, your points",
        body="{{ loyalty_points }} points are waiting in your account",
        data={"screen": "points"},  # custom keys for the app
        deeplink="shop://account/points",
        badge=1,
        sound="default",
        ttl="12h",  # the push services stop trying after 12 hours
        channel="outbox",  # one .json file per device; "sns" publishes to SNS platform endpoints
        channel_options={"folder": OUTBOX},
    )

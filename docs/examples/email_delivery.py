"""EmailDeliveryOperator: a newsletter to French subscribers, with fatigue and a control group."""

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_campaign.delivery.typology import ControlGroup, email_typology
from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator

OUTBOX = os.path.join(os.environ.get("CAMPAIGN_OUTBOX_DIR", "/tmp/campaign-outbox"), "docs_newsletter")

with DAG(
    dag_id="docs_email_delivery",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    french = QueryOperator(
        task_id="french",
        where="country = 'FR'",
        columns=["first_name", "loyalty_points"],
    )

    newsletter = EmailDeliveryOperator(
        task_id="newsletter",
        population=french.output,
        delivery="docs_newsletter_fr",
        service="newsletter",  # only the newsletter's subscribers
        typology=email_typology(
            fatigue=(3, 7),  # at most 3 emails per address in 7 days
            control_group=ControlGroup(percent=5),  # 5% held out, logged as "control group"
        ),
        subject="{{ first_name }}, our spring selection",
        html=(
            "<p>Bonjour {{ first_name }},</p>"
            "<p>You have {{ loyalty_points }} points to spend.</p>"
            '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
        ),
        from_addr="news@shop.example.com",
        from_name="Example Shop",
        unsubscribe_url="https://shop.example.com/unsubscribe",
        channel="outbox",
        channel_options={"folder": OUTBOX},
    )

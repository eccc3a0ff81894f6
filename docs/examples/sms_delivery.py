"""SmsDeliveryOperator: a flash-sale SMS to the French subscribers of the SMS alerts."""

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_campaign.operators.sms import SmsDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator

OUTBOX = os.path.join(os.environ.get("CAMPAIGN_OUTBOX_DIR", "/tmp/campaign-outbox"), "docs_flash_sale")

with DAG(
    dag_id="docs_sms_delivery",
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

    flash_sale = SmsDeliveryOperator(
        task_id="flash_sale",
        population=french.output,
        delivery="docs_flash_sale_fr",
        service="sms_alerts",  # only the subscribers of the SMS alerts
        text="{{ first_name }}, -20% today only with your {{ loyalty_points }} points: shop.example.com/sale",
        stop_footer="STOP 36111",  # how to opt out: required for promotional messages
        sender_id="EXSHOP",
        max_parts=2,  # longer messages are excluded, never cut
        transliterate=True,  # ç, ’ and the like spelled in GSM-7: 160 characters a part
        channel="outbox",  # one .json file per message; "sns" sends through Amazon SNS
        channel_options={"folder": OUTBOX},
    )

"""local_send_time: a daily SMS at 09:00 in each customer's own time zone, from an hourly DAG."""

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_campaign.operators.sms import SmsDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator

OUTBOX = os.path.join(os.environ.get("CAMPAIGN_OUTBOX_DIR", "/tmp/campaign-outbox"), "docs_morning")

with DAG(
    dag_id="docs_local_send_time",
    schedule="@hourly",  # each run takes the time zones whose 09:00 fell in its hour
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "docs"],
) as dag:
    loyal = QueryOperator(
        task_id="loyal",
        where="loyalty_points >= 9000",
        columns=["first_name", "loyalty_points"],
    )

    morning = SmsDeliveryOperator(
        task_id="morning",
        population=loyal.output,
        delivery="docs_morning_points",
        text="Good morning {{ first_name }}: {{ loyalty_points }} points to spend today",
        stop_footer="STOP 36111",
        local_send_time="09:00",  # in each profile's time_zone; once per local day
        local_send_window="1h",  # the DAG's interval
        default_time_zone="Europe/Paris",  # for profiles without a valid time zone
        transliterate=True,
        channel="outbox",
        channel_options={"folder": OUTBOX},
    )

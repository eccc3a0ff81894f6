"""A daily birthday email: every morning, the profiles whose birthday falls in the run's day.

Scheduled with a data-interval timetable, so each run covers one day and its run key is that
day's interval: a retry, a re-run or a backfill of a day never emails anyone twice, and a
backfill only simulates unless told to send (see docs/recurrence.md).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, CronDataIntervalTimetable

from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator

OUTBOX = os.path.join(os.environ.get("CAMPAIGN_DEMO_DIR", ".campaign"), "outbox", "birthday")

with DAG(
    dag_id="birthday_email",
    schedule=CronDataIntervalTimetable("0 6 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["campaign", "example"],
    doc_md=__doc__,
) as dag:
    birthdays = QueryOperator(
        task_id="birthdays",
        where="to_char(birth_date, 'MM-DD') = '{{ data_interval_start.strftime('%m-%d') }}'",
        columns=["first_name"],
    )
    birthday_email = EmailDeliveryOperator(
        task_id="birthday_email",
        population=birthdays.output,
        delivery="birthday",
        aggregation_period="year",  # reports per year; with once_per_period, one email per person a year
        once_per_period=True,
        # backfills only simulate, unless run with --dag-run-conf '{"on_backfill": "send"}'
        on_backfill="{{ dag_run.conf.get('on_backfill', 'simulate') if dag_run.conf else 'simulate' }}",
        stale_after="2d",  # a run two days late is not sent either
        subject="Happy birthday, {{ first_name }}!",
        html=(
            "<p>Happy birthday, {{ first_name }}!</p><p>Your gift: 20% off today.</p>"
            '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
        ),
        from_addr="hello@shop.example.com",
        from_name="Example Shop",
        unsubscribe_url="https://shop.example.com/unsubscribe",
        channel="outbox",
        channel_options={"folder": OUTBOX},
    )

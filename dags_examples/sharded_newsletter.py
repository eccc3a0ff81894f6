"""One newsletter sent by four workers: prepared once, then sent by four mapped shards.

The prepare task fills the ledger (one row per recipient, exclusions with their reasons);
each of the four send tasks claims the next pending pages, so no recipient is emailed twice
and none is left out, even when a shard dies (see docs/recurrence.md#sending-in-shards). The
rate limit holds for the four together. Under ``dag.test()`` the shards run one after the
other; under a scheduler with LocalExecutor, Celery or Kubernetes workers, side by side.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator

OUTBOX = os.path.join(os.environ.get("CAMPAIGN_DEMO_DIR", ".campaign"), "outbox", "sharded_newsletter")
SHARDS = int(os.environ.get("CAMPAIGN_SHARDS", "4"))

EMAIL = {
    "delivery": "sharded_newsletter",  # the prepare task and every shard share the delivery
    "subject": "{{ first_name }}, this week's selection",
    "html": (
        "<p>Hello {{ first_name }},</p><p>You have {{ loyalty_points }} points to spend.</p>"
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    ),
    "from_addr": "news@shop.example.com",
    "from_name": "Example Shop",
    "unsubscribe_url": "https://shop.example.com/unsubscribe",
    "service": "newsletter",
    "channel": "outbox",
    "channel_options": {"folder": OUTBOX},
}

with DAG(
    dag_id="sharded_newsletter",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["campaign", "example"],
    doc_md=__doc__,
) as dag:
    readers = QueryOperator(
        task_id="readers", where="country IN ('FR', 'BE')", columns=["first_name", "loyalty_points"]
    )
    prepare = EmailDeliveryOperator(task_id="prepare", population=readers.output, mode="prepare", **EMAIL)
    send = EmailDeliveryOperator.partial(
        task_id="send",
        population=readers.output,
        mode="send",
        rate_limit=2000,  # messages per second, for the four shards together
        page_size=500,
        **EMAIL,
    ).expand(shard=list(range(SHARDS)))
    prepare >> send

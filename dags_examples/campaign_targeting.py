"""Demo campaign: target French newsletter readers, clean the list, enrich and split it into
segments; then use it: save it as an audience, extract the gold segment to a file, raise the
points of store sign-ups and subscribe them to the promotions service; finally email, text and
notify the gold segment (through the outbox: one .eml file per email, one .json file per SMS and
per device) and report who got it and why not.

Runs on the seeded demo data (``airflow-campaign seed``): `make demo` runs it with ``dag.test()``,
`make ui` in its own Airflow (scheduler, LocalExecutor). The email's links (unsubscribe, "View in
your browser") go to the public pages of `make ui` (``$CAMPAIGN_DEMO_PUBLIC_URL``, which `make ui`
sets to its own port).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_campaign.operators.deliveries import EmailDeliveryOperator
from airflow_campaign.operators.extract_file import ExtractFileOperator
from airflow_campaign.operators.push import PushDeliveryOperator
from airflow_campaign.operators.save_audience import SaveAudienceOperator
from airflow_campaign.operators.sms import SmsDeliveryOperator
from airflow_campaign.operators.subscription_services import SubscriptionServicesOperator
from airflow_campaign.operators.targeting import (
    DeduplicationOperator,
    EnrichmentOperator,
    ExclusionOperator,
    IntersectionOperator,
    LoadFileOperator,
    QueryOperator,
    ReadAudienceOperator,
    SegmentationOperator,
)
from airflow_campaign.operators.update_data import UpdateDataOperator

DEMO_DIR = os.environ.get("CAMPAIGN_DEMO_DIR", ".campaign")
SIGNUPS = os.path.join(DEMO_DIR, "in", "store_signups.csv")
EXTRACTS = os.path.join(DEMO_DIR, "out")
OUTBOX = os.path.join(DEMO_DIR, "outbox")
SMS_OUTBOX = os.path.join(DEMO_DIR, "outbox_sms")
PUSH_OUTBOX = os.path.join(DEMO_DIR, "outbox_push")
# the Campaigns plugin's public pages (one-click unsubscribe, the mirror page) under `make ui`
PUBLIC_URL = os.environ.get("CAMPAIGN_DEMO_PUBLIC_URL", "http://127.0.0.1:8080/campaign/public").rstrip("/")

with DAG(
    dag_id="campaign_targeting",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    params={"signups_path": SIGNUPS, "extract_dir": EXTRACTS},
    tags=["campaign", "example"],
    doc_md=__doc__,
) as dag:
    french_profiles = QueryOperator(
        task_id="french_profiles",
        where="country = 'FR' AND email IS NOT NULL AND NOT email_denylisted",
        columns=["email", "first_name", "loyalty_points"],
    )
    newsletter_readers = QueryOperator(
        task_id="newsletter_readers",
        sql=(
            "SELECT s.profile_id AS id FROM campaign.subscriptions s "
            "JOIN campaign.services v ON v.id = s.service_id WHERE v.name = 'newsletter'"
        ),
    )
    french_readers = IntersectionOperator(
        task_id="french_readers", populations=[french_profiles.output, newsletter_readers.output]
    )
    do_not_contact = ReadAudienceOperator(task_id="do_not_contact", audience="do_not_contact")
    contactable = ExclusionOperator(
        task_id="contactable", primary=french_readers.output, exclude=[do_not_contact.output]
    )
    one_per_address = DeduplicationOperator(
        task_id="one_per_address", population=contactable.output, on=["email"], prefer="loyalty_points DESC"
    )
    enriched = EnrichmentOperator(
        task_id="enriched",
        population=one_per_address.output,
        columns={"locale": "r.locale", "time_zone": "r.time_zone"},
        joins=[
            {
                "table": "campaign.subscriptions",
                "alias": "s",
                "on": "s.profile_id = p.id",
                "kind": "many",
                "columns": {"services": "count(*)"},
            }
        ],
    )
    segments = SegmentationOperator(
        task_id="segments",
        population=enriched.output,
        segments=[
            {"code": "gold", "where": "loyalty_points >= 8000"},
            {"code": "test_cell", "percent": 10, "random": True},
        ],
        complement_code="regular",
        seed="demo",
    )
    store_signups = LoadFileOperator(
        task_id="store_signups",
        path="{{ params.signups_path }}",
        reconcile_on="email",
        types={"points": "integer"},
    )
    new_readers = ExclusionOperator(
        task_id="new_readers", primary=store_signups.output, exclude=[newsletter_readers.output]
    )

    # ---- using the population --------------------------------------------------------------
    readers_audience = SaveAudienceOperator(
        task_id="readers_audience", population=contactable.output, audience="demo_french_readers"
    )
    gold_file = ExtractFileOperator(
        task_id="gold_file",
        population=segments.output["gold"],
        # run_after, not ds_nodash: a run triggered with no logical date has none
        path="{{ params.extract_dir }}/gold_customers_{{ dag_run.run_after | ds_nodash }}.csv",
        columns=["id", "email", "locale", "loyalty_points"],
        sort=["id"],
        timestamp_in_name=False,
    )
    # store balances only ever raise loyalty_points (after the segments, which read them)
    raise_points = UpdateDataOperator(
        task_id="raise_points",
        population=store_signups.output,
        operation="update",
        fields={"loyalty_points": {"value": "points", "when": "src.points > dest.loyalty_points"}},
    )
    segments >> raise_points
    promotions = SubscriptionServicesOperator(
        task_id="promotions",
        population=store_signups.output,
        service="promotions",
        operation="subscribe",
        origin="store sign-up",
    )
    gold_email = EmailDeliveryOperator(
        task_id="gold_email",
        population=segments.output["gold"],
        delivery="demo_gold_thanks",
        service="newsletter",
        subject="{{ first_name }}, thank you for being a gold member",
        html=(
            '<p><a href="{{ mirror_url }}">View in your browser</a></p>'
            "<p>Dear {{ first_name }},</p>"
            "<p>You have {{ loyalty_points }} points: here is 10% off your next visit.</p>"
            '<p><a href="{{ unsubscribe_url }}">Unsubscribe from the newsletter</a></p>'
        ),
        from_addr="news@shop.example.com",
        from_name="Example Shop",
        unsubscribe_url=f"{PUBLIC_URL}/unsubscribe",
        mirror_url=f"{PUBLIC_URL}/mirror",
        channel="outbox",
        channel_options={"folder": OUTBOX},
    )
    gold_sms = SmsDeliveryOperator(
        task_id="gold_sms",
        population=segments.output["gold"],
        delivery="demo_gold_sms",
        text="{{ first_name }}, gold member: 10% off your next visit with your {{ loyalty_points }} points",
        stop_footer="STOP 36111",
        transliterate=True,
        channel="outbox",
        channel_options={"folder": SMS_OUTBOX},
    )
    gold_push = PushDeliveryOperator(
        task_id="gold_push",
        population=segments.output["gold"],
        delivery="demo_gold_push",
        app="shop",
        title="{{ first_name }}, thank you",
        body="{{ loyalty_points }} points: 10% off your next visit",
        deeplink="shop://offers/gold",
        channel="outbox",
        channel_options={"folder": PUSH_OUTBOX},
    )

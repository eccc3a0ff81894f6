"""local_send_time: on an hourly DAG, each run takes the recipients whose local 09:00 has come,
once per local day, whatever their time zone (the SMS delivery here; the rule is the engine's)."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.sms import SmsDeliveryOperator
from airflow_campaign.operators.targeting import QueryOperator

UTC = dt.timezone.utc
DAY = dt.datetime(2026, 4, 2, tzinfo=UTC)  # summer time in Paris (UTC+2) and New York (UTC-4)
ZONES = {
    970001: "Europe/Paris",
    970002: "America/New_York",
    970003: "Asia/Tokyo",
    970004: "Mars/Olympus_Mons",  # not a zone: the default (UTC)
    970005: None,
}


def hourly(context, hour: float, task_id: str = "sms") -> dict:
    """The context of the hourly run whose interval ends at ``hour`` UTC on DAY."""
    end = DAY + dt.timedelta(hours=hour)
    ctx = context(task_id, run_id=f"scheduled__{end.isoformat()}")
    ctx.update(
        dag_run=SimpleNamespace(run_type="scheduled", run_id=ctx["run_id"]),
        data_interval_start=end - dt.timedelta(hours=1),
        data_interval_end=end,
        logical_date=end - dt.timedelta(hours=1),
    )
    return ctx


@pytest.fixture
def people(scratch, context):
    for i, (pid, zone) in enumerate(ZONES.items()):
        scratch.db.execute(
            "INSERT INTO campaign.profiles (id, phone, country, time_zone, first_name) VALUES (%s, %s, 'FR', %s, %s)",
            (pid, f"+3361234567{i}", zone, f"P{i}"),
        )
    return QueryOperator(
        task_id="people", campaign_conn_id=scratch.conn_id, where="id > 970000", columns=["first_name"]
    ).execute(context("people"))


def test_each_hourly_run_takes_the_zones_whose_nine_oclock_has_come(scratch, people, context, tmp_path):
    def run(hour: float) -> dict[str, str]:
        ctx = hourly(context, hour)
        SmsDeliveryOperator(
            task_id="sms",
            delivery="morning",
            population=people,
            text="Good morning {{ first_name }}",
            stop_footer="STOP 36111",
            channel="outbox",
            channel_options={"folder": str(tmp_path)},
            campaign_conn_id=scratch.conn_id,
            local_send_time="09:00",
            default_time_zone="UTC",
        ).execute(ctx)
        return dict(
            scratch.db.execute(
                "SELECT l.recipient_key, coalesce(l.exclusion_reason, l.status) FROM campaign.delivery_logs l"
                " JOIN campaign.delivery_occurrences o ON o.id = l.occurrence_id WHERE o.run_id = %s",
                (ctx["run_id"],),
            ).fetchall()
        )

    outside = "outside local send time"
    # 00:00Z is 09:00 in Tokyo
    assert run(0) == {
        "970001": outside,
        "970002": outside,
        "970003": "sent",
        "970004": outside,
        "970005": outside,
    }
    # 07:00Z is 09:00 in Paris
    assert run(7) == {
        "970001": "sent",
        "970002": outside,
        "970003": outside,
        "970004": outside,
        "970005": outside,
    }
    # 07:30Z: Paris is still in its window, but was sent today
    assert run(7.5)["970001"] == "already sent today (local)"
    # 09:00Z: 09:00 UTC, the zone of the unknown and the missing time zones
    assert run(9) == {
        "970001": outside,
        "970002": outside,
        "970003": outside,
        "970004": "sent",
        "970005": "sent",
    }
    # 13:00Z is 09:00 in New York
    assert run(13)["970002"] == "sent"
    # each person once, on the local day
    sent = [json.loads(p.read_text())["to"] for p in tmp_path.glob("*.json")]
    assert sorted(sent) == [f"+3361234567{i}" for i in range(5)]
    # the next day, Paris again at its 09:00
    assert run(24 + 7)["970001"] == "sent"


def test_bad_local_send_options(scratch, people, context, tmp_path):
    common = {
        "task_id": "sms",
        "population": people,
        "text": "x",
        "stop_footer": "STOP",
        "channel": "outbox",
        "campaign_conn_id": scratch.conn_id,
    }
    with pytest.raises(CampaignError, match=r"local_send_time='9h': give a local time as 'HH:MM'"):
        SmsDeliveryOperator(**common, local_send_time="9h")
    with pytest.raises(CampaignError, match=r"default_time_zone='Paris': not an IANA time zone"):
        SmsDeliveryOperator(**common, local_send_time="09:00", default_time_zone="Paris")
    with pytest.raises(
        CampaignError, match=r"local_send_window='2d': give a duration from 1 minute to 1 day"
    ):
        SmsDeliveryOperator(**common, local_send_time="09:00", local_send_window="2d")
    with pytest.raises(
        CampaignError, match=r"time_zone_column='tz': the resource 'profiles' has no such column"
    ):
        SmsDeliveryOperator(**common, local_send_time="09:00", time_zone_column="tz").execute(
            hourly(context, 7)
        )
    assert scratch.db.execute("SELECT count(*) FROM campaign.delivery_logs").fetchone() == (0,)

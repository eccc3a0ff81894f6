"""Check of docs/examples/local_send_time.py: each hourly run sends to the zones whose 09:00 has come."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import zoneinfo
from pathlib import Path

import phonenumbers
import psycopg

from tests.docs_support import DOCS, Run, load_dag


def check_local_send_time(db: psycopg.Connection) -> None:
    folder = Path(tempfile.mkdtemp(prefix="docs-outbox-"))
    saved = os.environ.get("CAMPAIGN_OUTBOX_DIR")
    os.environ["CAMPAIGN_OUTBOX_DIR"] = str(folder)
    try:
        dag = load_dag(DOCS / "examples" / "local_send_time.py")
        # the run of 07:00 UTC on 2 April 2026 (09:00 in Paris, CEST): with Airflow 3's cron
        # schedules, a run's data interval starts and ends at its trigger time
        logical = dt.datetime(2026, 4, 2, 7, tzinfo=dt.timezone.utc)
        run = Run(dag.test(logical_date=logical))
        assert str(run.dag_run.state).endswith("success"), run.task_states()
        report = run.xcom("morning", "report")
        end = run.dag_run.data_interval_end or logical
        # who is at 09:xx locally at 07:00 UTC, computed here with zoneinfo and phonenumbers
        expected = set()
        quarantined = {
            a for (a,) in db.execute("SELECT address FROM campaign.quarantine WHERE channel = 'sms'")
        }
        for phone, country, zone in db.execute(
            "SELECT phone, country, time_zone FROM campaign.profiles WHERE loyalty_points >= 9000"
            " AND NOT sms_denylisted AND phone IS NOT NULL"
        ):
            try:
                local = end.astimezone(zoneinfo.ZoneInfo(zone or "Europe/Paris"))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                local = end.astimezone(zoneinfo.ZoneInfo("Europe/Paris"))
            if local.hour != 9:
                continue
            try:
                number = phonenumbers.parse(phone, country)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                expected.add(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
        expected -= quarantined
        files = sorted((folder / "docs_morning").glob("*.json"))
        got = {json.loads(f.read_text(encoding="utf-8"))["to"] for f in files}
        assert report["by_status"]["sent"] == len(files), (report, len(files))
        assert got == expected, (sorted(got - expected)[:5], sorted(expected - got)[:5], end)
        assert report["excluded"]["outside local send time"] > 0
    finally:
        if saved is None:
            os.environ.pop("CAMPAIGN_OUTBOX_DIR", None)
        else:
            os.environ["CAMPAIGN_OUTBOX_DIR"] = saved
        shutil.rmtree(folder, ignore_errors=True)
        db.execute("DELETE FROM campaign.deliveries WHERE name = 'docs_morning_points'")

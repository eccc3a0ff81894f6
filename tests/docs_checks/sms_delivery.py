"""Check of docs/examples/sms_delivery.py."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import phonenumbers
import psycopg

from tests.docs_support import run_example


def check_sms_delivery(db: psycopg.Connection) -> None:
    folder = Path(tempfile.mkdtemp(prefix="docs-outbox-"))
    saved = os.environ.get("CAMPAIGN_OUTBOX_DIR")
    os.environ["CAMPAIGN_OUTBOX_DIR"] = str(folder)
    try:
        run = run_example("sms_delivery")
        report = run.xcom("flash_sale", "report")
        # who should get it, computed here with phonenumbers from the profiles themselves
        rows = db.execute(
            "SELECT p.phone, p.country FROM campaign.profiles p JOIN campaign.subscriptions s ON s.profile_id = p.id"
            " JOIN campaign.services v ON v.id = s.service_id AND v.name = 'sms_alerts'"
            " WHERE p.country = 'FR' AND NOT p.sms_denylisted AND p.phone IS NOT NULL"
        ).fetchall()
        quarantined = {
            a for (a,) in db.execute("SELECT address FROM campaign.quarantine WHERE channel = 'sms'")
        }
        numbers = set()
        for phone, country in rows:
            try:
                number = phonenumbers.parse(phone, country)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                numbers.add(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
        numbers -= quarantined
        files = sorted((folder / "docs_flash_sale").glob("*.json"))
        assert report["by_status"]["sent"] == len(files) == len(numbers) > 0
        payloads = [json.loads(f.read_text(encoding="utf-8")) for f in files]
        assert {p["to"] for p in payloads} == numbers
        assert all(p["text"].endswith("\nSTOP 36111") and p["encoding"] == "GSM-7" for p in payloads)
        assert all(p["sender_id"] == "EXSHOP" and p["parts"] <= 2 for p in payloads)
    finally:
        if saved is None:
            os.environ.pop("CAMPAIGN_OUTBOX_DIR", None)
        else:
            os.environ["CAMPAIGN_OUTBOX_DIR"] = saved
        shutil.rmtree(folder, ignore_errors=True)
        db.execute("DELETE FROM campaign.deliveries WHERE name = 'docs_flash_sale_fr'")

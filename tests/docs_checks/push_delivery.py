"""Check of docs/examples/push_delivery.py."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import psycopg

from tests.docs_support import run_example


def check_push_delivery(db: psycopg.Connection) -> None:
    folder = Path(tempfile.mkdtemp(prefix="docs-outbox-"))
    saved = os.environ.get("CAMPAIGN_OUTBOX_DIR")
    os.environ["CAMPAIGN_OUTBOX_DIR"] = str(folder)
    try:
        run = run_example("push_delivery")
        report = run.xcom("points", "report")
        # the devices, computed here from the installs and the profiles
        expected = {
            f"{platform}:{token}": (name, points)
            for platform, token, name, points in db.execute(
                "SELECT a.platform, a.device_token, p.first_name, p.loyalty_points FROM campaign.app_subscriptions a"
                " JOIN campaign.profiles p ON p.id = a.profile_id WHERE a.app = 'shop' AND a.enabled"
                " AND p.country = 'FR' AND p.loyalty_points >= 1000 AND NOT p.push_denylisted"
                " AND lower(a.platform || ':' || a.device_token) NOT IN"
                " (SELECT address FROM campaign.quarantine WHERE channel = 'push')"
            )
        }
        files = sorted((folder / "docs_points_push").glob("*.json"))
        assert report["by_status"]["sent"] == len(files) == len(expected) > 0
        for f in files:
            message = json.loads(f.read_text(encoding="utf-8"))
            name, points = expected[message["to"]]
            payload = message["payload"]
            if message["platform"] == "ios":
                assert payload["aps"]["alert"]["title"] == f"{name}, your points"
                assert payload["screen"] == "points" and payload["deeplink"] == "shop://account/points"
            else:
                fcm = payload["fcmV1Message"]["message"]
                assert fcm["notification"]["body"] == f"{points} points are waiting in your account"
                assert fcm["android"]["ttl"] == "43200s"
    finally:
        if saved is None:
            os.environ.pop("CAMPAIGN_OUTBOX_DIR", None)
        else:
            os.environ["CAMPAIGN_OUTBOX_DIR"] = saved
        shutil.rmtree(folder, ignore_errors=True)
        db.execute("DELETE FROM campaign.deliveries WHERE name = 'docs_points_push'")

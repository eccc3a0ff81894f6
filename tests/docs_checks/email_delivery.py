"""Check of docs/examples/email_delivery.py."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import tempfile
from pathlib import Path

import psycopg

from airflow_campaign.delivery.typology import EMAIL_SYNTAX
from tests.conftest import count
from tests.docs_support import run_example

# the standard typology without fatigue (nothing was sent to them before) or the control group
ELIGIBLE = (
    "SELECT count(DISTINCT lower(p.email)) FROM campaign.profiles p JOIN campaign.subscriptions s ON s.profile_id = p.id"
    " JOIN campaign.services v ON v.id = s.service_id AND v.name = 'newsletter'"
    " WHERE p.country = 'FR' AND p.email ~ %s AND NOT p.email_denylisted"
    " AND lower(p.email) NOT IN (SELECT address FROM campaign.quarantine WHERE channel = 'email')"
)


def check_email_delivery(db: psycopg.Connection) -> None:
    folder = Path(tempfile.mkdtemp(prefix="docs-outbox-"))
    saved = {k: os.environ.get(k) for k in ("CAMPAIGN_OUTBOX_DIR", "AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY")}
    os.environ["CAMPAIGN_OUTBOX_DIR"] = str(folder)
    os.environ["AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY"] = "docs-only-unsubscribe-signing-key"
    try:
        run = run_example("email_delivery")
        report = run.xcom("newsletter", "report")
        eligible = count(db, ELIGIBLE, EMAIL_SYNTAX)
        control = report["excluded"].get("control group", 0)
        assert control == -(-eligible * 5 // 100)  # ceil(5%)
        sent = report["by_status"]["sent"]
        assert sent == eligible - control > 0
        files = sorted((folder / "docs_newsletter").glob("*.eml"))
        assert len(files) == sent
        msg = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        assert msg["Subject"].endswith(", our spring selection")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)
        # forget the run so that a later run of the checks starts from the same ledger
        db.execute("DELETE FROM campaign.deliveries WHERE name = 'docs_newsletter_fr'")

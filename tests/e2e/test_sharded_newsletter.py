"""End to end under dag.test(): the sharded newsletter example, prepared once and sent by four shards."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

from airflow_campaign import demo
from airflow_campaign.delivery.typology import EMAIL_SYNTAX
from airflow_campaign.embedded import connection_fields
from tests.conftest import count

DAG_FILE = Path(__file__).parents[2] / "dags_examples" / "sharded_newsletter.py"


def test_the_sharded_newsletter_sends_each_subscriber_once(scratch, airflow_db, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DEFAULT", json.dumps(connection_fields(scratch.url)))
    monkeypatch.setenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", "test-only-unsubscribe-signing-key")
    monkeypatch.setenv("CAMPAIGN_DEMO_DIR", str(tmp_path))
    run = demo.load_dag(DAG_FILE, "sharded_newsletter").test()
    assert str(run.state).endswith("success")
    files = list((tmp_path / "outbox" / "sharded_newsletter").glob("*.eml"))
    tos = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["To"].lower() for p in files]
    # who should get it, computed here: FR/BE newsletter subscribers with a usable, unique address
    expected = count(
        scratch.db,
        "SELECT count(DISTINCT lower(p.email)) FROM campaign.profiles p JOIN campaign.subscriptions s"
        " ON s.profile_id = p.id JOIN campaign.services v ON v.id = s.service_id AND v.name = 'newsletter'"
        " WHERE p.country IN ('FR', 'BE') AND p.email ~ %s AND NOT p.email_denylisted AND lower(p.email) NOT IN"
        " (SELECT address FROM campaign.quarantine WHERE channel = 'email')",
        EMAIL_SYNTAX,
    )
    assert len(tos) == len(set(tos)) == expected > 0
    claims = scratch.db.execute(
        "SELECT shard, state, (counts->>'sent')::int FROM campaign.delivery_claims ORDER BY shard"
    ).fetchall()
    assert [c[0] for c in claims] == [0, 1, 2, 3] and {c[1] for c in claims} == {"finished"}
    assert sum(c[2] or 0 for c in claims) == expected
    status = scratch.db.execute(
        "SELECT status, counts->'by_status'->>'sent' FROM campaign.delivery_occurrences"
    ).fetchone()
    assert status == ("sent", str(expected))

"""End to end: the subscription_services example DAG with dag.test(), on a private copy of the seeded database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_campaign import demo
from airflow_campaign.embedded import connection_fields
from tests.conftest import count

DAG_FILE = Path(__file__).parents[2] / "dags_examples" / "subscription_services.py"
SUBSCRIBED = (
    "SELECT s.profile_id FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
    " WHERE v.name = %s"
)


@pytest.fixture
def campaign_default_is_scratch(scratch, monkeypatch):
    """The DAG uses campaign_default: point it at the scratch copy so the shared database stays as seeded."""
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGN_DEFAULT", json.dumps(connection_fields(scratch.url)))
    return scratch


def test_consent_is_applied_and_rerunning_writes_nothing_twice(campaign_default_is_scratch, airflow_db):
    db = campaign_default_is_scratch.db

    def subscribed(service):
        return {r[0] for r in db.execute(SUBSCRIBED, (service,))}

    before = {s: subscribed(s) for s in ("newsletter", "promotions", "sms_alerts", "app_news")}
    denylisted = {r[0] for r in db.execute("SELECT id FROM campaign.profiles WHERE email_denylisted")}
    leaving = {(s, i) for s in ("newsletter", "promotions") for i in before[s] & denylisted}
    assert leaving and {10, 11, 12} - denylisted == {10, 11, 12}
    assert 10 not in before["sms_alerts"] and 11 in before["newsletter"] and 12 not in before["newsletter"]

    dag = demo.load_dag(DAG_FILE, "subscription_services")
    dag_run = dag.test()
    assert str(dag_run.state).endswith("success")

    after = {s: subscribed(s) for s in before}
    assert not (after["newsletter"] | after["promotions"]) & denylisted
    assert after["sms_alerts"] == before["sms_alerts"] | {10}
    assert after["newsletter"] == (before["newsletter"] - denylisted - {11}) | {12}
    assert after["app_news"] == before["app_news"] | {13}
    events = db.execute(
        "SELECT e.task_id, v.name, e.profile_id, e.operation, e.origin FROM campaign.subscription_events e"
        " JOIN campaign.services v ON v.id = e.service_id WHERE e.dag_id = 'subscription_services'"
        " AND e.run_id = %s ORDER BY 1, 2, 3",
        (dag_run.run_id,),
    ).fetchall()
    assert [e for e in events if e[0] == "leave_email_services"] == [
        ("leave_email_services", s, i, "unsubscribe", "email denylist") for s, i in sorted(leaving)
    ]
    expected = [
        ("apply_preferences", "newsletter", 11, "unsubscribe", "email"),
        ("apply_preferences", "newsletter", 12, "subscribe", "app"),
        ("apply_preferences", "sms_alerts", 10, "subscribe", "web"),
    ]
    if 13 not in before["app_news"]:
        expected.insert(0, ("apply_preferences", "app_news", 13, "subscribe", "app"))
    assert [e for e in events if e[0] == "apply_preferences"] == expected

    # a second run of the DAG finds everything as asked: no change, no event
    total = count(db, "SELECT count(*) FROM campaign.subscription_events")
    second = dag.test()
    assert str(second.state).endswith("success")
    assert count(db, "SELECT count(*) FROM campaign.subscription_events") == total
    assert {s: subscribed(s) for s in before} == after

"""Check of docs/examples/subscription_services.py; it restores the subscriptions it changed."""

from __future__ import annotations

import datetime as dt

import psycopg

from tests.docs_support import SUBSCRIBERS, population, rows, run_example

DAG_ID = "docs_subscription_services"
SERVICES = ("newsletter", "promotions", "sms_alerts")
LOYAL = "country = 'FR' AND loyalty_points >= 9000 AND email LIKE '%@%' AND NOT email_denylisted"
COLUMNS = "service_id, profile_id, subscribed_at, origin, created_at, updated_at"


def _subscribed(db: psycopg.Connection, service: str) -> set[int]:
    return {r[0] for r in db.execute(SUBSCRIBERS, (service,))}


def _events(db: psycopg.Connection, run_id: str, task_id: str) -> list[tuple]:
    return db.execute(
        "SELECT e.profile_id, v.name, e.operation, e.event_at, e.origin FROM campaign.subscription_events e"
        " JOIN campaign.services v ON v.id = e.service_id WHERE e.dag_id = %s AND e.run_id = %s"
        " AND e.task_id = %s ORDER BY e.profile_id, v.name",
        (DAG_ID, run_id, task_id),
    ).fetchall()


def check_subscription_services(db: psycopg.Connection) -> None:
    saved = db.execute(
        f"SELECT {COLUMNS} FROM campaign.subscriptions WHERE service_id IN"
        " (SELECT id FROM campaign.services WHERE name = ANY(%s))",
        (list(SERVICES),),
    ).fetchall()
    before = {s: _subscribed(db, s) for s in SERVICES}
    try:
        _check(db, before)
    finally:
        # the other examples count these services: put them back as the seed made them
        with db.transaction():
            db.execute(
                "DELETE FROM campaign.subscriptions WHERE service_id IN"
                " (SELECT id FROM campaign.services WHERE name = ANY(%s))",
                (list(SERVICES),),
            )
            with db.cursor().copy(f"COPY campaign.subscriptions ({COLUMNS}) FROM STDIN") as copy:
                for row in saved:
                    copy.write_row(row)
            db.execute("DELETE FROM campaign.subscription_events WHERE dag_id = %s", (DAG_ID,))


def _check(db: psycopg.Connection, before: dict[str, set[int]]) -> None:
    # the example's choices only make sense on the seeded subscriptions of these profiles
    assert 1 not in before["newsletter"] and 2 in before["newsletter"]
    assert 6 in before["sms_alerts"] and 4 in before["promotions"]
    loyal = {r[0] for r in db.execute(f"SELECT id FROM campaign.profiles WHERE {LOYAL}")}
    joined = sorted(loyal - before["promotions"])
    assert joined and loyal & before["promotions"]

    run = run_example("subscription_services")

    assert run.xcom("join_promotions") == {
        "rows": len(loyal),
        "subscribed": len(joined),
        "unsubscribed": 0,
        "unchanged": len(loyal) - len(joined),
        "rejected": 0,
        "duplicates": 0,
    }
    assert _subscribed(db, "promotions") - before["promotions"] == set(joined)
    events = _events(db, run.run_id, "join_promotions")
    assert [(e[0], e[1], e[2], e[4]) for e in events] == [
        (i, "promotions", "subscribe", "loyalty programme") for i in joined
    ]
    changed = population(db, run, "join_promotions", "changed")
    assert rows(db, changed, "id, service, operation") == [(i, "promotions", "subscribe") for i in joined]
    assert run.xcom("welcome") == len(joined)

    assert run.xcom("apply_choices") == {
        "rows": 5,
        "subscribed": 1,
        "unsubscribed": 2,
        "unchanged": 1,
        "rejected": 0,
        "duplicates": 1,
    }
    utc = dt.timezone.utc
    assert _events(db, run.run_id, "apply_choices") == [
        (1, "newsletter", "subscribe", dt.datetime(2025, 12, 30, 10, tzinfo=utc), "web"),
        (2, "newsletter", "unsubscribe", dt.datetime(2025, 12, 31, 8, 15, tzinfo=utc), "app"),
        (6, "sms_alerts", "unsubscribe", dt.datetime(2025, 12, 30, 11, tzinfo=utc), "app"),
    ]
    assert 1 in _subscribed(db, "newsletter") and 2 not in _subscribed(db, "newsletter")
    assert 6 not in _subscribed(db, "sms_alerts")

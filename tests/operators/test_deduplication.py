"""DeduplicationOperator: keep N rows per duplicate group, preferring some."""

from __future__ import annotations

import pytest

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.targeting import DeduplicationOperator, QueryOperator
from tests.conftest import count, ids, rows, staged


@pytest.fixture
def with_email(context):
    return QueryOperator(task_id="base", columns=["email", "loyalty_points"]).execute(context("base"))


def test_one_row_per_email_preferring_the_most_points(db, context, with_email):
    out = DeduplicationOperator(
        task_id="dedup", population=with_email, on=["email"], prefer="loyalty_points DESC"
    ).execute(context("dedup"))
    expected = [
        r[0]
        for r in db.execute(
            "SELECT id FROM (SELECT DISTINCT ON (email) id FROM campaign.profiles WHERE email IS NOT NULL"
            " ORDER BY email, loyalty_points DESC, id) d"
            " UNION ALL SELECT id FROM campaign.profiles WHERE email IS NULL ORDER BY 1"
        )
    ]
    duplicated = count(
        db,
        "SELECT count(*) FROM campaign.profiles p WHERE EXISTS"
        " (SELECT 1 FROM campaign.profiles o WHERE o.email = p.email AND o.id <> p.id)",
    )
    assert duplicated > 20
    assert ids(db, out) == expected
    assert out["columns"] == with_email["columns"]
    assert count(db, f"SELECT count(*) FROM {out['table']} WHERE email IS NULL") == count(
        db, "SELECT count(*) FROM campaign.profiles WHERE email IS NULL"
    )


def test_without_prefer_the_lowest_key_wins(db, context, with_email):
    out = DeduplicationOperator(task_id="dedup_key", population=with_email, on=["email"]).execute(
        context("dedup_key")
    )
    kept = count(
        db,
        "SELECT count(*) FROM campaign.profiles p WHERE email IS NOT NULL AND EXISTS"
        " (SELECT 1 FROM campaign.profiles o WHERE o.email = p.email AND o.id < p.id)",
    )
    assert kept > 0
    assert (
        count(
            db,
            f"SELECT count(*) FROM {out['table']} p WHERE EXISTS"
            " (SELECT 1 FROM campaign.profiles o WHERE o.email = p.email AND o.id < p.id)",
        )
        == 0
    )
    assert out["count"] == 3000 - kept


def test_keep_two_per_group(db, context, with_email):
    out = DeduplicationOperator(
        task_id="dedup_two", population=with_email, on=["email"], keep=2, prefer="loyalty_points"
    ).execute(context("dedup_two"))
    per_email = db.execute(
        f"SELECT max(n) FROM (SELECT count(*) AS n FROM {out['table']} WHERE email IS NOT NULL GROUP BY email) c"
    ).fetchone()[0]
    assert per_email == 2
    expected = count(
        db,
        "SELECT count(*) FROM (SELECT row_number() OVER (PARTITION BY email ORDER BY loyalty_points, id) AS rn,"
        " email FROM campaign.profiles) d WHERE rn <= 2 OR email IS NULL",
    )
    assert out["count"] == expected


def test_default_on_is_the_key_of_inline_rows(db, context):
    data = [{"id": 1, "v": "a"}, {"id": 1, "v": "b"}, {"id": 2, "v": "c"}, {"id": 1, "v": "d"}]
    out = DeduplicationOperator(task_id="dedup_inline", population=data, prefer="v DESC").execute(
        context("dedup_inline")
    )
    assert [(r["id"], r["v"]) for r in rows(db, out)] == [(1, "d"), (2, "c")]


def test_bad_options_name_the_option_and_leave_nothing(db, context, with_email):
    ctx = context("dedup_bad")
    with pytest.raises(
        CampaignError, match=r"on: unknown column\(s\) \['phone'\]; available: \['id', 'email'"
    ):
        DeduplicationOperator(task_id="dedup_bad", population=with_email, on=["phone"]).execute(ctx)
    with pytest.raises(
        CampaignError, match=r"prefer='points DESC': the database rejected the SQL \(UndefinedColumn"
    ):
        DeduplicationOperator(task_id="dedup_bad", population=with_email, prefer="points DESC").execute(ctx)
    assert staged(db, ctx) == []
    with pytest.raises(CampaignError, match=r"keep=0: give a whole number >= 1"):
        DeduplicationOperator(task_id="dedup_bad", population=with_email, keep=0)

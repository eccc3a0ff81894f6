"""The scratch fixture: a private, seeded copy of the test database per test."""

from __future__ import annotations

from airflow_campaign.operators.targeting import QueryOperator
from tests.conftest import SEED_PROFILES, count


def test_scratch_is_a_private_seeded_copy(scratch, db, context):
    assert count(scratch.db, "SELECT count(*) FROM campaign.profiles") == SEED_PROFILES
    scratch.db.execute("DELETE FROM campaign.profiles WHERE id <= 10")
    out = QueryOperator(task_id="q", campaign_conn_id=scratch.conn_id, where="id <= 20").execute(context("q"))
    assert out["count"] == 10
    assert count(db, "SELECT count(*) FROM campaign.profiles WHERE id <= 20") == 20  # shared one untouched

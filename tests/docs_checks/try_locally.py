"""Check of docs/examples/try_locally.py (its `python try_locally.py` block: tests/test_dev.py)."""

from __future__ import annotations

import psycopg

from tests.conftest import count
from tests.docs_support import FR_CONTACTABLE, population, run_example


def check_try_locally(db: psycopg.Connection) -> None:
    run = run_example("try_locally")
    customers = population(db, run, "customers")
    assert (
        customers["count"] == count(db, f"SELECT count(*) FROM campaign.profiles WHERE {FR_CONTACTABLE}") > 0
    )
    assert customers["columns"] == ["id", "email", "loyalty_points"]
    gold = population(db, run, "tiers", "gold")
    assert gold["count"] == count(
        db, f"SELECT count(*) FROM campaign.profiles WHERE {FR_CONTACTABLE} AND loyalty_points >= 8000"
    )
    standard = population(db, run, "tiers", "standard")
    assert run.xcom("sizes") == {"gold": gold["count"], "standard": customers["count"] - gold["count"]}
    assert standard["count"] == customers["count"] - gold["count"]

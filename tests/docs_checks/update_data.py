"""Check of docs/examples/update_data.py."""

from __future__ import annotations

import psycopg

from tests.conftest import count
from tests.docs_support import population, run_example

STORE = {1: 12000, 2: 0, 3: 450}


def check_update_data(db: psycopg.Connection) -> None:
    before = dict(
        db.execute("SELECT id, loyalty_points FROM campaign.profiles WHERE id IN (1, 2, 3)").fetchall()
    )
    run = run_example("update_data")
    after = dict(
        db.execute("SELECT id, loyalty_points FROM campaign.profiles WHERE id IN (1, 2, 3)").fetchall()
    )
    assert after == {pid: max(before[pid], STORE[pid]) for pid in STORE}
    raised = sum(STORE[pid] > before[pid] for pid in STORE)
    points = run.xcom("points")
    assert (points["updated"], points["unchanged"], points["rejected"]) == (raised, 3 - raised, 1)
    rejects = population(db, run, "points", "rejects")
    assert rejects["count"] == 1

    tiers = run.xcom("tiers")
    french = count(db, "SELECT count(*) FROM campaign.profiles WHERE country = 'FR'")
    assert count(db, "SELECT count(*) FROM public.loyalty_tiers") == french
    assert tiers["inserted"] + tiers["updated"] + tiers["unchanged"] == french
    assert count(db, "SELECT count(*) FROM public.loyalty_tiers WHERE tier = 'gold'") == count(
        db, "SELECT count(*) FROM campaign.profiles WHERE country = 'FR' AND loyalty_points >= 8000"
    )
    db.execute("DROP TABLE public.loyalty_tiers")
    # leave the shared seeded data as it was for the other tests
    for pid, points in before.items():
        db.execute("UPDATE campaign.profiles SET loyalty_points = %s WHERE id = %s", (points, pid))

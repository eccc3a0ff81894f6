"""IncrementalQueryOperator: excluding earlier results, or a stored date watermark, and its CLI."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from airflow_campaign import cli
from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.targeting import IncrementalQueryOperator
from tests.conftest import count, ids, staged

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def events(seeded):
    """inctest.events: ten rows changed an hour apart from T0 (ids 1..10)."""
    with psycopg.connect(seeded, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS inctest CASCADE")
        conn.execute("CREATE SCHEMA inctest")
        conn.execute("CREATE TABLE inctest.events (id int PRIMARY KEY, changed_at timestamptz NOT NULL)")
        conn.execute(
            "INSERT INTO inctest.events SELECT g, %s + make_interval(hours => g) FROM generate_series(1, 10) g",
            (T0,),
        )
    yield "inctest.events"
    with psycopg.connect(seeded, autocommit=True) as conn:
        conn.execute("DROP SCHEMA inctest CASCADE")


def add_events(db, first, last):
    db.execute(
        "INSERT INTO inctest.events SELECT g, %s + make_interval(hours => g) FROM generate_series(%s::int, %s::int) g",
        (T0, first, last),
    )


def watermark_op(task_id="since", **kwargs):
    return IncrementalQueryOperator(
        task_id=task_id, resource="inctest.events", mode="watermark", date_column="changed_at", **kwargs
    )


def state(db, dag_id, task_id):
    return db.execute(
        "SELECT watermark, previous_watermark, last_run_id FROM campaign.incremental_state"
        " WHERE dag_id = %s AND task_id = %s",
        (dag_id, task_id),
    ).fetchone()


def test_exclude_mode_returns_only_rows_not_returned_before(db, context):
    first = IncrementalQueryOperator(task_id="inc", where="id <= 100").execute(context("inc", run_id="r1"))
    second = IncrementalQueryOperator(task_id="inc", where="id <= 150").execute(context("inc", run_id="r2"))
    assert ids(db, first) == list(range(1, 101))
    assert ids(db, second) == list(range(101, 151))
    assert count(db, "SELECT count(*) FROM campaign.incremental_history WHERE task_id = 'inc'") == 150
    third = IncrementalQueryOperator(task_id="inc", where="id <= 150").execute(context("inc", run_id="r3"))
    assert third["count"] == 0


def test_exclude_mode_retry_returns_the_same_rows_as_the_first_try(db, context):
    IncrementalQueryOperator(task_id="inc_retry", where="id <= 20").execute(context("inc_retry", run_id="r1"))
    try1 = IncrementalQueryOperator(task_id="inc_retry", where="id <= 30").execute(
        context("inc_retry", run_id="r2")
    )
    try2 = IncrementalQueryOperator(task_id="inc_retry", where="id <= 30").execute(
        context("inc_retry", run_id="r2")
    )
    assert try1["table"] == try2["table"]
    assert ids(db, try2) == list(range(21, 31))
    assert count(db, "SELECT count(*) FROM campaign.incremental_history WHERE task_id = 'inc_retry'") == 30


def test_exclude_mode_is_per_task(db, context):
    IncrementalQueryOperator(task_id="inc_a", where="id <= 10").execute(context("inc_a", run_id="r1"))
    other = IncrementalQueryOperator(task_id="inc_b", where="id <= 10").execute(context("inc_b", run_id="r1"))
    assert other["count"] == 10


def test_watermark_mode_returns_rows_newer_than_the_watermark(db, context, events):
    first = watermark_op().execute(context("since", run_id="w1"))
    assert ids(db, first) == list(range(1, 11))
    assert "changed_at" in first["columns"]
    assert state(db, "test_dag", "since") == (T0 + dt.timedelta(hours=10), None, "w1")
    add_events(db, 11, 13)
    second = watermark_op().execute(context("since", run_id="w2"))
    assert ids(db, second) == [11, 12, 13]
    assert state(db, "test_dag", "since")[:2] == (T0 + dt.timedelta(hours=13), T0 + dt.timedelta(hours=10))
    # a retry of w2 sees the lower bound w2's first try saw, even after more rows arrived
    add_events(db, 14, 14)
    retry = watermark_op().execute(context("since", run_id="w2"))
    assert ids(db, retry) == [11, 12, 13, 14]
    assert state(db, "test_dag", "since") == (
        T0 + dt.timedelta(hours=14),
        T0 + dt.timedelta(hours=10),
        "w2",
    )
    nothing_new = watermark_op().execute(context("since", run_id="w3"))
    assert nothing_new["count"] == 0
    assert state(db, "test_dag", "since")[0] == T0 + dt.timedelta(hours=14)


def test_watermark_mode_initial_watermark_and_where(db, context, events):
    out = watermark_op(
        task_id="since_initial", initial_watermark="2026-03-01T05:00:00+00:00", where="id % 2 = 0"
    ).execute(context("since_initial", run_id="w1"))
    assert ids(db, out) == [6, 8, 10]


def test_watermark_mode_limit_takes_the_earliest_dates_and_never_skips_a_row(db, context, events):
    # two more rows share the 4th hour with row 4: a limit of 4 must not cut between them
    db.execute("ALTER TABLE inctest.events ALTER COLUMN changed_at DROP NOT NULL")
    db.execute(
        "INSERT INTO inctest.events VALUES (21, %s), (22, %s), (30, NULL)",
        (T0 + dt.timedelta(hours=4), T0 + dt.timedelta(hours=4)),
    )
    seen: list[int] = []
    for n in range(1, 5):
        out = watermark_op(task_id="since_limit", limit=4).execute(context("since_limit", run_id=f"l{n}"))
        seen += ids(db, out)
        if n == 1:
            assert ids(db, out) == [1, 2, 3, 4, 21, 22]
    # every dated row exactly once, over the runs; the row without a date never
    assert sorted(seen) == [*range(1, 11), 21, 22]
    assert len(seen) == len(set(seen))
    assert state(db, "test_dag", "since_limit")[0] == T0 + dt.timedelta(hours=10)


def test_cli_shows_sets_and_resets_the_watermark(db, context, events, seeded, capsys):
    target = ["--dag-id", "test_dag", "--task-id", "since_cli", "--url", seeded]
    watermark_op(task_id="since_cli").execute(context("since_cli", run_id="w1"))
    capsys.readouterr()
    assert cli.main(["incremental", "show", *target]) == 0
    shown = capsys.readouterr().out
    assert "watermark: 2026-03-01 10:00:00+00:00" in shown
    assert "last run:  w1" in shown

    assert cli.main(["incremental", "set", *target, "--watermark", "2026-03-01T07:30:00+00:00"]) == 0
    assert state(db, "test_dag", "since_cli") == (T0 + dt.timedelta(hours=7, minutes=30), None, None)
    after_set = watermark_op(task_id="since_cli").execute(context("since_cli", run_id="w2"))
    assert ids(db, after_set) == [8, 9, 10]

    assert cli.main(["incremental", "reset", *target]) == 0
    assert state(db, "test_dag", "since_cli") is None
    after_reset = watermark_op(task_id="since_cli").execute(context("since_cli", run_id="w3"))
    assert after_reset["count"] == 10


def test_cli_reset_forgets_excluded_rows(db, context, seeded, capsys):
    IncrementalQueryOperator(task_id="inc_cli", where="id <= 5").execute(context("inc_cli", run_id="r1"))
    target = ["--dag-id", "test_dag", "--task-id", "inc_cli", "--url", seeded]
    capsys.readouterr()
    assert cli.main(["incremental", "show", *target]) == 0
    assert "remembered rows: 5" in capsys.readouterr().out
    assert cli.main(["incremental", "reset", *target]) == 0
    again = IncrementalQueryOperator(task_id="inc_cli", where="id <= 5").execute(
        context("inc_cli", run_id="r2")
    )
    assert again["count"] == 5


def test_cli_set_refuses_a_bad_watermark(db, seeded, capsys):
    target = ["--dag-id", "test_dag", "--task-id", "since_bad", "--url", seeded]
    assert cli.main(["incremental", "set", *target, "--watermark", "last tuesday-ish"]) == 1
    assert "--watermark='last tuesday-ish' is not a timestamp" in capsys.readouterr().err
    assert cli.main(["incremental", "set", *target]) == 2
    assert "needs --watermark" in capsys.readouterr().err
    assert state(db, "test_dag", "since_bad") is None


def test_unknown_date_column_names_it_and_changes_nothing(db, context, events):
    ctx = context("since_bad_col", run_id="w1")
    with pytest.raises(CampaignError, match=r"date_column: unknown column\(s\) \['modified'\]"):
        IncrementalQueryOperator(
            task_id="since_bad_col", resource="inctest.events", mode="watermark", date_column="modified"
        ).execute(ctx)
    assert staged(db, ctx) == []
    assert state(db, "test_dag", "since_bad_col") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "watermark"}, "mode='watermark' needs date_column="),
        ({"mode": "since"}, r"mode='since' is not valid; use one of \['exclude', 'watermark'\]"),
        ({"sql": "SELECT id FROM campaign.profiles"}, "use where=, not sql="),
        (
            {"mode": "watermark", "date_column": "updated_at", "limit": 10, "order_by": "id"},
            r"order_by='id': in mode 'watermark' a limit takes the earliest rows by date_column",
        ),
    ],
)
def test_bad_options_fail_at_parse_time(kwargs, message):
    with pytest.raises(CampaignError, match=message):
        IncrementalQueryOperator(task_id="parse", **kwargs)

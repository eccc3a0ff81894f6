"""CampaignHook: staging table names and replacement, pruning, COPY in and out, streaming reads."""

from __future__ import annotations

import pytest
from psycopg import sql

from airflow_campaign.hooks.campaign import STAGING_SCHEMA, CampaignHook, qualified, staging_table_name
from tests.conftest import count

IDENTITY = {"dag_id": "hook_dag", "task_id": "hook_task", "run_id": "manual__1", "map_index": -1}


def test_staging_names_are_deterministic_short_and_distinct_per_identity():
    name = staging_table_name("My DAG", "Select.Profiles", "manual__2026-01-01T00:00:00+00:00")
    assert name == staging_table_name("My DAG", "Select.Profiles", "manual__2026-01-01T00:00:00+00:00")
    assert name.startswith("my_dag_select_profiles_")
    long = staging_table_name("d" * 300, "t" * 300, "r" * 300, 7, "s" * 300)
    assert len(long.encode()) <= 63
    variants = {
        staging_table_name("d", "t", "r"),
        staging_table_name("d", "t", "r", map_index=0),
        staging_table_name("d", "t", "r", map_index=1),
        staging_table_name("d", "t", "r2"),
        staging_table_name("d", "t", "r", suffix="rejects"),
        staging_table_name("d", "t2", "r"),
        staging_table_name("d2", "t", "r"),
    }
    assert len(variants) == 7


def test_qualified_quotes_each_part(db):
    assert qualified('odd"schema.Table').as_string(db) == '"odd""schema"."Table"'
    assert qualified("plain").as_string(db) == '"plain"'


def test_replace_table_replaces_in_place_and_records_once(db):
    name = "hook_replace_test"
    with db.transaction():
        first = CampaignHook.replace_table(
            db, name, sql.SQL("SELECT g AS id FROM generate_series(1, 5) g"), identity=IDENTITY
        )
    with db.transaction():
        second = CampaignHook.replace_table(
            db,
            name,
            sql.SQL("SELECT g AS id, 'x' AS tag FROM generate_series(10, 12) g WHERE g > %s"),
            (10,),
            identity=IDENTITY,
        )
    assert (first, second) == (5, 2)
    full = f"{STAGING_SCHEMA}.{name}"
    assert db.execute(sql.SQL("SELECT array_agg(id ORDER BY id) FROM {}").format(qualified(full))).fetchone()[
        0
    ] == [11, 12]
    recorded = db.execute(
        "SELECT dag_id, task_id, run_id, map_index, row_count FROM campaign.staging_tables WHERE table_name = %s",
        (full,),
    ).fetchall()
    assert recorded == [("hook_dag", "hook_task", "manual__1", -1, 2)]
    persistence = db.execute(
        "SELECT relpersistence FROM pg_class WHERE oid = %s::regclass", (full,)
    ).fetchone()
    assert persistence == ("u",)  # UNLOGGED
    CampaignHook.drop_staging(db, full)
    assert db.execute("SELECT to_regclass(%s)", (full,)).fetchone() == (None,)
    assert count(db, "SELECT count(*) FROM campaign.staging_tables WHERE table_name = %s", full) == 0


def test_a_failed_replacement_keeps_the_previous_table(db):
    name = "hook_rollback_test"
    with db.transaction():
        CampaignHook.replace_table(db, name, sql.SQL("SELECT 1 AS id"), identity=IDENTITY)
    with pytest.raises(Exception, match="division by zero"):
        with db.transaction():
            CampaignHook.replace_table(db, name, sql.SQL("SELECT 1 / 0 AS id"), identity=IDENTITY)
    full = f"{STAGING_SCHEMA}.{name}"
    assert count(db, sql.SQL("SELECT id FROM {}").format(qualified(full)).as_string(db)) == 1
    CampaignHook.drop_staging(db, full)


def test_prune_drops_only_what_is_older_than_the_retention(db):
    with db.transaction():
        for name in ("hook_prune_old", "hook_prune_new"):
            CampaignHook.replace_table(db, name, sql.SQL("SELECT 1 AS id"), identity=IDENTITY)
        db.execute(
            "UPDATE campaign.staging_tables SET updated_at = now() - interval '10 days' WHERE table_name = %s",
            (f"{STAGING_SCHEMA}.hook_prune_old",),
        )
    old, new = f"{STAGING_SCHEMA}.hook_prune_old", f"{STAGING_SCHEMA}.hook_prune_new"
    would = CampaignHook.prune(db, 9 * 86400, dry_run=True)
    assert old in would and new not in would
    assert db.execute("SELECT to_regclass('campaign_staging.hook_prune_old')").fetchone()[0] is not None
    dropped = CampaignHook(campaign_conn_id="campaign_default").prune_staging(9 * 86400)
    assert old in dropped and new not in dropped
    assert set(dropped) == set(would)
    assert db.execute("SELECT to_regclass('campaign_staging.hook_prune_old')").fetchone()[0] is None
    assert db.execute("SELECT to_regclass('campaign_staging.hook_prune_new')").fetchone()[0] is not None
    assert (
        count(db, "SELECT count(*) FROM campaign.staging_tables WHERE table_name LIKE '%%hook_prune_old'")
        == 0
    )
    CampaignHook.drop_staging(db, f"{STAGING_SCHEMA}.hook_prune_new")


def test_columns_of_lists_columns_in_order_and_nothing_for_a_missing_table(db):
    columns = CampaignHook.columns_of(db, "campaign.services")
    assert columns[:3] == [("id", "integer"), ("name", "text"), ("label", "text")]
    assert CampaignHook.columns_of(db, "campaign.no_such_table") == []
    assert CampaignHook.columns_of(db, "no_such_schema.t") == []


def test_copy_in_and_stream_out_round_trip(db):
    hook = CampaignHook()
    db.execute("DROP TABLE IF EXISTS public.hook_copy")
    db.execute("CREATE TABLE public.hook_copy (id int PRIMARY KEY, name text, note text)")
    try:
        with db.transaction():
            n = CampaignHook.copy_rows_in(
                db, "public.hook_copy", ["id", "name"], ([i, f"n{i}\t\\"] for i in range(1, 26))
            )
            CampaignHook.copy_text_in(
                db,
                "public.hook_copy",
                ["id", "note"],
                [b'100,"a, ""quoted"" note"\n', b"101,\n"],
                sql.SQL("FORMAT csv"),
            )
        assert n == 25
        streamed = list(
            hook.stream_rows(sql.SQL("SELECT id, name, note FROM public.hook_copy ORDER BY id"), page_size=4)
        )
        assert len(streamed) == 27
        assert streamed[0] == (1, "n1\t\\", None)
        assert streamed[-2:] == [(100, None, 'a, "quoted" note'), (101, None, None)]
        assert list(hook.stream_rows(sql.SQL("SELECT id FROM public.hook_copy WHERE id > %s"), (100,))) == [
            (101,)
        ]
    finally:
        db.execute("DROP TABLE public.hook_copy")


def test_hook_transaction_commits_or_rolls_back(db):
    db.execute("DROP TABLE IF EXISTS public.hook_tx")
    db.execute("CREATE TABLE public.hook_tx (id int)")
    hook = CampaignHook()
    try:
        with hook.transaction() as conn:
            conn.execute("INSERT INTO public.hook_tx VALUES (1)")
        with pytest.raises(RuntimeError):
            with hook.transaction() as conn:
                conn.execute("INSERT INTO public.hook_tx VALUES (2)")
                raise RuntimeError("boom")
        assert db.execute("SELECT array_agg(id) FROM public.hook_tx").fetchone()[0] == [1]
    finally:
        db.execute("DROP TABLE public.hook_tx")


def test_copy_frame_in_converts_missing_values_and_numpy_scalars(db):
    import datetime as dt

    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "points": [1.5, float("nan"), 3.0],
            "name": ["Zoë", None, "x\ty"],
            "at": pd.to_datetime(["2026-01-02T03:04:05Z", None, "2026-12-31T00:00:00Z"]),
            "ok": [True, False, True],
        }
    )
    db.execute("DROP TABLE IF EXISTS public.hook_frame")
    db.execute(
        "CREATE TABLE public.hook_frame (id bigint, points numeric, name text, at timestamptz, ok boolean)"
    )
    try:
        with db.transaction():
            assert CampaignHook.copy_frame_in(db, "public.hook_frame", frame) == 3
        got = db.execute("SELECT id, points, name, at, ok FROM public.hook_frame ORDER BY id").fetchall()
        utc = dt.timezone.utc
        assert [(r[0], None if r[1] is None else float(r[1]), r[2], r[3], r[4]) for r in got] == [
            (1, 1.5, "Zoë", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=utc), True),
            (2, None, None, None, False),
            (3, 3.0, "x\ty", dt.datetime(2026, 12, 31, tzinfo=utc), True),
        ]
    finally:
        db.execute("DROP TABLE public.hook_frame")

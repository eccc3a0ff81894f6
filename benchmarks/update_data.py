"""UpdateDataOperator against a hand-written upsert, and against fetch + PostgresHook.insert_rows."""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

from benchmarks.run import REPEAT, context, record

COLUMNS = ["id", "email", "first_name", "loyalty_points"]


def _copy_profiles(conn: psycopg.Connection, table: str, limit: int) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (LIKE campaign.profiles INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    conn.execute(f"INSERT INTO {table} SELECT * FROM campaign.profiles ORDER BY id LIMIT {limit}")
    conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
    conn.execute(f"VACUUM ANALYZE {table}")


def _source(conn: psycopg.Connection, name: str, rows: int, round_: int) -> Any:
    """A staging table of ``rows`` profiles: 10% with new points, 2% new ids, the rest as they are."""
    from airflow_campaign.population import Population

    table = f"campaign_staging.{name}"
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(
        f"CREATE UNLOGGED TABLE {table} AS SELECT id, email, first_name,"
        f" CASE WHEN id %% 10 = {round_ % 10} THEN loyalty_points + {round_ + 1} ELSE loyalty_points END"
        " AS loyalty_points FROM campaign.profiles ORDER BY id LIMIT %s",
        (rows - rows // 50,),
    )
    base = 10_000_000 * (round_ + 2)
    conn.execute(
        f"INSERT INTO {table} SELECT {base} + g, 'new' || g || '@example.org', 'New', 0"
        " FROM generate_series(1, %s) g",
        (rows // 50,),
    )
    conn.execute(f"ANALYZE {table}")
    # a table the benchmark makes itself, not a registered staging table: declared trusted, in code
    return Population.from_table(table, key="id", resource=None, count=rows, trusted=True)


def bench_upsert(url: str, results: list[dict[str, Any]], scale: int) -> None:
    from airflow_campaign.operators.update_data import UpdateDataOperator

    conn = psycopg.connect(url, autocommit=True)
    for table in ("public.bench_upd_ours", "public.bench_upd_hand"):
        _copy_profiles(conn, table, scale)
    ours_t, hand_t = [], []
    for i in range(-1, REPEAT):  # round -1 warms up
        pop = _source(conn, "bench_upd_src", scale, i + 1)
        op = UpdateDataOperator(
            task_id="upsert", population=pop, table="public.bench_upd_ours", keys=["id"], fields=None
        )
        started = time.perf_counter()
        out = op.execute(context("upsert", i + 1))
        ours = time.perf_counter() - started
        started = time.perf_counter()
        with conn.transaction():
            hand = conn.execute(
                "WITH w AS (INSERT INTO public.bench_upd_hand AS p (id, email, first_name, loyalty_points, updated_at)"
                " SELECT id, email, first_name, loyalty_points, now() FROM campaign_staging.bench_upd_src"
                " ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, first_name = EXCLUDED.first_name,"
                " loyalty_points = EXCLUDED.loyalty_points, updated_at = EXCLUDED.updated_at"
                " WHERE (p.email, p.first_name, p.loyalty_points) IS DISTINCT FROM"
                " (EXCLUDED.email, EXCLUDED.first_name, EXCLUDED.loyalty_points) RETURNING 1)"
                " SELECT count(*) FROM w"
            ).fetchone()[0]
        other = time.perf_counter() - started
        assert out["inserted"] + out["updated"] == hand, (out, hand)
        if i >= 0:
            ours_t.append(ours)
            hand_t.append(other)
    print(
        f"  upsert: {out['inserted']} inserted, {out['updated']} updated, {out['unchanged']} unchanged per round"
    )
    same = conn.execute(
        "SELECT count(*) FROM public.bench_upd_ours o FULL JOIN public.bench_upd_hand h USING (id)"
        " WHERE (o.email, o.first_name, o.loyalty_points) IS DISTINCT FROM (h.email, h.first_name, h.loyalty_points)"
    ).fetchone()[0]
    assert same == 0, f"{same} rows differ between the two targets"
    for table in ("public.bench_upd_ours", "public.bench_upd_hand", "campaign_staging.bench_upd_src"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.close()
    record(
        results,
        f"UpdateDataOperator upsert, {scale:,} rows",
        statistics.median(ours_t),
        "INSERT ON CONFLICT DO UPDATE WHERE DISTINCT",
        statistics.median(hand_t),
        1.3,
        "lower",
    )


def bench_insert_rows(url: str, results: list[dict[str, Any]], rows: int) -> None:
    """What an Airflow user writes today: fetch the rows, then PostgresHook.insert_rows(replace=True)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_campaign.operators.update_data import UpdateDataOperator

    conn = psycopg.connect(url, autocommit=True)
    for table in ("public.bench_ir_ours", "public.bench_ir_theirs"):
        _copy_profiles(conn, table, rows)
    pop = _source(conn, "bench_ir_src", rows, 0)
    hook = PostgresHook(postgres_conn_id="campaign_default")

    started = time.perf_counter()
    out = UpdateDataOperator(
        task_id="upsert_small", population=pop, table="public.bench_ir_ours", keys=["id"]
    ).execute(context("upsert_small", 0))
    ours = time.perf_counter() - started

    started = time.perf_counter()
    fetched = hook.get_records(f"SELECT {', '.join(COLUMNS)} FROM campaign_staging.bench_ir_src")
    hook.insert_rows(
        "public.bench_ir_theirs",
        fetched,
        target_fields=COLUMNS,
        commit_every=1000,
        replace=True,
        replace_index="id",
    )
    theirs = time.perf_counter() - started
    differ = conn.execute(
        "SELECT count(*) FROM public.bench_ir_ours o FULL JOIN public.bench_ir_theirs t USING (id)"
        " WHERE (o.email, o.first_name, o.loyalty_points) IS DISTINCT FROM (t.email, t.first_name, t.loyalty_points)"
    ).fetchone()[0]
    assert differ == 0, f"{differ} rows differ"
    print(
        f"  {rows:,} rows: UpdateDataOperator {rows / ours:,.0f} rows/s ({out['updated']} updated, "
        f"{out['inserted']} inserted); fetch + insert_rows {rows / theirs:,.0f} rows/s"
    )
    for table in ("public.bench_ir_ours", "public.bench_ir_theirs", "campaign_staging.bench_ir_src"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.close()
    # theirs must be at least 5x slower: ours / theirs <= 0.2
    record(
        results,
        f"UpdateDataOperator vs fetch + insert_rows, {rows:,} rows",
        ours,
        "fetch + PostgresHook.insert_rows(replace)",
        theirs,
        0.2,
        "lower",
    )

"""UpdateDataOperator against a hand-written upsert, and against fetch + PostgresHook.insert_rows.

1. ``UpdateDataOperator`` (upsert on ``id``) against a hand-written ``INSERT … ON CONFLICT DO
   UPDATE … WHERE … IS DISTINCT FROM`` of the same staging table into a copy of the same target,
   every round with new values; both must report the same number of rows written, and the two
   targets must end up equal.
2. The same operator against what an Airflow user writes today: fetch the rows
   (``PostgresHook.get_records``), then ``PostgresHook.insert_rows(replace=True)``, each side
   from a fresh copy of the same target, alternately, ``BENCH_REPEAT`` rounds (median). Two
   sources: 10% of the rows with new values and 2% new rows (``insert_rows`` writes every row,
   the operator only the changed ones: the name keeps the original figure), and every row
   changed or new (``…, all changed``: both sides write every row). After each side, the md5
   of its target's rows in id order must equal the md5 of what the source makes of the target.

Names in results.json: ``UpdateDataOperator upsert, N rows``; ``UpdateDataOperator vs fetch +
insert_rows, N rows`` (10% + 2%) and ``UpdateDataOperator vs fetch + insert_rows, N rows, all
changed``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

from benchmarks.run import REPEAT, context, load, record

COLUMNS = ["id", "email", "first_name", "loyalty_points"]


def _copy_profiles(conn: psycopg.Connection, table: str, limit: int) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (LIKE campaign.profiles INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    conn.execute(f"INSERT INTO {table} SELECT * FROM campaign.profiles ORDER BY id LIMIT {limit}")
    conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
    conn.execute(f"VACUUM ANALYZE {table}")


def _source(conn: psycopg.Connection, name: str, rows: int, round_: int, every: bool = False) -> Any:
    """A staging table of ``rows`` profiles: 10% (``every``: all) with new points, 2% new ids, the
    rest as they are."""
    from airflow_campaign.population import Population

    table = f"campaign_staging.{name}"
    changed = "true" if every else f"id %% 10 = {round_ % 10}"
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(
        f"CREATE UNLOGGED TABLE {table} AS SELECT id, email, first_name,"
        f" CASE WHEN {changed} THEN loyalty_points + {round_ + 1} ELSE loyalty_points END"
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
    start = load()
    for i in range(-1, REPEAT):  # round -1 warms up
        pop = _source(conn, "bench_upd_src", scale, i + 1)
        op = UpdateDataOperator(
            task_id="upsert", population=pop, table="public.bench_upd_ours", keys=["id"], fields=None
        )
        ours, hand, out, other = _upsert_round(conn, op, i)
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
        load_start=start,
    )


def _upsert_round(conn: psycopg.Connection, op: Any, i: int) -> tuple[float, int, dict[str, Any], float]:
    """One round of comparison 1, the operator first on even rounds, the hand-written upsert first
    on odd ones: (operator seconds, rows the upsert wrote, the operator's counts, upsert seconds)."""
    timed: dict[str, Any] = {}

    def operator() -> None:
        started = time.perf_counter()
        timed["out"] = op.execute(context("upsert", i + 1))
        timed["ours"] = time.perf_counter() - started

    def hand_written() -> None:
        started = time.perf_counter()
        with conn.transaction():
            timed["hand"] = conn.execute(
                "WITH w AS (INSERT INTO public.bench_upd_hand AS p (id, email, first_name, loyalty_points, updated_at)"
                " SELECT id, email, first_name, loyalty_points, now() FROM campaign_staging.bench_upd_src"
                " ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, first_name = EXCLUDED.first_name,"
                " loyalty_points = EXCLUDED.loyalty_points, updated_at = EXCLUDED.updated_at"
                " WHERE (p.email, p.first_name, p.loyalty_points) IS DISTINCT FROM"
                " (EXCLUDED.email, EXCLUDED.first_name, EXCLUDED.loyalty_points) RETURNING 1)"
                " SELECT count(*) FROM w"
            ).fetchone()[0]
        timed["other"] = time.perf_counter() - started

    for side in (operator, hand_written) if i % 2 == 0 else (hand_written, operator):
        side()
    return timed["ours"], timed["hand"], timed["out"], timed["other"]


ROWS_MD5 = "SELECT md5(string_agg((id, email, first_name, loyalty_points)::text, E'\\n' ORDER BY id)) FROM {}"


def _expected_md5(conn: psycopg.Connection, source: str, rows: int) -> str:
    """The md5 of a fresh target (the first ``rows`` profiles) once ``source`` is upserted into it."""
    return str(
        conn.execute(
            ROWS_MD5.format(
                f"(SELECT id, email, first_name, loyalty_points FROM {source} UNION ALL"
                " SELECT id, email, first_name, loyalty_points FROM"
                " (SELECT * FROM campaign.profiles ORDER BY id LIMIT %s) p"
                f" WHERE NOT EXISTS (SELECT 1 FROM {source} s WHERE s.id = p.id)) t"
            ),
            (rows,),
        ).fetchone()[0]
    )


def bench_insert_rows(url: str, results: list[dict[str, Any]], rows: int) -> None:
    """What an Airflow user writes today: fetch the rows, then PostgresHook.insert_rows(replace=True)."""
    for every in (False, True):
        _insert_rows_case(url, results, rows, every)


def _insert_rows_case(url: str, results: list[dict[str, Any]], rows: int, every: bool) -> None:
    import logging

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_campaign.operators.update_data import UpdateDataOperator

    logging.getLogger("airflow.task.hooks").setLevel(logging.WARNING)  # insert_rows logs every 1,000 rows
    conn = psycopg.connect(url, autocommit=True)
    hook = PostgresHook(postgres_conn_id="campaign_default")
    source = "campaign_staging.bench_ir_src"
    counts: dict[str, Any] = {}

    def ours(round_: int, pop: Any) -> None:
        counts.update(
            UpdateDataOperator(
                task_id="upsert_small", population=pop, table="public.bench_ir_ours", keys=["id"]
            ).execute(context("upsert_small", round_))
        )

    def theirs(round_: int, pop: Any) -> None:
        fetched = hook.get_records(f"SELECT {', '.join(COLUMNS)} FROM {source}")
        hook.insert_rows(
            "public.bench_ir_theirs",
            fetched,
            target_fields=COLUMNS,
            commit_every=1000,
            replace=True,
            replace_index="id",
        )

    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    start = load()
    for i in range(-1, REPEAT):  # round -1 warms up
        for table in ("public.bench_ir_ours", "public.bench_ir_theirs"):
            _copy_profiles(conn, table, rows)
        pop = _source(conn, "bench_ir_src", rows, i + 1, every)
        want = _expected_md5(conn, source, rows)
        sides = [("ours", ours, "public.bench_ir_ours"), ("theirs", theirs, "public.bench_ir_theirs")]
        for name, side, table in sides if i % 2 == 0 else sides[::-1]:
            started = time.perf_counter()
            side(i + 1, pop)
            seconds = time.perf_counter() - started
            got = conn.execute(ROWS_MD5.format(table)).fetchone()[0]
            if got != want:
                raise AssertionError(f"round {i}: {table} after {name}: md5 {got}, expected {want}")
            if i >= 0:
                times[name].append(seconds)
    end = load()
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["theirs"])
    print(
        f"  {rows:,} rows{', all changed' if every else ''}: UpdateDataOperator {rows / ours_s:,.0f} rows/s"
        f" ({counts['updated']} updated, {counts['inserted']} inserted, {counts['unchanged']} unchanged);"
        f" fetch + insert_rows {rows / theirs_s:,.0f} rows/s (writes every row); same table md5 every round"
    )
    for table in ("public.bench_ir_ours", "public.bench_ir_theirs", source):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.close()
    # theirs must be at least 5x slower when 12% of the rows change (it writes all of them, we write
    # the 12%) and 2x slower when every row changes: then both sides write every row, and what is
    # left to win is the fetch into Python and the statement per row (INSERT ... ON CONFLICT is the
    # write on both sides; a MERGE was a quarter faster here but a third slower at 1M rows into a
    # table with dead rows, so it is not used)
    record(
        results,
        f"UpdateDataOperator vs fetch + insert_rows, {rows:,} rows" + (", all changed" if every else ""),
        ours_s,
        "fetch + PostgresHook.insert_rows(replace)",
        theirs_s,
        0.5 if every else 0.2,
        "lower",
        load_start=start,
        load_end=end,
    )

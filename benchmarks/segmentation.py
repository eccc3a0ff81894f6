"""SegmentationOperator against the hand-written SQL that makes the same segments.

The input is a population of every contactable profile (a staging table). The segments use
every kind of rule: the 1,000 customers with the most points (``order_by`` + ``limit``), the
gold customers (``where``), a random sample of 50 French customers (``where`` + ``limit`` +
``random``), a random 10 % control group (``percent`` + ``random``), and the complement.

The hand-written side is what one would write for those rules on a table whose key is unique:
each drawn segment's keys in a temporary table (top-N by the rule's order, the random order
being the operator's documented hash of seed, code and key), then one ``CREATE UNLOGGED TABLE AS
SELECT`` per segment that keeps the rows of no earlier segment (``NOT EXISTS`` / ``NOT (where)``),
all in one transaction, replacing the tables of the previous run. Both sides write the same five
tables with the same rows (checked: count and md5 of the sorted keys of each) before the ratio
is recorded.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from benchmarks.run import context, interleaved, load, record

SEED = "bench"
SEGMENTS: list[dict[str, Any]] = [
    {"code": "top", "order_by": "loyalty_points DESC", "limit": 1000},
    {"code": "gold", "where": "loyalty_points >= 8000"},
    {"code": "france_sample", "where": "country = 'FR'", "limit": 50, "random": True},
    {"code": "control", "percent": 10, "random": True},
]
COMPLEMENT = "regular"
COLUMNS = ["id", "email", "country", "loyalty_points"]


def _random(code: str) -> str:
    """The operator's random order for a segment: a hash of seed, code and key."""
    return f"hashtextextended('{SEED}/{code}/' || id::text, 0), id"


def _hand_written(table: str) -> list[str]:
    """The statements that segment ``table`` (one transaction; outputs public.bench_seg_<code>)."""
    cols = ", ".join(COLUMNS)

    def out(code: str, where: str) -> list[str]:
        return [
            f"DROP TABLE IF EXISTS public.bench_seg_{code}",
            f"CREATE UNLOGGED TABLE public.bench_seg_{code} AS SELECT {cols}, '{code}'::text AS segment_code"
            f" FROM {table} p WHERE {where}",
        ]

    def absent(ids: str) -> str:
        return f"NOT EXISTS (SELECT 1 FROM {ids} t WHERE t.id = p.id)"

    not_top = absent("seg_top")
    not_gold = "NOT (loyalty_points >= 8000)"
    not_fr = absent("seg_fr")
    control_pool = f"{not_top} AND {not_gold} AND {not_fr}"
    return [
        "CREATE TEMP TABLE seg_top ON COMMIT DROP AS"
        f" SELECT id FROM {table} ORDER BY loyalty_points DESC, id LIMIT 1000",
        "CREATE TEMP TABLE seg_fr ON COMMIT DROP AS"
        f" SELECT id FROM {table} p WHERE {not_top} AND {not_gold} AND country = 'FR'"
        f" ORDER BY {_random('france_sample')} LIMIT 50",
        "CREATE TEMP TABLE seg_control ON COMMIT DROP AS"
        f" SELECT id FROM {table} p WHERE {control_pool} ORDER BY {_random('control')}"
        f" LIMIT (SELECT ceil(count(*) * 10 / 100.0) FROM {table} p WHERE {control_pool})",
        *out("top", "id IN (SELECT id FROM seg_top)"),
        *out("gold", f"loyalty_points >= 8000 AND {not_top}"),
        *out("france_sample", "id IN (SELECT id FROM seg_fr)"),
        *out("control", "id IN (SELECT id FROM seg_control)"),
        *out(COMPLEMENT, f"{control_pool} AND {absent('seg_control')}"),
    ]


def _fingerprint(conn: psycopg.Connection, table: str) -> tuple[int, str]:
    """Row count and md5 of the sorted keys of ``schema.table``."""
    row = conn.execute(
        sql.SQL("SELECT count(*), md5(coalesce(string_agg(id::text, ',' ORDER BY id), '')) FROM {}").format(
            sql.Identifier(*table.split(".", 1))
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def bench_segmentation(url: str, results: list[dict[str, Any]], scale: int) -> None:
    from airflow_campaign.operators.targeting import QueryOperator, SegmentationOperator

    base = QueryOperator(
        task_id="segmentation_input", where="NOT email_denylisted", columns=COLUMNS[1:]
    ).execute(context("segmentation_input", 0))
    op = SegmentationOperator(
        task_id="segmentation", population=base, segments=SEGMENTS, complement_code=COMPLEMENT, seed=SEED
    )
    ours_out: dict[str, Any] = {}

    def ours(i: int) -> None:
        ours_out.update(op.execute(context("segmentation", 0)))

    conn = psycopg.connect(url, autocommit=True)
    table = sql.Identifier(*base["table"].split(".", 1)).as_string(conn)
    statements = _hand_written(table)

    def hand_written(i: int) -> None:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]  # fixed text, no values

    started_load = load()
    ours_s, other_s = interleaved(ours, hand_written)
    codes = [s["code"] for s in SEGMENTS] + [COMPLEMENT]
    counts = {}
    for code in codes:
        mine = _fingerprint(conn, ours_out[code]["table"])
        theirs = _fingerprint(conn, f"public.bench_seg_{code}")
        assert mine == theirs, f"segment {code}: operator {mine} != hand-written {theirs}"
        assert ours_out[code]["count"] == mine[0]
        counts[code] = mine[0]
    for code in codes:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", f"bench_seg_{code}")))
    conn.close()
    print(f"  SegmentationOperator segments {counts}; load {started_load} -> {load()}")
    record(
        results,
        f"SegmentationOperator, {base['count']:,} rows",
        ours_s,
        "hand-written SQL, same segments",
        other_s,
        1.3,
        "lower",
    )

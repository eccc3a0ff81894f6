"""SaveAudienceOperator on a list audience against a hand-written DELETE + INSERT with the same bookkeeping.

Two comparisons at ``scale`` members: ``update="replace"`` (an audience of keys 1..N replaced by
a population of keys N/10+1..N+N/10: 90 % overlap, N/10 removed, N/10 added) and
``update="complete"`` (the same population added: N/10 added). The hand-written side does the
same work in one transaction: the DELETE of members not in the population (replace), the INSERT
of the new ones, the audiences row update and the size history row. Before every call of either
side the audience is reset, untimed, to the same start state (members 1..N, no history, table
rewritten with VACUUM FULL); both sides must end with the same members (md5 of the sorted keys) and the same
counts. Run alone with ``python -m benchmarks.save_audience`` (same BENCH_SCALE and database as
``make bench``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.run import REPEAT, context, database, interleaved, load, record

AUDIENCE = "bench_save_audience"
POPULATION = "campaign_staging.bench_save_audience_population"


def _prepare(conn: psycopg.Connection, scale: int) -> int:
    """The population (keys N/10+1..N+N/10, with an email column) and the audience; return its id."""
    conn.execute(f"DROP TABLE IF EXISTS {POPULATION}")
    conn.execute(
        f"CREATE UNLOGGED TABLE {POPULATION} AS SELECT g::bigint AS id, 'p' || g || '@example.org' AS email"
        " FROM generate_series(%s::bigint, %s::bigint) g",
        (scale // 10 + 1, scale + scale // 10),
    )
    conn.execute(f"ANALYZE {POPULATION}")
    row = conn.execute(
        "INSERT INTO campaign.audiences (name, type, resource, key_column) VALUES (%s, 'list', 'profiles', 'id')"
        " ON CONFLICT (name) DO UPDATE SET type = 'list', file_uri = NULL, file_format = NULL RETURNING id",
        (AUDIENCE,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _reset(conn: psycopg.Connection, audience_id: int, scale: int) -> None:
    """Members 1..N (inserted in key order), no size history; the members table rewritten."""
    conn.execute("DELETE FROM campaign.audience_members WHERE audience_id = %s", (audience_id,))
    conn.execute(
        "INSERT INTO campaign.audience_members (audience_id, member_key)"
        ' SELECT %s, g::text FROM generate_series(1, %s) g ORDER BY g::text COLLATE "C"',
        (audience_id, scale),
    )
    conn.execute("DELETE FROM campaign.audience_sizes WHERE audience_id = %s", (audience_id,))
    conn.execute(
        "UPDATE campaign.audiences SET row_count = %s, columns = NULL WHERE id = %s", (scale, audience_id)
    )
    # rewritten, not only vacuumed: a plain VACUUM leaves the heap's free space and the index's
    # half-empty pages of earlier rounds, so each round would start from a different layout
    conn.execute("VACUUM FULL ANALYZE campaign.audience_members")
    conn.execute("VACUUM ANALYZE campaign.audience_sizes")
    conn.execute("CHECKPOINT")


def _end_state(conn: psycopg.Connection, audience_id: int) -> tuple[Any, ...]:
    """The members (how many, md5 of the sorted keys), the audience's row_count and its size history."""
    row = conn.execute(
        "SELECT count(*), md5(coalesce(string_agg(member_key, ',' ORDER BY member_key COLLATE \"C\"), ''))"
        " FROM campaign.audience_members WHERE audience_id = %s",
        (audience_id,),
    ).fetchone()
    assert row is not None
    count = conn.execute("SELECT row_count FROM campaign.audiences WHERE id = %s", (audience_id,)).fetchone()
    history = conn.execute(
        "SELECT size, added, removed FROM campaign.audience_sizes WHERE audience_id = %s", (audience_id,)
    ).fetchall()
    return int(row[0]), str(row[1]), count[0] if count else None, tuple(history)


def _hand_written(conn: psycopg.Connection, audience_id: int, update: str, run: str) -> dict[str, int]:
    """What a DAG author writes by hand: one transaction, the members, the row count, the history.

    The INSERT inserts in key order, as the operator does: without it the DISTINCT hashes the new
    keys and they go into the primary key's index in random order, about a quarter slower.
    """
    # the id as a literal, as the operator sends it: both sides run the same statements
    names = {"a": sql.Literal(audience_id), "pop": sql.SQL(POPULATION)}
    with conn.transaction():
        removed = 0
        if update == "replace":
            removed = conn.execute(
                sql.SQL(
                    "DELETE FROM campaign.audience_members m WHERE m.audience_id = {a} AND NOT EXISTS"
                    " (SELECT 1 FROM {pop} p WHERE p.id::text = m.member_key)"
                ).format(**names)
            ).rowcount
        added = conn.execute(
            sql.SQL(
                "INSERT INTO campaign.audience_members (audience_id, member_key)"
                " SELECT DISTINCT {a}, p.id::text FROM {pop} p WHERE p.id IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM campaign.audience_members m WHERE m.audience_id = {a} AND m.member_key = p.id::text)"
                " ORDER BY 2"
            ).format(**names)
        ).rowcount
        row = conn.execute(
            "UPDATE campaign.audiences SET row_count = row_count + %s - %s, updated_at = now() WHERE id = %s"
            " RETURNING row_count",
            (added, removed, audience_id),
        ).fetchone()
        assert row is not None
        size = int(row[0])
        conn.execute(
            "INSERT INTO campaign.audience_sizes (audience_id, dag_id, run_id, task_id, map_index, size, added, removed)"
            " VALUES (%s, 'bench', %s, 'hand', -1, %s, %s, %s)",
            (audience_id, run, size, added, removed),
        )
    return {"size": size, "added": added, "removed": removed}


def _compare(
    conn: psycopg.Connection, work: psycopg.Connection, audience_id: int, update: str, scale: int
) -> tuple[float, float, dict[str, int]]:
    from airflow_campaign.operators.save_audience import SaveAudienceOperator
    from airflow_campaign.population import Population

    # a table the benchmark makes itself, not a registered staging table: declared trusted, in code
    population = Population.from_table(POPULATION, key="id", resource="profiles", count=scale, trusted=True)
    task_id = f"save_{update}"
    op = SaveAudienceOperator(task_id=task_id, population=population, audience=AUDIENCE, update=update)

    def ours(i: int) -> dict[str, int]:
        out = op.execute(context(task_id, 1000 + i))
        return {k: out[k] for k in ("size", "added", "removed")}

    def hand_written(i: int) -> dict[str, int]:
        return _hand_written(work, audience_id, update, f"hand_{i}")

    ends: dict[str, list[Any]] = {"ours": [], "other": []}

    def check(side: str, i: int, counts: dict[str, int]) -> None:
        """Untimed, after every call: what it returned and left, then the reset for the next call."""
        state = _end_state(conn, audience_id)
        returned = (counts["size"], counts["added"], counts["removed"])
        assert state[0] == state[2] == counts["size"] and state[3] == (returned,), (side, state, counts)
        ends[side].append((returned, state))
        _reset(conn, audience_id, scale)

    _reset(conn, audience_id, scale)
    ours_s, other_s = interleaved(ours, hand_written, REPEAT, check=check)
    assert len(ends["ours"]) == len(ends["other"]) == REPEAT + 1
    assert len(set(ends["ours"]) | set(ends["other"])) == 1, f"the two sides differ: {ends}"
    size, added, removed = ends["ours"][0][0]
    return ours_s, other_s, {"size": size, "added": added, "removed": removed}


def bench_save_audience(url: str, results: list[dict[str, Any]], scale: int) -> None:
    conn = psycopg.connect(url, autocommit=True)
    work = psycopg.connect(url)
    audience_id = _prepare(conn, scale)
    try:
        for update in ("replace", "complete"):
            ours_s, other_s, counts = _compare(conn, work, audience_id, update, scale)
            print(f"  SaveAudienceOperator update={update!r}: {json.dumps(counts)}; load {load()}")
            record(
                results,
                f"SaveAudienceOperator list {update}, {scale:,} members",
                ours_s,
                "DELETE + INSERT + bookkeeping" if update == "replace" else "INSERT + bookkeeping",
                other_s,
                1.3,
                "lower",
            )
    finally:
        # the audience, its members and history (ON DELETE CASCADE), and the population
        conn.execute("DELETE FROM campaign.audiences WHERE id = %s", (audience_id,))
        conn.execute(f"DROP TABLE IF EXISTS {POPULATION}")
        work.close()
        conn.close()


def main() -> int:
    import logging

    logging.getLogger("airflow.task.operators").setLevel(logging.ERROR)
    scale = int(os.environ.get("BENCH_SCALE", "1000000"))
    results: list[dict[str, Any]] = []
    bench_save_audience(database(scale), results, scale)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

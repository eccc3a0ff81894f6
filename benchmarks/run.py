"""`make bench`: side-by-side timings of airflow-campaign against hand-written equivalents.

Runs every comparison in one process, prints ratios, and writes benchmarks/results.json
(and benchmarks/machine.json, the machine and the run; at the default scale the README's table
is then rendered from both by ``python -m benchmarks.table``):
a list of {"name", "ours_s", "other", "other_s", "ratio", "target", "better", "load_start",
"load_end"} objects (ratio = ours_s / other_s; `better` says whether a lower or a higher ratio
is better; the 1-minute load average when the comparison started and ended, so a run on a busy
machine shows). A name stays the same as long as the comparison does; each module's docstring
lists its names.

Every comparison gives both sides the same work and the same resources, checks that their
outputs agree (AssertionError otherwise) before it prints a ratio, runs the sides alternately
several times (BENCH_REPEAT, default 5; some modules have their own) and keeps the median.

BENCH_SCALE (default 1,000,000) sets the number of profiles. The database is the embedded
server in .campaign/bench-pg, or $CAMPAIGN_BENCH_DATABASE_URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="campaign-bench-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

RESULTS = Path(__file__).parent / "results.json"
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def context(task_id: str, run: int) -> dict[str, Any]:
    ti = _TI(dag_id="bench", task_id=task_id, run_id=f"bench_{run}", map_index=-1, try_number=1, xcoms={})
    return {"ti": ti, "run_id": ti.run_id}


def load() -> str:
    """The 1-minute load average, to show next to a figure (a busy machine shows)."""
    return f"{os.getloadavg()[0]:.2f}"


_started: list[str] = []  # the load when the latest timing helper started, until a record() takes it


def best_of(fn: Callable[[int], Any], repeat: int = REPEAT) -> float:
    """Median wall time of ``repeat`` runs (after one warm-up run)."""
    _started[:] = [load()]
    fn(-1)
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved(
    ours: Callable[[int], Any],
    other: Callable[[int], Any],
    repeat: int = REPEAT,
    *,
    warmup: bool = True,
    check: Callable[[str, int, Any], None] | None = None,
    clock: Callable[[Any, float], float] | None = None,
) -> tuple[float, float]:
    """Median times of two functions run alternately, so both see the same machine state.

    Each round runs both sides, in the order ours, other on even rounds and other, ours on odd
    ones (a machine getting busier or quieter does not favour one side). ``warmup`` runs each
    side once first, untimed. ``check(side, i, returned)`` is called after every call (the
    warm-up too), outside the clock, with ``side`` ``"ours"`` or ``"other"`` and what the
    function returned: it raises AssertionError when the outputs differ. ``clock(returned,
    wall)`` gives the time to count when a function measures itself (e.g. a child process that
    reports its own time); by default, the wall time of the call. The load at the start is
    noted for the next ``record``.
    """
    _started[:] = [load()]
    sides = (("ours", ours), ("other", other))
    if warmup:
        for name, fn in sides:
            returned = fn(-1)
            if check is not None:
                check(name, -1, returned)
    times: dict[str, list[float]] = {"ours": [], "other": []}
    for i in range(repeat):
        for name, fn in sides if i % 2 == 0 else sides[::-1]:
            started = time.perf_counter()
            returned = fn(i)
            wall = time.perf_counter() - started
            times[name].append(clock(returned, wall) if clock is not None else wall)
            if check is not None:
                check(name, i, returned)
    return statistics.median(times["ours"]), statistics.median(times["other"])


def record(
    results: list[dict[str, Any]],
    name: str,
    ours_s: float,
    other: str,
    other_s: float,
    target: float,
    better: str,
    *,
    load_start: str | None = None,
    load_end: str | None = None,
) -> None:
    """Print one comparison and add it to ``results``.

    ``load_start`` defaults to the load noted when the latest ``interleaved``/``best_of`` call
    began (taken by this record), ``load_end`` to the load now: call right after measuring.
    """
    if load_start is None and _started:
        load_start = _started.pop()
    _started.clear()
    load_end = load_end or load()
    ratio = ours_s / other_s
    ok = ratio <= target if better == "lower" else ratio >= target
    results.append(
        {
            "name": name,
            "ours_s": round(ours_s, 4),
            "other": other,
            "other_s": round(other_s, 4),
            "ratio": round(ratio, 3),
            "target": target,
            "better": better,
            "load_start": float(load_start) if load_start else None,
            "load_end": float(load_end),
        }
    )
    # memory comparisons hold megabytes in the *_s fields, rates (a name ending "/s") a rate
    # ... and a page's time against a ceiling (a name ending " ms") seconds, shown in milliseconds
    unit = " MB" if "MB" in name else "/s" if name.endswith("/s") else "ms" if name.endswith(" ms") else "s"
    scale = 1000.0 if unit == "ms" else 1.0
    print(
        f"{name:<44} ours {ours_s * scale:8.3f}{unit}  {other:<34} {other_s * scale:8.3f}{unit}  ratio {ratio:6.3f} "
        f"(target {'<=' if better == 'lower' else '>='} {target}) {'ok' if ok else 'MISSED'}"
        f"  load {load_start or '?'} -> {load_end}"
    )


def database(scale: int) -> str:
    url = os.environ.get("CAMPAIGN_BENCH_DATABASE_URL")
    if not url:
        from airflow_campaign import embedded

        url = embedded.start(Path(".campaign") / "bench-pg").url
    from airflow_campaign.embedded import connection_fields
    from airflow_campaign.schema import migrate
    from airflow_campaign.seed import seed

    os.environ["AIRFLOW_CONN_CAMPAIGN_DEFAULT"] = json.dumps(connection_fields(url))
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.upgrade(conn)
        # seeded again when the scale or the seed's code changed (its hash is kept as a comment)
        import airflow_campaign.seed as seed_module

        wanted = f"seed {scale} {hashlib.sha256(Path(seed_module.__file__).read_bytes()).hexdigest()[:16]}"
        have = conn.execute("SELECT obj_description('campaign.profiles'::regclass, 'pg_class')").fetchone()[0]
        if have != wanted:
            started = time.perf_counter()
            seed(conn, scale, force=True)  # the benchmarks' own database
            conn.execute(sql.SQL("COMMENT ON TABLE campaign.profiles IS {}").format(sql.Literal(wanted)))
            print(f"seeded {scale} profiles in {time.perf_counter() - started:.1f}s")
    return url


def bench_query(url: str, results: list[dict[str, Any]], scale: int) -> None:
    """QueryOperator against a bare ``CREATE UNLOGGED TABLE AS SELECT`` of the same rows.

    Each side does what one task does: open a connection, replace its table in one transaction
    (DROP, CREATE ... AS SELECT), commit, close. The operator also checks its options and SQL,
    the schema version and the resource, and records its table; that is what the ratio shows.
    Interleaved, at least 7 runs each (the CTAS and its commit vary a lot on a busy machine).
    """
    from airflow_campaign.operators.targeting import QueryOperator

    where = "NOT email_denylisted"
    columns = ["email", "first_name", "country", "loyalty_points"]
    op = QueryOperator(task_id="query", where=where, columns=columns)
    outs: list[dict[str, Any]] = []

    def ours(i: int) -> None:
        outs.append(op.execute(context("query", 0)))

    def hand_written(i: int) -> None:
        with psycopg.connect(url) as conn, conn.transaction():
            conn.execute("DROP TABLE IF EXISTS public.bench_ctas")
            conn.execute(
                "CREATE UNLOGGED TABLE public.bench_ctas AS SELECT id, email, first_name, country, loyalty_points"
                f" FROM campaign.profiles WHERE {where}"
            )

    ours_s, other_s = interleaved(ours, hand_written, repeat=max(REPEAT, 7))
    from psycopg import sql

    same = "SELECT count(*), md5(string_agg(id::text, ',' ORDER BY id)) FROM {}"
    with psycopg.connect(url, autocommit=True) as conn:
        theirs = conn.execute(sql.SQL(same).format(sql.Identifier("public", "bench_ctas"))).fetchone()
        table = sql.Identifier(*outs[-1]["table"].split(".", 1))
        mine = conn.execute(sql.SQL(same).format(table)).fetchone()
        assert theirs and mine == theirs and mine[0] == outs[-1]["count"], (
            f"QueryOperator {mine} != CTAS {theirs}"
        )
        conn.execute("DROP TABLE IF EXISTS public.bench_ctas")
    size = max(len(json.dumps(out)) for out in outs)
    print(f"  QueryOperator selected {theirs[0]} rows; XCom value {size} bytes")
    record(
        results,
        f"QueryOperator, {scale:,} profiles",
        ours_s,
        "CREATE UNLOGGED TABLE AS SELECT",
        other_s,
        1.2,
        "lower",
    )


def main() -> int:
    import logging

    # operators log each run and warn that they run outside a Task Runner: keep the ratios readable
    logging.getLogger("airflow.task.operators").setLevel(logging.ERROR)
    scale = int(os.environ.get("BENCH_SCALE", "1000000"))
    started = time.time()
    url = database(scale)
    results: list[dict[str, Any]] = []
    bench_query(url, results, scale)
    from benchmarks.segmentation import bench_segmentation

    bench_segmentation(url, results, scale)
    from benchmarks.update_data import bench_insert_rows, bench_upsert

    bench_upsert(url, results, scale)
    bench_insert_rows(url, results, min(scale, 100_000))
    from benchmarks.subscription_services import bench_subscriptions

    bench_subscriptions(url, results, scale)
    from benchmarks.save_audience import bench_save_audience

    bench_save_audience(url, results, scale)
    from benchmarks.extract_file import bench_extract

    bench_extract(url, results, scale)
    from benchmarks.channels import bench_smtp

    bench_smtp(results, 20_000, 4)
    from benchmarks.mime import bench_mime

    bench_mime(results, 5000)
    from benchmarks.deliveries import bench_engine

    bench_engine(url, results, scale)
    from benchmarks.shards import bench_prepare, bench_shards

    bench_prepare(url, results, scale)
    bench_shards(url, results, scale)
    from benchmarks.sms import bench_sms

    bench_sms(url, results, scale)
    from benchmarks.push import bench_push

    bench_push(url, results, scale)
    from benchmarks.sns import bench_sns

    bench_sns(results)
    from benchmarks.ui import bench_ui

    bench_ui(url, results)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")
    from benchmarks import table

    run = table.machine(url, scale, started, time.time())
    table.MACHINE.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {table.MACHINE}")
    if scale == 1_000_000:  # the README's table shows the full-size run only
        table.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())

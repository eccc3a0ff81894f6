"""`make bench`: side-by-side timings of airflow-campaign against hand-written equivalents.

Runs every comparison in one process, prints ratios, and writes benchmarks/results.json:
a list of {"name", "ours_s", "other", "other_s", "ratio", "target", "better"} objects
(ratio = ours_s / other_s; `better` says whether a lower or a higher ratio is better).

BENCH_SCALE (default 1,000,000) sets the number of profiles. The database is the embedded
server in .campaign/bench-pg, or $CAMPAIGN_BENCH_DATABASE_URL.
"""

from __future__ import annotations

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


def best_of(fn: Callable[[int], Any], repeat: int = REPEAT) -> float:
    """Median wall time of ``repeat`` runs (after one warm-up run)."""
    fn(-1)
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved(
    ours: Callable[[int], Any], other: Callable[[int], Any], repeat: int = REPEAT
) -> tuple[float, float]:
    """Median times of two functions run alternately, so both see the same machine state."""
    ours(-1)
    other(-1)
    a, b = [], []
    for i in range(repeat):
        for fn, out in ((ours, a), (other, b)):
            started = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - started)
    return statistics.median(a), statistics.median(b)


def record(
    results: list[dict[str, Any]],
    name: str,
    ours_s: float,
    other: str,
    other_s: float,
    target: float,
    better: str,
) -> None:
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
        }
    )
    unit = " MB" if "MB" in name else "s"  # memory comparisons hold megabytes in the *_s fields
    print(
        f"{name:<44} ours {ours_s:8.3f}{unit}  {other:<34} {other_s:8.3f}{unit}  ratio {ratio:6.3f} "
        f"(target {'<=' if better == 'lower' else '>='} {target}) {'ok' if ok else 'MISSED'}"
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
        have = conn.execute("SELECT count(*) FROM campaign.profiles").fetchone()[0]
        if have != scale:
            started = time.perf_counter()
            seed(conn, scale, force=True)  # the benchmarks' own database
            print(f"seeded {scale} profiles in {time.perf_counter() - started:.1f}s")
    return url


def bench_query(url: str, results: list[dict[str, Any]], scale: int) -> None:
    from airflow_campaign.operators.targeting import QueryOperator

    where = "NOT email_denylisted"
    columns = ["email", "first_name", "country", "loyalty_points"]
    op = QueryOperator(task_id="query", where=where, columns=columns)
    sizes: list[int] = []

    def ours(i: int) -> None:
        out = op.execute(context("query", 0))
        sizes.append(len(json.dumps(out)))

    conn = psycopg.connect(url, autocommit=True)

    def hand_written(i: int) -> None:
        with conn.transaction():
            conn.execute("DROP TABLE IF EXISTS public.bench_ctas")
            conn.execute(
                "CREATE UNLOGGED TABLE public.bench_ctas AS SELECT id, email, first_name, country, loyalty_points"
                f" FROM campaign.profiles WHERE {where}"
            )

    ours_s, other_s = interleaved(ours, hand_written)
    rows = conn.execute("SELECT count(*) FROM public.bench_ctas").fetchone()[0]
    conn.execute("DROP TABLE IF EXISTS public.bench_ctas")
    conn.close()
    print(f"  QueryOperator selected {rows} rows; XCom value {max(sizes)} bytes")
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
    url = database(scale)
    results: list[dict[str, Any]] = []
    bench_query(url, results, scale)
    from benchmarks.update_data import bench_insert_rows, bench_upsert

    bench_upsert(url, results, scale)
    bench_insert_rows(url, results, min(scale, 100_000))
    from benchmarks.subscription_services import bench_subscriptions

    bench_subscriptions(url, results, scale)
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
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

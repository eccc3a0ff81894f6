"""SubscriptionServicesOperator against a hand-written INSERT … ON CONFLICT DO NOTHING plus events insert.

Every profile is subscribed to one service that half of them already have: ``scale`` subscribe
operations, ``scale / 2`` changes. Both sides start from the same state (reset, untimed,
before each timed call) and commit one transaction, alternately (ours first on even rounds).
After every call, outside the clock, the service's subscriptions (who, with which origin) and
its subscribe events (who) must be the same as after the first one (AssertionError otherwise). Run alone with
``python -m benchmarks.subscription_services`` (same BENCH_SCALE and database as ``make bench``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

from benchmarks.run import REPEAT, context, database, load, record

SERVICE = "bench_subscriptions"
POPULATION = "campaign_staging.bench_subscription_population"


def _prepare(conn: psycopg.Connection) -> int:
    """The bench service and a population of every profile; return the service id."""
    conn.execute(
        "INSERT INTO campaign.services (name, label) VALUES (%s, 'Benchmark service') ON CONFLICT (name) DO NOTHING",
        (SERVICE,),
    )
    _forget_runs(conn)
    conn.execute(f"DROP TABLE IF EXISTS {POPULATION}")
    conn.execute(f"CREATE UNLOGGED TABLE {POPULATION} AS SELECT id FROM campaign.profiles")
    conn.execute(f"ANALYZE {POPULATION}")
    return int(conn.execute("SELECT id FROM campaign.services WHERE name = %s", (SERVICE,)).fetchone()[0])


def _forget_runs(conn: psycopg.Connection) -> None:
    """Earlier bench runs reuse these run ids: forget them, or a timed call would be a re-run."""
    conn.execute("DELETE FROM campaign.subscription_runs WHERE dag_id = 'bench' AND task_id = 'subscribe'")


def _reset(conn: psycopg.Connection, service_id: int) -> None:
    """Half the profiles (even ids) subscribed, no events of the service; tables vacuumed."""
    conn.execute("DELETE FROM campaign.subscription_events WHERE service_id = %s", (service_id,))
    conn.execute("DELETE FROM campaign.subscriptions WHERE service_id = %s", (service_id,))
    conn.execute(
        "INSERT INTO campaign.subscriptions (service_id, profile_id, origin)"
        " SELECT %s, id, 'bench-initial' FROM campaign.profiles WHERE id %% 2 = 0",
        (service_id,),
    )
    conn.execute("VACUUM ANALYZE campaign.subscriptions")
    conn.execute("VACUUM ANALYZE campaign.subscription_events")
    conn.execute("CHECKPOINT")


def _state(conn: psycopg.Connection, service_id: int) -> tuple[Any, ...]:
    """The service's subscriptions and subscribe events: counts and digests of who (and which origin)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM campaign.subscriptions WHERE service_id = %(s)s),"
        " (SELECT md5(string_agg(profile_id || ' ' || origin, ',' ORDER BY profile_id))"
        " FROM campaign.subscriptions WHERE service_id = %(s)s),"
        " (SELECT count(*) FROM campaign.subscription_events WHERE service_id = %(s)s AND operation = 'subscribe'),"
        " (SELECT md5(string_agg(profile_id::text, ',' ORDER BY profile_id)) FROM campaign.subscription_events"
        " WHERE service_id = %(s)s AND operation = 'subscribe')",
        {"s": service_id},
    ).fetchone()
    assert row is not None
    return tuple(row)


def _timed(
    conn: psycopg.Connection, service_id: int, fns: list[Callable[[int], Any]], repeat: int
) -> list[float]:
    """Median time of each function, run alternately (the order reversed every other round), each
    from a freshly reset state; the state after every call must be the state after the first."""
    times: list[list[float]] = [[] for _ in fns]
    first: list[tuple[Any, ...]] = []
    for i in range(-1, repeat):  # -1: warm-up, not counted
        order = list(zip(fns, times, strict=True))
        for fn, out in order if i % 2 == 0 else order[::-1]:
            _reset(conn, service_id)
            started = time.perf_counter()
            fn(i)
            if i >= 0:
                out.append(time.perf_counter() - started)
            state = _state(conn, service_id)
            first = first or [state]
            if state != first[0]:
                raise AssertionError(
                    f"round {i}: subscriptions/events {state} after {fn.__name__}, {first[0]} after the first call"
                )
    return [statistics.median(t) for t in times]


def bench_subscriptions(url: str, results: list[dict[str, Any]], scale: int) -> None:
    from airflow_campaign.operators.subscription_services import SubscriptionServicesOperator
    from airflow_campaign.population import Population

    conn = psycopg.connect(url, autocommit=True)
    service_id = _prepare(conn)
    # a table the benchmark makes itself, not a registered staging table: declared trusted, in code
    population = Population.from_table(
        POPULATION,
        key="id",
        resource="profiles",
        count=conn.execute(f"SELECT count(*) FROM {POPULATION}").fetchone()[0],
        trusted=True,
    )
    op = SubscriptionServicesOperator(
        task_id="subscribe", population=population, service=SERVICE, operation="subscribe", origin="bench"
    )
    counts: list[dict[str, int]] = []

    def ours(i: int) -> None:
        counts.append(op.execute(context("subscribe", 1000 + i)))

    work = psycopg.connect(url)

    def hand_written(i: int) -> None:
        with work.transaction():
            work.execute(
                "WITH ins AS (INSERT INTO campaign.subscriptions (service_id, profile_id, subscribed_at, origin)"
                f" SELECT %(service)s, id, now(), 'bench' FROM {POPULATION}"
                " ON CONFLICT (service_id, profile_id) DO NOTHING"
                " RETURNING service_id, profile_id, subscribed_at, origin)"
                " INSERT INTO campaign.subscription_events"
                " (service_id, profile_id, operation, event_at, origin, dag_id, run_id, task_id, map_index)"
                " SELECT service_id, profile_id, 'subscribe', subscribed_at, origin, 'bench', %(run)s, 'hand', -1"
                " FROM ins",
                {"service": service_id, "run": f"hand_{i}"},
            )

    start = load()
    ours_s, other_s = _timed(conn, service_id, [ours, hand_written], REPEAT)
    end = load()
    print(f"  SubscriptionServicesOperator: {json.dumps(counts[-1])}")
    # a re-run of a task instance that succeeded: it writes nothing and reports what the first try did
    _reset(conn, service_id)
    first = op.execute(context("subscribe", 2000))
    started = time.perf_counter()
    again = op.execute(context("subscribe", 2000))
    print(
        f"  re-run of a successful try: {time.perf_counter() - started:.3f}s, same counts: {again == first}"
    )
    # the service, its subscriptions and events (ON DELETE CASCADE), the population and run records
    conn.execute("DELETE FROM campaign.services WHERE id = %s", (service_id,))
    conn.execute(f"DROP TABLE IF EXISTS {POPULATION}")
    _forget_runs(conn)
    work.close()
    conn.close()
    record(
        results,
        f"SubscriptionServicesOperator, {scale:,} subscribes",
        ours_s,
        "INSERT ON CONFLICT DO NOTHING + events",
        other_s,
        1.5,
        "lower",
        load_start=start,
        load_end=end,
    )


def main() -> int:
    import logging

    logging.getLogger("airflow.task.operators").setLevel(logging.ERROR)
    scale = int(os.environ.get("BENCH_SCALE", "1000000"))
    results: list[dict[str, Any]] = []
    bench_subscriptions(database(scale), results, scale)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
